"""Checkpoints: the reference's format (config.json with d_model, ssm_cfg, ... and pytorch_model.bin) and
Hugging Face transformers' MambaForCausalLM / Mamba2ForCausalLM (config.json with model_type "mamba" /
"mamba2"), detected from config.json; weights as safetensors or .bin, single or sharded with an index.

Weights are read with safetensors or ``torch.load(weights_only=True, mmap=True)``: no code from a file runs.
"""

from __future__ import annotations

import json
import os

import torch

from .config import MambaConfig

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve(path_or_hub_id: str) -> str:
    """A local directory as is; anything else is a hub id fetched with huggingface_hub."""
    if os.path.isdir(path_or_hub_id):
        return path_or_hub_id
    if os.path.exists(path_or_hub_id):
        raise ValueError(f"{path_or_hub_id} is a file: pass the checkpoint directory (config.json + weights)")
    if path_or_hub_id.startswith(("/", ".", "~")) or path_or_hub_id.count("/") != 1:
        raise FileNotFoundError(f"{path_or_hub_id} is not a directory, nor a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download

    # safetensors first; the .bin files only for checkpoints that have nothing else (never both)
    patterns = ["*.json", "*.txt", "*.model"]
    directory = snapshot_download(path_or_hub_id, allow_patterns=patterns + ["*.safetensors"])
    if not any(os.path.exists(os.path.join(directory, f)) for f in WEIGHT_FILES[:2]):
        directory = snapshot_download(path_or_hub_id, allow_patterns=patterns + ["*.bin"])
    return directory


def _load_file(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as e:  # files in torch's legacy (pre-zip) format cannot be memory-mapped
        if "mmap" not in str(e):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state_dict(directory: str) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            continue
        if not name.endswith(".index.json"):
            return _load_file(path)
        with open(path) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.exists(os.path.join(directory, s))]
        if missing:
            raise FileNotFoundError(f"{path} names shards that are not in {directory}: {missing}")
        state_dict = {}
        for shard in shards:
            state_dict.update(_load_file(os.path.join(directory, shard)))
        return state_dict
    raise FileNotFoundError(f"no weights in {directory}: expected one of {list(WEIGHT_FILES)}")


def read_config(directory: str) -> tuple[MambaConfig, str]:
    """The config and the checkpoint's format: "reference", "mamba" or "mamba2" (transformers)."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no config.json in {directory}: a checkpoint directory needs config.json and weights")
    with open(path) as f:
        raw = json.load(f)
    if "model_type" in raw:
        return MambaConfig.from_hf_dict(raw), raw["model_type"]
    if "d_model" not in raw:
        raise ValueError(f"{path} is neither the reference's format (d_model, n_layer, ...) nor a transformers "
                         "mamba/mamba2 config (model_type)")
    return MambaConfig.from_dict(raw), "reference"


def to_reference_names(state_dict: dict, fmt: str) -> dict:
    """transformers' names differ from the reference's only in the embedding ('embeddings')."""
    if fmt == "reference":
        return dict(state_dict)
    return {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in state_dict.items()}


def load_pretrained(cls, path_or_hub_id: str, device=None, dtype=None):
    directory = resolve(path_or_hub_id)
    config, fmt = read_config(directory)
    state_dict = to_reference_names(read_state_dict(directory), fmt)
    if dtype is None:
        dtype = next(iter(state_dict.values())).dtype if state_dict else torch.float32
    with torch.device("meta"):
        model = cls(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if config.tie_embeddings:
        expected.pop("lm_head.weight")
        state_dict.pop("lm_head.weight", None)  # present in the reference's .bin files; same tensor
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    bad_shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {tuple(expected[k])}"
                  for k in sorted(set(expected) & set(state_dict)) if state_dict[k].shape != expected[k]]
    if missing or unexpected or bad_shapes:
        raise ValueError(f"checkpoint {directory} does not match its config ({fmt} format):\n"
                         f"  missing: {missing}\n  unexpected: {unexpected}\n  shape mismatches: {bad_shapes}")
    state_dict = {k: v.to(device=device or "cpu", dtype=dtype if v.is_floating_point() else v.dtype)
                  for k, v in state_dict.items()}
    model.load_state_dict(state_dict, strict=False, assign=True)
    if config.tie_embeddings:
        model.lm_head.weight = model.backbone.embedding.weight
    return model.eval()


def save_pretrained(model, directory: str) -> None:
    """config.json in the reference's format and model.safetensors with the reference's names."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(model.config.to_dict(), f, indent=2)
    state_dict = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_embeddings:
        state_dict.pop("lm_head.weight")  # safetensors refuses shared storage; restored by tying on load
    save_file(state_dict, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
