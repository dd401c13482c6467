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

The block path (``mixers.FUSED_BLOCK_MAX_BATCH``) takes three launches a layer with two more ops:

    s = [g *] hidden + residual;  h = norm(s) w [+ b];  then decode_in on h [and x_proj parts]   (decode_norm_in)
    logits = norm([g *] hidden + residual) @ W^T                                                (decode_norm_head)

where g = rsqrt(sumsq.sum() / gate_group_size + gate_eps) is the previous Mamba-2 layer's gated-norm scale
(mamba2_decode_ssm_gated), applied after out_proj, with which it commutes. decode_norm_in returns (out,
residual_out, x_dbl_parts): residual_out is s (fp32 with residual_in_fp32), and with ``x_proj_weight`` the
parts (cdiv(d, k), b, r + 2n) fp32 hold x_proj over each block of k = norm_in_block_n(m) channels (16 for
d_model <= 1024), which mamba1_decode_ssm adds up. One row of the batch a program: each program loads its
rows of W whole and recomputes the row's norm from d_model values in L2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op

from ._checks import check_same_device, check_tensor
from .causal_conv1d import _update_cpu as _conv_update_cpu
from .norms import _add_norm_cpu
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


def decode_norm_in(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None = None,
    *,
    eps: float,
    is_rms: bool = True,
    residual_in_fp32: bool = True,
    conv_start: int = 0,
    sumsq: torch.Tensor | None = None,
    gate_group_size: int = 1,
    gate_eps: float = 1e-5,
    x_proj_weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A block's add + norm followed by decode_in, for one token: returns (out, residual_out, x_dbl_parts).

    ``sumsq`` (b, k) fp32 scales hidden by rsqrt(sumsq.sum(-1) / gate_group_size + gate_eps) first (the
    previous Mamba-2 layer's gated RMSNorm, whose scale commutes with out_proj). With ``x_proj_weight``
    (r, conv_dim; conv_start 0) x_dbl_parts (parts, b, r) fp32 holds x_proj over each block of
    norm_in_block_n(d_model) channels of the conv output (x_dbl = x_dbl_parts.sum(0); mamba1_decode_ssm
    takes the parts); without it, an empty tensor."""
    _check_norm_in(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps)
    _check_decode_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start)
    _check_xproj(x_proj_weight, conv_weight, hidden, conv_start)
    return torch.ops.mamba_compile.decode_norm_in(
        hidden, residual, sumsq, float(gate_eps), gate_group_size, norm_weight, norm_bias, float(eps), is_rms,
        residual_in_fp32, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start, x_proj_weight
    )


def decode_norm_head(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    weight: torch.Tensor,
    *,
    eps: float,
    is_rms: bool = True,
    sumsq: torch.Tensor | None = None,
    gate_group_size: int = 1,
    gate_eps: float = 1e-5,
) -> torch.Tensor:
    """The model's last add + norm and its LM head for one token: norm([scale *] hidden + residual) @ weight^T,
    (b, rows) in hidden's dtype (decode_norm_in's prologue, then a GEMV over weight's rows)."""
    _check_norm_head(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps, weight)
    return torch.ops.mamba_compile.decode_norm_head(hidden, residual, sumsq, float(gate_eps), gate_group_size,
                                                    norm_weight, norm_bias, float(eps), is_rms, weight)


def gate_scale(hidden: torch.Tensor, sumsq: torch.Tensor, group_size: int, eps: float) -> torch.Tensor:
    """hidden * rsqrt(sumsq.sum(-1) / group_size + eps), in fp32: a Mamba-2 layer's deferred gated-norm scale
    (mamba2_decode_ssm_gated's sums of squares), applied after out_proj."""
    return hidden.float() * torch.rsqrt(sumsq.sum(-1, keepdim=True) / group_size + eps)


def norm_in_block_n(d_model: int) -> int:
    """in_proj rows a decode_norm_in program computes (it holds all of d_model for them in one tile): also the
    channels per partial x_proj sum."""
    f = 1 << max(4, (d_model - 1).bit_length())
    return max(2, min(16, 16384 // f))


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


MAX_NORM_IN_D_MODEL = 8192


def _check_norm_in(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps) -> None:
    check_tensor("hidden", hidden, shape=(None, None), letters="(batch, d_model)")
    batch, d_model = hidden.shape
    if d_model > MAX_NORM_IN_D_MODEL:
        raise ValueError(f"hidden has d_model = {d_model}; decode_norm_in supports at most {MAX_NORM_IN_D_MODEL}")
    check_tensor("residual", residual, shape=(batch, d_model), letters="(batch, d_model)", optional=True)
    check_tensor("norm_weight", norm_weight, shape=(d_model,), letters="(d_model,)")
    check_tensor("norm_bias", norm_bias, shape=(d_model,), letters="(d_model,)", optional=True)
    if not isinstance(eps, float) or not eps > 0:
        raise ValueError(f"eps must be a positive float, got {eps!r}")
    check_tensor("sumsq", sumsq, shape=(batch, None), letters="(batch, parts)", dtypes=(torch.float32,),
                 optional=True)
    if sumsq is not None:
        if sumsq.shape[1] < 1:
            raise ValueError(f"sumsq must have shape (batch, parts) with parts >= 1, got {tuple(sumsq.shape)}")
        if not isinstance(gate_group_size, (int, torch.SymInt)) or gate_group_size < 1:
            raise ValueError(f"gate_group_size must be a positive int, got {gate_group_size!r}")
        if not gate_eps > 0:
            raise ValueError(f"gate_eps must be > 0, got {gate_eps!r}")
    check_same_device(hidden=hidden, residual=residual, norm_weight=norm_weight, norm_bias=norm_bias, sumsq=sumsq)


def _check_norm_head(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps, weight) -> None:
    _check_norm_in(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps)
    check_tensor("weight", weight, shape=(None, hidden.shape[1]), letters="(rows, d_model)")
    check_same_device(hidden=hidden, weight=weight)


def _check_xproj(x_proj_weight, conv_weight, hidden, conv_start) -> None:
    if x_proj_weight is None:
        return
    d_inner = conv_weight.shape[0]
    check_tensor("x_proj_weight", x_proj_weight, shape=(None, d_inner), letters="(dt_rank + 2 * d_state, d_inner)")
    if x_proj_weight.shape[0] < 1:
        raise ValueError(f"x_proj_weight must have shape (dt_rank + 2 * d_state, d_inner) with a nonzero first "
                         f"dim, got {tuple(x_proj_weight.shape)}")
    if conv_start != 0:
        raise ValueError(f"x_proj_weight needs conv_start = 0 (the conv over in_proj's first rows), got {conv_start}")
    check_same_device(hidden=hidden, x_proj_weight=x_proj_weight)


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
    if x_dbl is not None and x_dbl.dim() == 3:  # partial sums (parts, batch, r + 2n), from decode_norm_in
        check_tensor("x_dbl", x_dbl, shape=(None, batch, dt_rank + 2 * d_state),
                     letters="(batch, dt_rank + 2 * d_state) or (parts, batch, dt_rank + 2 * d_state)")
    else:
        check_tensor("x_dbl", x_dbl, shape=(batch, dt_rank + 2 * d_state),
                     letters="(batch, dt_rank + 2 * d_state) or (parts, batch, dt_rank + 2 * d_state)")
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


def _xproj_parts_cpu(x, x_proj_weight, block: int):
    """x_proj over each block of ``block`` channels: (parts, b, r) fp32."""
    b, d = x.shape
    n = -(-d // block)
    xs = F.pad(x.float(), (0, n * block - d)).view(b, n, block)
    ws = F.pad(x_proj_weight.float(), (0, n * block - d)).view(-1, n, block)
    return torch.einsum("bnc,rnc->nbr", xs, ws)


def _decode_norm_in_cpu(hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms,
                        residual_in_fp32, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias,
                        conv_start, x_proj_weight):
    """add_norm's CPU code, then decode_in's: without sumsq, the unfused add_norm + decode_in bit for bit."""
    dtype = hidden.dtype
    s, normed = _norm_cpu(hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms)
    r_out = s.to(torch.float32 if residual_in_fp32 else dtype, copy=True)
    out = _decode_in_cpu(normed, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start)
    if x_proj_weight is None:
        return out, r_out, hidden.new_empty((0,), dtype=torch.float32)
    x = out[:, : conv_weight.shape[0]]
    return out, r_out, _xproj_parts_cpu(x, x_proj_weight, norm_in_block_n(hidden.shape[1]))


def _norm_cpu(hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms):
    """([scale *] hidden + residual, normed in hidden's dtype): add_norm's CPU code."""
    h = hidden if sumsq is None else gate_scale(hidden, sumsq, gate_group_size, gate_eps)
    out, s, _, _ = _add_norm_cpu(h, norm_weight, norm_bias, residual, eps, is_rms)
    return s, out.to(hidden.dtype)


def _decode_ssm_cpu(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z):
    d_state, dt_rank = ssm_state.shape[2], dt_proj_weight.shape[1]
    if x_dbl.dim() == 3:
        x_dbl = x_dbl.float().sum(0).to(x.dtype)
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


@triton_op("mamba_compile::decode_norm_in", mutates_args=("conv_state",))
def _decode_norm_in(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    sumsq: torch.Tensor | None,
    gate_eps: float,
    gate_group_size: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    eps: float,
    is_rms: bool,
    residual_in_fp32: bool,
    in_proj_weight: torch.Tensor,
    in_proj_bias: torch.Tensor | None,
    conv_state: torch.Tensor,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    conv_start: int,
    x_proj_weight: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_norm_in(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps)
    _check_decode_in(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start)
    _check_xproj(x_proj_weight, conv_weight, hidden, conv_start)
    args = (hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms,
            residual_in_fp32, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start,
            x_proj_weight)
    if hidden.device.type == "cuda":
        from . import mamba1_decode_triton

        return mamba1_decode_triton.decode_norm_in_fwd(*args, wrap=True)
    return _decode_norm_in_cpu(*args)


@triton_op("mamba_compile::decode_norm_head", mutates_args=())
def _decode_norm_head(
    hidden: torch.Tensor,
    residual: torch.Tensor | None,
    sumsq: torch.Tensor | None,
    gate_eps: float,
    gate_group_size: int,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    eps: float,
    is_rms: bool,
    weight: torch.Tensor,
) -> torch.Tensor:
    _check_norm_head(hidden, residual, norm_weight, norm_bias, eps, sumsq, gate_group_size, gate_eps, weight)
    if hidden.device.type == "cuda":
        from . import mamba1_decode_triton

        return mamba1_decode_triton.decode_norm_head_fwd(hidden, residual, sumsq, gate_eps, gate_group_size,
                                                         norm_weight, norm_bias, eps, is_rms, weight, wrap=True)
    _, normed = _norm_cpu(hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms)
    return F.linear(normed, weight.to(hidden.dtype))
