"""MambaConfig: the reference's (state-spaces/mamba) config.json fields, validated, plus the
translation from Hugging Face transformers' ``mamba`` / ``mamba2`` configs.

A config.json written by ``save_pretrained`` is the reference's format (``norm_epsilon``, our one extra
field, is written only when it differs from the reference's fixed 1e-5).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

# Every key a mixer reads from ssm_cfg, with the reference's defaults per layer type.
MAMBA1_DEFAULTS = dict(
    d_state=16, d_conv=4, expand=2, dt_rank="auto", dt_min=0.001, dt_max=0.1, dt_init="random",
    dt_scale=1.0, dt_init_floor=1e-4, conv_bias=True, bias=False, use_fast_path=True,
)
MAMBA2_DEFAULTS = dict(
    d_state=128, d_conv=4, conv_init=None, expand=2, headdim=64, d_ssm=None, ngroups=1,
    A_init_range=(1, 16), D_has_hdim=False, rmsnorm=True, norm_before_gate=False, dt_min=0.001,
    dt_max=0.1, dt_init_floor=1e-4, dt_limit=(0.0, float("inf")), bias=False, conv_bias=True,
    chunk_size=256, use_mem_eff_path=True,
)
ATTN_DEFAULTS = dict(
    num_heads=None, num_heads_kv=None, head_dim=None, mlp_dim=0, qkv_proj_bias=True,
    out_proj_bias=True, softmax_scale=None, causal=True, d_conv=0, rotary_emb_dim=0,
    rotary_emb_base=10000.0, rotary_emb_interleaved=False,
)


def _float(v) -> float:
    """transformers >= 5 writes infinity into config.json as {"__float__": "Infinity"}."""
    return float(v["__float__"]) if isinstance(v, dict) and "__float__" in v else float(v)


@dataclass
class MambaConfig:
    d_model: int = 2560
    d_intermediate: int = 0
    n_layer: int = 64
    vocab_size: int = 50277
    ssm_cfg: dict = field(default_factory=dict)
    attn_layer_idx: list = field(default_factory=list)
    attn_cfg: dict = field(default_factory=dict)
    rms_norm: bool = True
    residual_in_fp32: bool = True
    fused_add_norm: bool = True
    pad_vocab_size_multiple: int = 8
    tie_embeddings: bool = True
    norm_epsilon: float = 1e-5  # not in the reference's config.json; its MixerModel default

    def __post_init__(self):
        self.ssm_cfg = dict(self.ssm_cfg)
        self.attn_cfg = dict(self.attn_cfg)
        self.attn_layer_idx = list(self.attn_layer_idx)
        if "dt_limit" in self.ssm_cfg:  # JSON turns the tuple into a list
            self.ssm_cfg["dt_limit"] = tuple(_float(v) for v in self.ssm_cfg["dt_limit"])
        self.validate()

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def layer(self) -> str:
        return self.ssm_cfg.get("layer", "Mamba1")

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_size_multiple
        return (self.vocab_size + m - 1) // m * m

    def ssm(self) -> dict:
        """ssm_cfg with the reference's defaults filled in (without "layer")."""
        defaults = MAMBA2_DEFAULTS if self.layer == "Mamba2" else MAMBA1_DEFAULTS
        cfg = {**defaults, **{k: v for k, v in self.ssm_cfg.items() if k != "layer"}}
        if self.layer == "Mamba1" and cfg["dt_rank"] == "auto":
            cfg["dt_rank"] = math.ceil(self.d_model / 16)
        return cfg

    def attn(self) -> dict:
        cfg = {**ATTN_DEFAULTS, **self.attn_cfg}
        cfg["num_heads_kv"] = cfg["num_heads_kv"] or cfg["num_heads"]
        cfg["head_dim"] = cfg["head_dim"] or (self.d_model // cfg["num_heads"] if cfg["num_heads"] else None)
        return cfg

    # ---- validation ----------------------------------------------------------------------
    def validate(self) -> None:
        for name in ("d_model", "n_layer", "vocab_size", "pad_vocab_size_multiple"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"MambaConfig.{name} must be a positive int, got {v!r}")
        if not isinstance(self.d_intermediate, int) or self.d_intermediate < 0:
            raise ValueError(f"MambaConfig.d_intermediate must be an int >= 0, got {self.d_intermediate!r}")
        if self.layer not in ("Mamba1", "Mamba2"):
            raise ValueError(f"MambaConfig.ssm_cfg['layer'] must be 'Mamba1' or 'Mamba2', got {self.layer!r}")
        defaults = MAMBA2_DEFAULTS if self.layer == "Mamba2" else MAMBA1_DEFAULTS
        unknown = sorted(set(self.ssm_cfg) - set(defaults) - {"layer"})
        if unknown:
            raise ValueError(f"MambaConfig.ssm_cfg has keys unknown to a {self.layer} layer: {unknown}")
        ssm = self.ssm()
        if ssm["d_conv"] < 2:
            raise ValueError(f"MambaConfig.ssm_cfg['d_conv'] must be >= 2, got {ssm['d_conv']}")
        if self.layer == "Mamba2":
            d_ssm = ssm["d_ssm"] or ssm["expand"] * self.d_model
            if d_ssm % ssm["headdim"]:
                raise ValueError(f"Mamba2: d_ssm (expand * d_model = {d_ssm}) must be a multiple of headdim {ssm['headdim']}")
            nheads = d_ssm // ssm["headdim"]
            if nheads % ssm["ngroups"]:
                raise ValueError(f"Mamba2: nheads {nheads} must be a multiple of ngroups {ssm['ngroups']}")
            if ssm["d_ssm"] is not None and ssm["d_ssm"] > ssm["expand"] * self.d_model:
                raise ValueError(f"Mamba2: d_ssm {ssm['d_ssm']} must be <= expand * d_model")
        bad_idx = [i for i in self.attn_layer_idx if not 0 <= i < self.n_layer]
        if bad_idx:
            raise ValueError(f"MambaConfig.attn_layer_idx must lie in [0, n_layer={self.n_layer}), got {bad_idx}")
        if self.attn_layer_idx:
            unknown = sorted(set(self.attn_cfg) - set(ATTN_DEFAULTS))
            if unknown:
                raise ValueError(f"MambaConfig.attn_cfg has unknown keys: {unknown}")
            a = self.attn()
            if not a["num_heads"]:
                raise ValueError("MambaConfig.attn_cfg['num_heads'] is required when attn_layer_idx is set")
            if a["num_heads"] % a["num_heads_kv"]:
                raise ValueError(f"attn_cfg: num_heads {a['num_heads']} must be a multiple of num_heads_kv {a['num_heads_kv']}")
            if a["rotary_emb_dim"] % 2 or a["rotary_emb_dim"] > a["head_dim"]:
                raise ValueError(f"attn_cfg: rotary_emb_dim must be even and <= head_dim {a['head_dim']}, got {a['rotary_emb_dim']}")
            if a["d_conv"] or a["rotary_emb_interleaved"] or not a["causal"]:
                raise ValueError("attn_cfg: d_conv > 0, rotary_emb_interleaved and causal=False are not supported")

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict:
        """The reference's config.json fields (norm_epsilon only when it is not the reference's 1e-5)."""
        d = dataclasses.asdict(self)
        if d["norm_epsilon"] == 1e-5:
            del d["norm_epsilon"]
        if "dt_limit" in d["ssm_cfg"]:
            d["ssm_cfg"]["dt_limit"] = list(d["ssm_cfg"]["dt_limit"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "MambaConfig":
        if "model_type" in d:
            return cls.from_hf_dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"config has keys that MambaConfig does not know: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, path: str) -> "MambaConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_hf_dict(cls, d: dict) -> "MambaConfig":
        """Translates a transformers ``MambaConfig`` (model_type "mamba") or ``Mamba2Config`` ("mamba2")."""
        kind = d.get("model_type")
        if kind not in ("mamba", "mamba2"):
            raise ValueError(f"config.json model_type must be 'mamba' or 'mamba2', got {kind!r}")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"only hidden_act='silu' is supported, got {d['hidden_act']!r}")
        common = dict(
            d_model=d.get("hidden_size", 768 if kind == "mamba" else 4096),
            n_layer=d.get("num_hidden_layers", 32 if kind == "mamba" else 64),
            vocab_size=d.get("vocab_size", 50280 if kind == "mamba" else 32768),
            rms_norm=True, residual_in_fp32=d.get("residual_in_fp32", True), fused_add_norm=True,
            pad_vocab_size_multiple=1,  # transformers does not pad: keep its embedding shape
            tie_embeddings=d.get("tie_word_embeddings", kind == "mamba"),
            norm_epsilon=d.get("layer_norm_epsilon", 1e-5),
        )
        ssm = dict(d_conv=d.get("conv_kernel", 4), expand=d.get("expand", 2),
                   conv_bias=d.get("use_conv_bias", True), bias=d.get("use_bias", False))
        if kind == "mamba":
            ssm.update(layer="Mamba1", d_state=d.get("state_size", 16), dt_rank=d.get("time_step_rank", "auto"))
        else:
            ssm.update(layer="Mamba2", d_state=d.get("state_size", 128), headdim=d.get("head_dim", 64),
                       ngroups=d.get("n_groups", 8), chunk_size=d.get("chunk_size", 256),
                       dt_limit=tuple(_float(v) for v in d.get("time_step_limit", (0.0, float("inf")))),
                       rmsnorm=True, norm_before_gate=False)
            if "num_heads" in d and d["num_heads"] * ssm["headdim"] != ssm["expand"] * common["d_model"]:
                raise ValueError(f"mamba2 config: num_heads * head_dim = {d['num_heads'] * ssm['headdim']} "
                                 f"must equal expand * hidden_size = {ssm['expand'] * common['d_model']}")
        return cls(**common, ssm_cfg=ssm)
