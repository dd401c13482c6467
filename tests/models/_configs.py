"""Small model configs shared by the model tests."""

from mamba_compile.models import MambaConfig

VOCAB = 200


def mamba1(**kw) -> MambaConfig:
    return MambaConfig(**{**dict(d_model=64, n_layer=2, vocab_size=VOCAB, ssm_cfg=dict(layer="Mamba1", d_state=8)), **kw})


def mamba2(**kw) -> MambaConfig:
    ssm = dict(layer="Mamba2", d_state=16, headdim=16, ngroups=2, chunk_size=16)
    return MambaConfig(**{**dict(d_model=64, n_layer=2, vocab_size=VOCAB, ssm_cfg=ssm), **kw})


def hybrid(layer: str = "Mamba2") -> MambaConfig:
    """A Mamba layer, then a GQA attention layer with rotary embedding and an MLP, and gated-MLP blocks."""
    make = mamba2 if layer == "Mamba2" else mamba1
    return make(n_layer=2, attn_layer_idx=[1], d_intermediate=96,
                attn_cfg=dict(num_heads=4, num_heads_kv=2, rotary_emb_dim=8, mlp_dim=64))


def mamba2_options() -> MambaConfig:
    """The less common Mamba-2 options: dt_limit, per-channel D, d_ssm < d_inner (a gated MLP inside
    in_proj), norm before gate, in/out projection biases, LayerNorm blocks."""
    ssm = dict(layer="Mamba2", d_state=16, headdim=16, ngroups=2, chunk_size=16, dt_limit=(0.001, 0.05),
               D_has_hdim=True, d_ssm=64, norm_before_gate=True, bias=True)
    return mamba2(ssm_cfg=ssm, rms_norm=False)


def mamba_no_gate_norm() -> MambaConfig:
    """Mamba-2 without the gated norm (z goes into the scan), Mamba-1-style conv without bias."""
    return mamba2(ssm_cfg=dict(layer="Mamba2", d_state=16, headdim=16, chunk_size=16, rmsnorm=False, conv_bias=False))


CONFIGS = {"mamba1": mamba1, "mamba2": mamba2, "hybrid2": hybrid, "hybrid1": lambda: hybrid("Mamba1")}
OPTION_CONFIGS = {"mamba2_options": mamba2_options, "mamba2_no_gate_norm": mamba_no_gate_norm,
                  "mamba1_bias": lambda: mamba1(ssm_cfg=dict(layer="Mamba1", d_state=8, bias=True, conv_bias=False))}
