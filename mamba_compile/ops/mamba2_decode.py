"""Fused Mamba-2 decode state update: dt bias, softplus, dt_limit, A = -exp(A_log), the state update, D and the
optional silu(z) gate in one op, reading the raw parameters (no -exp / .float() / expand glue kernels).

    dt' = clamp(softplus(dt + dt_bias), *dt_limit);  s <- exp(-dt' exp(A_log)) s + dt' B x;  y = (C s + D x) [silu(z)]

Shapes (b batch rows, h nheads, p headdim, g ngroups, n d_state; head h reads group h // (h / g))::

    ssm_state:        (b, h, p, n)      fp32 or 16-bit, updated in place
    x:                (b, h, p)         from decode_in's conv rows; y has x's shape and dtype
    B, C:             (b, g, n)         from decode_in's conv rows
    dt:               (b, h)            raw, from in_proj (decode_in's pass-through rows)
    A_log, dt_bias:   (h,)
    D:                (h,) or (h, p)
    z:                (b, h, p) or None (the model passes it only with rmsnorm=False)

A Mamba-2 layer's decode is then add_norm, decode_in (in ``mamba1_decode``: in_proj + conv update + silu on
the xBC rows), mamba2_decode_ssm, rms_norm_gated, out_proj: five launches instead of about nine.
On CPU the op runs what ``Mamba2Mixer.step`` computed before (the CPU code of selective_state_update on the
same expanded views), so the two paths agree bit for bit there. Parameters may have any float dtype; all math
is fp32. No backward: decode only.

``mamba2_decode_ssm_gated`` (the block path) adds the gated RMSNorm up to its scale: u = y silu(z) w and the sums
of squares of y silu(z) (or y, with norm_before_gate) over blocks of 16 headdim rows; the next block's
decode_norm_in applies rsqrt(sum / (h p) + eps) after out_proj.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.library import triton_op

from ._checks import check_same_device, check_tensor
from .selective_state_update import _update_cpu as _state_update_cpu

MAX_DSTATE = 256
NO_LIMIT = (0.0, math.inf)


def mamba2_decode_ssm(
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor | None = None,
    *,
    dt_limit: tuple[float, float] = NO_LIMIT,
) -> torch.Tensor:
    """One Mamba-2 decode state update from raw parameters: returns y (b, nheads, headdim); ssm_state
    (b, nheads, headdim, d_state) is advanced in place."""
    lo, hi = _check_limit(dt_limit)
    _check_ssm(ssm_state, x, B, C, dt, A_log, dt_bias, D, z)
    return torch.ops.mamba_compile.mamba2_decode_ssm(ssm_state, x, B, C, dt, A_log, dt_bias, D, z, lo, hi)


def mamba2_decode_ssm_gated(
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    gate_norm_weight: torch.Tensor,
    *,
    norm_before_gate: bool = False,
    dt_limit: tuple[float, float] = NO_LIMIT,
) -> tuple[torch.Tensor, torch.Tensor]:
    """mamba2_decode_ssm followed by the gated RMSNorm over all nheads * headdim channels (one group), up to
    its scale: returns (u, sumsq) with u = y silu(z) * gate_norm_weight (b, nheads, headdim) in x's dtype
    (norm_before_gate: the same u, the sums taken before the gate) and sumsq (b, nheads * cdiv(headdim, 16))
    fp32, the sums of squares of y silu(z) (of y) over blocks of 16 headdim rows. The norm's output is then
    u * rsqrt(sumsq.sum(-1) / (nheads * headdim) + eps); decode_norm_in applies that scale after out_proj,
    with which it commutes. ssm_state is advanced in place."""
    lo, hi = _check_limit(dt_limit)
    _check_ssm(ssm_state, x, B, C, dt, A_log, dt_bias, D, z)
    _check_gate(gate_norm_weight, z, ssm_state)
    return torch.ops.mamba_compile.mamba2_decode_ssm_gated(ssm_state, x, B, C, dt, A_log, dt_bias, D, z, lo, hi,
                                                           gate_norm_weight, norm_before_gate)


SUMSQ_BLOCK = 16  # headdim rows per partial sum of squares (also the gated kernel's rows a program)


def _check_gate(weight, z, ssm_state) -> None:
    _, nheads, headdim, _ = ssm_state.shape
    check_tensor("gate_norm_weight", weight, shape=(nheads * headdim,), letters="(nheads * headdim,)")
    if z is None:
        raise ValueError("z is required by mamba2_decode_ssm_gated: it is the gated RMSNorm's gate")
    check_same_device(ssm_state=ssm_state, gate_norm_weight=weight)


def _check_limit(dt_limit) -> tuple[float, float]:
    if not (isinstance(dt_limit, (tuple, list)) and len(dt_limit) == 2):
        raise TypeError(f"dt_limit must be a pair (min, max) of floats, got {dt_limit!r}")
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    if not lo <= hi:
        raise ValueError(f"dt_limit must be (min, max) with min <= max, got {dt_limit!r}")
    return lo, hi


def _check_ssm(ssm_state, x, B, C, dt, A_log, dt_bias, D, z) -> None:
    check_tensor("ssm_state", ssm_state, shape=(None, None, None, None), letters="(batch, nheads, headdim, d_state)")
    batch, nheads, headdim, d_state = ssm_state.shape
    if d_state > MAX_DSTATE:
        raise ValueError(f"ssm_state has d_state = {d_state}; at most {MAX_DSTATE} is supported")
    check_tensor("x", x, shape=(batch, nheads, headdim), letters="(batch, nheads, headdim)")
    check_tensor("B", B, shape=(batch, None, d_state), letters="(batch, ngroups, d_state)")
    ngroups = B.shape[1]
    if ngroups < 1 or nheads % ngroups != 0:
        raise ValueError(f"B must have shape (batch, ngroups, d_state) with ngroups dividing nheads = {nheads}, "
                         f"got {tuple(B.shape)}")
    check_tensor("C", C, shape=(batch, ngroups, d_state), letters="(batch, ngroups, d_state)")
    check_tensor("dt", dt, shape=(batch, nheads), letters="(batch, nheads)")
    check_tensor("A_log", A_log, shape=(nheads,), letters="(nheads,)")
    check_tensor("dt_bias", dt_bias, shape=(nheads,), letters="(nheads,)")
    if D is not None and D.dim() == 2:
        check_tensor("D", D, shape=(nheads, headdim), letters="(nheads,) or (nheads, headdim)")
    else:
        check_tensor("D", D, shape=(nheads,), letters="(nheads,) or (nheads, headdim)")
    check_tensor("z", z, shape=(batch, nheads, headdim), letters="(batch, nheads, headdim)", optional=True)
    check_same_device(ssm_state=ssm_state, x=x, B=B, C=C, dt=dt, A_log=A_log, dt_bias=dt_bias, D=D, z=z)


def _decode_ssm_cpu(ssm_state, x, B, C, dt, A_log, dt_bias, D, z, lo, hi):
    # the expressions of Mamba2Mixer.step's unfused path, so that both give the same bits
    nheads, headdim, d_state = ssm_state.shape[1:]
    A = (-torch.exp(A_log.float()))[:, None, None].expand(nheads, headdim, d_state)
    D = D.float()
    D = D if D.dim() == 2 else D[:, None].expand(nheads, headdim)
    dt_bias = dt_bias.float()
    if (lo, hi) != NO_LIMIT:
        # selective_state_update has no dt_limit: softplus and the clamp here, as the scan does
        dt = F.softplus(dt.float() + dt_bias).clamp(lo, hi)
        dt_bias, dt_softplus = None, False
    else:
        dt_bias, dt_softplus = dt_bias[:, None].expand(nheads, headdim), True
    dt = dt[..., None].expand(-1, -1, headdim)
    return _state_update_cpu(ssm_state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, None).view_as(x)


@triton_op("mamba_compile::mamba2_decode_ssm", mutates_args=("ssm_state",))
def _mamba2_decode_ssm(
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor | None,
    dt_limit_min: float,
    dt_limit_max: float,
) -> torch.Tensor:
    _check_limit((dt_limit_min, dt_limit_max))
    _check_ssm(ssm_state, x, B, C, dt, A_log, dt_bias, D, z)
    if x.device.type == "cuda":
        from . import mamba2_decode_triton

        return mamba2_decode_triton.mamba2_decode_ssm_fwd(
            ssm_state, x, B, C, dt, A_log, dt_bias, D, z, (dt_limit_min, dt_limit_max), wrap=True
        )
    return _decode_ssm_cpu(ssm_state, x, B, C, dt, A_log, dt_bias, D, z, dt_limit_min, dt_limit_max)


def _gated_cpu(y, z, weight, norm_before_gate):
    """(u, sumsq) from y and z (b, h, p), the sums over blocks of SUMSQ_BLOCK headdim rows."""
    b, h, p = y.shape
    y, gate = y.float(), F.silu(z.float())
    if not norm_before_gate:
        y = y * gate
    k = -(-p // SUMSQ_BLOCK)
    sumsq = F.pad(y.square(), (0, k * SUMSQ_BLOCK - p)).view(b, h, k, SUMSQ_BLOCK).sum(-1).flatten(1)
    if norm_before_gate:
        y = y * gate
    return y * weight.float().view(h, p), sumsq


@triton_op("mamba_compile::mamba2_decode_ssm_gated", mutates_args=("ssm_state",))
def _mamba2_decode_ssm_gated(
    ssm_state: torch.Tensor,
    x: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    dt: torch.Tensor,
    A_log: torch.Tensor,
    dt_bias: torch.Tensor,
    D: torch.Tensor,
    z: torch.Tensor,
    dt_limit_min: float,
    dt_limit_max: float,
    gate_norm_weight: torch.Tensor,
    norm_before_gate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_limit((dt_limit_min, dt_limit_max))
    _check_ssm(ssm_state, x, B, C, dt, A_log, dt_bias, D, z)
    _check_gate(gate_norm_weight, z, ssm_state)
    if x.device.type == "cuda":
        from . import mamba2_decode_triton

        return mamba2_decode_triton.mamba2_decode_ssm_fwd(
            ssm_state, x, B, C, dt, A_log, dt_bias, D, z, (dt_limit_min, dt_limit_max), wrap=True,
            gate_norm=(gate_norm_weight, norm_before_gate),
        )
    y = _decode_ssm_cpu(ssm_state, x, B, C, dt, A_log, dt_bias, D, None, dt_limit_min, dt_limit_max)
    u, sumsq = _gated_cpu(y, z, gate_norm_weight, norm_before_gate)
    return u.to(x.dtype), sumsq
