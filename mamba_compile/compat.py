"""The reference implementation's function names and call signatures, backed by mamba_compile ops.

Code written against ``mamba_ssm`` / ``causal_conv1d`` switches with one import::

    # from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    from mamba_compile.compat import selective_scan_fn

Float defaults (``eps``, ``dt_limit``) are written ``None`` here and mean the reference's values
(1e-6, (0, inf)): a float default in a traced function becomes a symbolic float under
``torch.compile(dynamic=True)`` and costs Dynamo a restart when it reaches a custom op.

Options the reference has but these ops do not (dropout inside the norm, a second
norm input, row scaling, ``out=`` buffers for the scan) raise ``NotImplementedError``
rather than being ignored.
"""

from __future__ import annotations

import torch

from . import ops


def _unsupported(name: str, **options) -> None:
    for key, value in options.items():
        if isinstance(value, torch.Tensor) or value not in (None, False, 0.0):
            raise NotImplementedError(f"{name}: option {key}={value!r} is not supported by mamba_compile")


def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
    """``mamba_ssm.ops.selective_scan_interface.selective_scan_fn``."""
    return ops.selective_scan(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias,
        delta_softplus=delta_softplus, return_last_state=return_last_state,
    )


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """``causal_conv1d.causal_conv1d_fn``; ``final_states_out`` is filled in place when given."""
    want_states = return_final_states or final_states_out is not None
    result = ops.causal_conv1d(
        x, weight, bias=bias, seq_idx=seq_idx, initial_states=initial_states,
        return_final_states=want_states, activation=activation,
    )
    if not want_states:
        return result
    out, final_states = result
    if final_states_out is not None:
        final_states_out.copy_(final_states)
        final_states = final_states_out
    return (out, final_states) if return_final_states else out


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """``causal_conv1d.causal_conv1d_update``: updates ``conv_state`` in place."""
    return ops.causal_conv1d_update(
        x, conv_state, weight, bias=bias, activation=activation,
        cache_seqlens=cache_seqlens, conv_state_indices=conv_state_indices,
    )


def selective_state_update(state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False,
                           state_batch_indices=None):
    """``mamba_ssm.ops.triton.selective_state_update.selective_state_update``: updates ``state`` in place."""
    return ops.selective_state_update(
        state, x, dt, A, B, C, D=D, z=z, dt_bias=dt_bias, dt_softplus=dt_softplus,
        state_batch_indices=state_batch_indices,
    )


def layer_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=None, dropout_p=0.0,
                  rowscale=None, prenorm=False, residual_in_fp32=False, is_rms_norm=False, return_dropout_mask=False):
    """``mamba_ssm.ops.triton.layer_norm.layer_norm_fn`` (single input, no dropout)."""
    _unsupported("layer_norm_fn", x1=x1, weight1=weight1, bias1=bias1, dropout_p=dropout_p, rowscale=rowscale,
                 return_dropout_mask=return_dropout_mask)
    norm = ops.rms_norm if is_rms_norm else ops.layer_norm
    return norm(x, weight, bias=bias, residual=residual, eps=eps, prenorm=prenorm, residual_in_fp32=residual_in_fp32)


def rms_norm_fn(x, weight, bias, residual=None, x1=None, weight1=None, bias1=None, eps=None, dropout_p=0.0,
                rowscale=None, prenorm=False, residual_in_fp32=False, return_dropout_mask=False):
    """``mamba_ssm.ops.triton.layer_norm.rms_norm_fn`` (single input, no dropout)."""
    return layer_norm_fn(x, weight, bias, residual=residual, x1=x1, weight1=weight1, bias1=bias1, eps=eps,
                         dropout_p=dropout_p, rowscale=rowscale, prenorm=prenorm,
                         residual_in_fp32=residual_in_fp32, is_rms_norm=True,
                         return_dropout_mask=return_dropout_mask)


def rmsnorm_fn(x, weight, bias=None, z=None, eps=None, group_size=None, norm_before_gate=True, is_rms_norm=True):
    """``mamba_ssm.ops.triton.layernorm_gated.rmsnorm_fn``: gated RMSNorm (no bias, RMS only)."""
    _unsupported("rmsnorm_fn", bias=bias)
    if not is_rms_norm:
        raise NotImplementedError("rmsnorm_fn: is_rms_norm=False (gated LayerNorm) is not supported by mamba_compile")
    return ops.rms_norm_gated(x, weight, z=z, eps=eps, group_size=group_size, norm_before_gate=norm_before_gate)


def mamba_chunk_scan_combined(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                              seq_idx=None, chunk_indices=None, chunk_offsets=None, cu_seqlens=None,
                              dt_softplus=False, dt_limit=None, return_final_states=False,
                              return_varlen_states=False):
    """``mamba_ssm.ops.triton.ssd_combined.mamba_chunk_scan_combined``.

    ``chunk_indices`` / ``chunk_offsets`` (vLLM's precomputed chunk maps) are derived
    internally here, so they are accepted only as None.
    """
    _unsupported("mamba_chunk_scan_combined", chunk_indices=chunk_indices, chunk_offsets=chunk_offsets)
    return ops.ssd_chunk_scan(
        x, dt, A, B, C, chunk_size, D=D, z=z, dt_bias=dt_bias, initial_states=initial_states, seq_idx=seq_idx,
        cu_seqlens=cu_seqlens, dt_softplus=dt_softplus, dt_limit=dt_limit,
        return_final_states=return_final_states, return_varlen_states=return_varlen_states,
    )


__all__ = [
    "causal_conv1d_fn",
    "causal_conv1d_update",
    "layer_norm_fn",
    "mamba_chunk_scan_combined",
    "rms_norm_fn",
    "rmsnorm_fn",
    "selective_scan_fn",
    "selective_state_update",
]
