"""Fused Mamba-1 decode step: two ops that replace in_proj, the conv update, dt_proj and the state update.

    xz = W_in h + b_in;  x = silu(conv(conv_state, xz[:d_inner]));  z = xz[d_inner:]        (mamba1_decode_in)
    out = W_in h + b_in;  out[s : s + c] = silu(conv(conv_state, out[s : s + c]))           (decode_in)
    dt = softplus(W_dt x_dbl[:r] + b_dt);  s <- exp(-dt exp(A_log)) s + dt B x;  y = (C s + D x) silu(z)   (mamba1_decode_ssm)

with B = x_dbl[r : r + n], C = x_dbl[r + n :] and x_dbl = x_proj(x) computed between the two by a plain F.linear.
Shapes (b batch rows, m d_model, d d_inner, w d_conv, n d_state, r dt_rank)::

    hidden:           (b, m)
    in_proj_weight:   (2 d, m)          in_proj_bias: (2 d,) or None
    conv_state:       (b, d, w - 1)     updated in place (a shift register: oldest input first)
    conv_weight:      (d, w)            conv_bias: (d,) or None
    x, z, y:          (b, d)            hidden's dtype (x, z) and x's dtype (y)
    x_dbl:            (b, r + 2 n)
    dt_proj_weight:   (d, r)            dt_proj_bias, D: (d,)
    A_log:            (d, n)
    ssm_state:        (b, d, n)         fp32 or 16-bit, updated in place

``decode_in`` is the general form that Mamba-2 uses too (s = conv_start, c = conv_dim, k rows of in_proj):
hidden (b, m), in_proj_weight (k, m), in_proj_bias (k,), conv_state (b, c, w - 1), conv_weight (c, w),
conv_bias (c,), out (b, k) in hidden's dtype. ``mamba1_decode_in`` is decode_in with s = 0, c = k / 2,
its (x, z) being views of out.

A layer's decode is then add_norm, mamba1_decode_in, x_proj, mamba1_decode_ssm, out_proj: five launches
instead of about nine (two GEMVs and the -exp(A_log) / .float() glue disappear into the kernels).
On CPU each op composes what ``Mamba1Mixer.step`` computed before (F.linear and the CPU code of
causal_conv1d_update / selective_state_update), so the two paths agree there bit for bit. On CUDA the
kernels in ``mamba1_decode_triton`` keep xz and dt in fp32 instead of rounding them to the activation
dtype, so with 16-bit activations they differ from the unfused ops by that rounding.
Parameters may have any float dtype (bf16 models, fp32 A_log / D); all math is fp32. No backward: decode only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op

from ._checks import check_same_device, check_tensor
from .causal_conv1d import _update_cpu as _conv_update_cpu
from .selective_state_update import _as_mamba2
from .selective_state_update import _update_cpu as _state_update_cpu

MAX_DSTATE = 256


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def decode_in(
    hidden: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
    *,
    conv_start: int = 0,
) -> torch.Tensor:
    """in_proj + causal conv update + silu on the rows [conv_start, conv_start + conv_dim) for one token:
    returns out (b, rows) (the other rows are the projection as it is); conv_state (b, conv_dim, d_conv - 1)
    is advanced in place."""
    _check_decode_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start)
    return torch.ops.mamba_compile.decode_in(
        hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start
    )


def mamba1_decode_in(
    hidden: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """in_proj + causal conv update + silu for one token: returns (x, z), each (b, d_inner) (views of one
    (b, 2 d_inner) tensor); conv_state (b, d_inner, d_conv - 1) is advanced in place."""
    _check_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias)
    out = torch.ops.mamba_compile.decode_in(
        hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, 0
    )
    return out.chunk(2, dim=-1)


def mamba1_decode_ssm(
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    x_dbl: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
) -> torch.Tensor:
    """dt_proj + softplus + selective state update + D skip + silu(z) gate for one token: returns y (b, d_inner);
    ssm_state (b, d_inner, d_state) is advanced in place."""
    _check_ssm(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z)
    return torch.ops.mamba_compile.mamba1_decode_ssm(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z)


# ----------------------------------------------------------------------------------------------
# Validation: one function per op, run by the public function and again inside the op body
# ----------------------------------------------------------------------------------------------
def _check_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias) -> None:
    """mamba1_decode_in's contract on top of decode_in's: in_proj's rows are [x; z] (2 * d_inner) and the
    conv covers x (its first d_inner rows)."""
    check_tensor("in_proj_weight", in_proj_weight, shape=(None, None), letters="(2 * d_inner, d_model)")
    check_tensor("conv_weight", conv_weight, shape=(None, None), letters="(d_inner, d_conv)")
    rows = in_proj_weight.shape[0]
    if rows % 2 != 0 or rows == 0:
        raise ValueError(f"in_proj_weight must have shape (2 * d_inner, d_model) with an even, nonzero first dim, "
                         f"got {tuple(in_proj_weight.shape)}")
    if conv_weight.shape[0] != rows // 2:
        raise ValueError(f"conv_weight must have shape (d_inner, d_conv) with d_inner = {rows // 2} (half of "
                         f"in_proj_weight's first dim), got {tuple(conv_weight.shape)}")
    _check_decode_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, 0)


def _check_decode_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start) -> None:
    check_tensor("hidden", hidden, shape=(None, None), letters="(batch, d_model)")
    batch, d_model = hidden.shape
    check_tensor("in_proj_weight", in_proj_weight, shape=(None, d_model), letters="(rows, d_model)")
    rows = in_proj_weight.shape[0]
    check_tensor("in_proj_bias", in_proj_bias, shape=(rows,), letters="(rows,)", optional=True)
    check_tensor("conv_weight", conv_weight, shape=(None, None), letters="(conv_dim, d_conv)")
    conv_dim, d_conv = conv_weight.shape
    if d_conv < 2 or conv_dim < 1:
        raise ValueError(f"conv_weight must have shape (conv_dim, d_conv) with conv_dim >= 1 and d_conv >= 2, "
                         f"got {tuple(conv_weight.shape)}")
    if not isinstance(conv_start, (int, torch.SymInt)):
        raise TypeError(f"conv_start must be an int, got {type(conv_start).__name__}")
    if conv_start < 0 or conv_start + conv_dim > rows:
        raise ValueError(f"conv_start = {conv_start} with conv_dim = {conv_dim} (conv_weight's first dim) must "
                         f"satisfy 0 <= conv_start and conv_start + conv_dim <= rows = {rows} (in_proj_weight's "
                         f"first dim)")
    check_tensor("conv_state", conv_state, shape=(batch, conv_dim, d_conv - 1),
                 letters="(batch, conv_dim, d_conv - 1)")
    check_tensor("conv_bias", conv_bias, shape=(conv_dim,), letters="(conv_dim,)", optional=True)
    check_same_device(hidden=hidden, in_proj_weight=in_proj_weight, in_proj_bias=in_proj_bias,
                      conv_state=conv_state, conv_weight=conv_weight, conv_bias=conv_bias)


def _check_ssm(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z) -> None:
    check_tensor("ssm_state", ssm_state, shape=(None, None, None), letters="(batch, d_inner, d_state)")
    batch, d_inner, d_state = ssm_state.shape
    if d_state > MAX_DSTATE:
        raise ValueError(f"ssm_state has d_state = {d_state}; at most {MAX_DSTATE} is supported")
    check_tensor("x", x, shape=(batch, d_inner), letters="(batch, d_inner)")
    check_tensor("z", z, shape=(batch, d_inner), letters="(batch, d_inner)")
    check_tensor("dt_proj_weight", dt_proj_weight, shape=(d_inner, None), letters="(d_inner, dt_rank)")
    dt_rank = dt_proj_weight.shape[1]
    if dt_rank < 1:
        raise ValueError(f"dt_proj_weight must have shape (d_inner, dt_rank) with dt_rank >= 1, "
                         f"got {tuple(dt_proj_weight.shape)}")
    check_tensor("x_dbl", x_dbl, shape=(batch, dt_rank + 2 * d_state), letters="(batch, dt_rank + 2 * d_state)")
    check_tensor("dt_proj_bias", dt_proj_bias, shape=(d_inner,), letters="(d_inner,)")
    check_tensor("A_log", A_log, shape=(d_inner, d_state), letters="(d_inner, d_state)")
    check_tensor("D", D, shape=(d_inner,), letters="(d_inner,)")
    check_same_device(ssm_state=ssm_state, x=x, x_dbl=x_dbl, dt_proj_weight=dt_proj_weight,
                      dt_proj_bias=dt_proj_bias, A_log=A_log, D=D, z=z)


# ----------------------------------------------------------------------------------------------
# CPU math: what Mamba1Mixer.step computes with the unfused ops (their CPU code, called directly)
# ----------------------------------------------------------------------------------------------
def _decode_in_cpu(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start):
    dtype = hidden.dtype
    bias = None if in_proj_bias is None else in_proj_bias.to(dtype)
    out = F.linear(hidden, in_proj_weight.to(dtype), bias)  # (b, rows)
    before, xc, after = out.split([conv_start, conv_weight.shape[0], out.shape[1] - conv_start - conv_weight.shape[0]],
                                  dim=-1)
    xc = _conv_update_cpu(xc.unsqueeze(-1), conv_state, conv_weight, conv_bias, True, None, None).squeeze(-1)
    return torch.cat([before, xc.to(dtype), after], dim=-1)


def _decode_ssm_cpu(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z):
    d_state, dt_rank = ssm_state.shape[2], dt_proj_weight.shape[1]
    dt, B, C = x_dbl.split([dt_rank, d_state, d_state], dim=-1)  # (b, dt_rank), (b, d_state), (b, d_state)
    dt = F.linear(dt, dt_proj_weight.to(dt.dtype))  # (b, d_inner); the bias goes into the update
    A = -torch.exp(A_log.float())
    args = _as_mamba2(ssm_state, x, dt, A, B, C, D.float(), z, dt_proj_bias.float())
    return _state_update_cpu(*args, True, None).view_as(x)


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------
@triton_op("mamba_compile::decode_in", mutates_args=("conv_state",))
def _decode_in(
    hidden: torch.Tensor,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    conv_start: int,
) -> torch.Tensor:
    _check_decode_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start)
    if hidden.device.type == "cuda":
        from . import mamba1_decode_triton

        return mamba1_decode_triton.decode_in_fwd(
            hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start, wrap=True
        )
    return _decode_in_cpu(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start)


@triton_op("mamba_compile::mamba1_decode_ssm", mutates_args=("ssm_state",))
def _mamba1_decode_ssm(
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    x_dbl: torch.Tensor,
    dt_proj_weight: torch.Tensor,
    dt_proj_bias: torch.Tensor,
    A_log: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
) -> torch.Tensor:
    _check_ssm(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z)
    if x.device.type == "cuda":
        from . import mamba1_decode_triton

        return mamba1_decode_triton.mamba1_decode_ssm_fwd(
            ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z, wrap=True
        )
    return _decode_ssm_cpu(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z)
