"""Checkpoint loading: transformers' Mamba / Mamba2 formats, the reference's format, our own round trip,
sharded checkpoints, and clear errors for broken ones."""

import json
import os

import pytest
import torch

from mamba_compile import MambaConfig, MambaLM

from ._configs import CONFIGS, VOCAB, mamba1, mamba2

transformers = pytest.importorskip("transformers")


def _hf_model(kind: str):
    torch.manual_seed(0)
    if kind == "mamba":
        cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=64, state_size=8, num_hidden_layers=2,
                                       expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True)
        model = transformers.MambaForCausalLM(cfg)
    else:
        cfg = transformers.Mamba2Config(vocab_size=VOCAB, hidden_size=64, state_size=16, num_hidden_layers=2,
                                        expand=2, num_heads=8, head_dim=16, n_groups=2, chunk_size=16,
                                        tie_word_embeddings=False)
        model = transformers.Mamba2ForCausalLM(cfg)
    with torch.no_grad():  # transformers initialises A_log, D, norms to constants: randomise everything
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_transformers_checkpoint_matches_transformers_forward(tmp_path, kind, safe):
    hf = _hf_model(kind)
    hf.save_pretrained(tmp_path, safe_serialization=safe)
    ours = MambaLM.from_pretrained(str(tmp_path))
    assert ours.config.layer == ("Mamba1" if kind == "mamba" else "Mamba2")
    ids = torch.randint(0, VOCAB, (2, 21), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = hf(ids).logits
        got = ours(ids).logits
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def _reference_names_checkpoint(model: MambaLM, directory, shards: int = 1):
    """The reference's format, as its save_pretrained writes it: config.json + pytorch_model.bin."""
    os.makedirs(directory, exist_ok=True)
    cfg = model.config.to_dict()
    assert "norm_epsilon" not in cfg  # not a reference field; written only when not 1e-5
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(cfg, f)
    state_dict = model.state_dict()
    if shards == 1:
        torch.save(state_dict, os.path.join(directory, "pytorch_model.bin"))
        return
    names = sorted(state_dict)
    weight_map = {}
    for i in range(shards):
        shard = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: state_dict[k] for k in names[i::shards]}
        torch.save(part, os.path.join(directory, shard))
        weight_map.update({k: shard for k in part})
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)


@pytest.mark.parametrize("name", ["mamba1", "mamba2", "hybrid2"])
def test_reference_format_loads_without_renaming(tmp_path, name):
    torch.manual_seed(0)
    model = MambaLM(CONFIGS[name]()).eval()
    keys = set(model.state_dict())
    assert "backbone.embedding.weight" in keys and "backbone.norm_f.weight" in keys and "lm_head.weight" in keys
    assert "backbone.layers.0.mixer.A_log" in keys and "backbone.layers.1.norm.weight" in keys
    _reference_names_checkpoint(model, tmp_path)
    loaded = MambaLM.from_pretrained(str(tmp_path))
    ids = torch.randint(0, VOCAB, (2, 9))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)
    assert loaded.lm_head.weight is loaded.backbone.embedding.weight  # tie_embeddings restored


def test_sharded_checkpoint_with_index(tmp_path):
    torch.manual_seed(0)
    model = MambaLM(mamba2(tie_embeddings=False)).eval()
    _reference_names_checkpoint(model, tmp_path, shards=3)
    assert len([f for f in os.listdir(tmp_path) if f.endswith(".bin")]) == 3
    loaded = MambaLM.from_pretrained(str(tmp_path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["keep", "bf16"])
def test_save_pretrained_round_trip(tmp_path, dtype):
    torch.manual_seed(0)
    model = MambaLM(mamba1(pad_vocab_size_multiple=16)).eval()
    assert model.lm_head.weight.shape[0] == 208  # 200 padded to a multiple of 16
    model.save_pretrained(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    with open(tmp_path / "config.json") as f:
        raw = json.load(f)
    assert raw["d_model"] == 64 and raw["ssm_cfg"]["layer"] == "Mamba1" and "model_type" not in raw
    loaded = MambaLM.from_pretrained(str(tmp_path), dtype=dtype)
    assert loaded.config == model.config
    want = dtype or torch.float32
    assert all(p.dtype == want for p in loaded.parameters())
    if dtype is None:
        for k, v in model.state_dict().items():  # bit for bit
            torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
        # The logits only to rounding: BLAS may take another path for weights at other addresses.
        ids = torch.randint(0, VOCAB, (1, 7))
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)


def test_missing_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        MambaLM.from_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        MambaLM.from_pretrained(str(tmp_path))
    MambaLM(mamba1()).save_pretrained(str(tmp_path))
    os.remove(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no weights"):
        MambaLM.from_pretrained(str(tmp_path))


def test_missing_shard_gives_clear_error(tmp_path):
    model = MambaLM(mamba1())
    _reference_names_checkpoint(model, tmp_path, shards=2)
    os.remove(tmp_path / "pytorch_model-00002-of-00002.bin")
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.bin"):
        MambaLM.from_pretrained(str(tmp_path))


def test_missing_unexpected_and_misshapen_keys_are_listed(tmp_path):
    model = MambaLM(mamba1())
    state_dict = model.state_dict()
    del state_dict["backbone.layers.1.mixer.D"]
    state_dict["backbone.layers.0.mixer.extra"] = torch.ones(3)
    state_dict["backbone.layers.0.mixer.A_log"] = torch.ones(5, 5)
    _reference_names_checkpoint(model, tmp_path)
    torch.save(state_dict, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError) as err:
        MambaLM.from_pretrained(str(tmp_path))
    msg = str(err.value)
    assert "backbone.layers.1.mixer.D" in msg and "backbone.layers.0.mixer.extra" in msg
    assert "backbone.layers.0.mixer.A_log: checkpoint (5, 5), model (128, 8)" in msg


def test_unrecognised_config_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 64}))
    with pytest.raises(ValueError, match="neither the reference's format"):
        MambaLM.from_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type"):
        MambaLM.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("bad, match", [
    (dict(d_model=0), "d_model"),
    (dict(ssm_cfg=dict(layer="Mamba3")), "layer"),
    (dict(ssm_cfg=dict(layer="Mamba1", d_stat=4)), "d_stat"),
    (dict(ssm_cfg=dict(layer="Mamba2", headdim=48)), "headdim"),
    (dict(attn_layer_idx=[5]), "attn_layer_idx"),
    (dict(attn_layer_idx=[0], attn_cfg=dict(num_heads=4, num_heads_kv=3)), "num_heads_kv"),
], ids=["d_model", "layer", "unknown_ssm_key", "headdim", "attn_idx", "gqa"])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        MambaConfig(**{**dict(d_model=64, n_layer=2, vocab_size=100), **bad})


def test_config_json_round_trip(tmp_path):
    cfg = mamba2(attn_layer_idx=[1], attn_cfg=dict(num_heads=4), ssm_cfg=dict(layer="Mamba2", dt_limit=(0.001, 1.0)))
    (tmp_path / "c.json").write_text(json.dumps(cfg.to_dict()))
    assert MambaConfig.from_json(str(tmp_path / "c.json")) == cfg
    with pytest.raises(ValueError, match="unknown_field"):
        MambaConfig.from_dict({**cfg.to_dict(), "unknown_field": 1})


def test_hub_id_resolves_through_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    torch.manual_seed(0)
    model = MambaLM(mamba1()).eval()
    model.save_pretrained(str(tmp_path))
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns):
        calls.append((repo_id, allow_patterns))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = MambaLM.from_pretrained("state-spaces/some-model")
    assert calls == [("state-spaces/some-model", ["*.json", "*.txt", "*.model", "*.safetensors"])]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    ids = torch.randint(0, VOCAB, (1, 5))
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-6)
