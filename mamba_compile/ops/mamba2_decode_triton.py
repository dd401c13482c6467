"""Triton kernel for the fused Mamba-2 decode state update (shapes and math in ``mamba2_decode``).

``_decode_ssm_fwd_kernel``: one program per (BLOCK_P headdim rows) x (head) x (batch row). It reads the head's
raw dt, dt_bias and A_log (softplus, the dt_limit clamp and A = -exp(A_log) in registers), its group's B and
C, updates its (BLOCK_P, d_state) state tile in place and writes y = C . s + D x (times silu(z) with a gate).
The glue of the unfused step (-exp(A_log), .float() casts, expands) is gone. With ``PDL`` (programmatic
dependent launch, see ``_triton``) the head's parameters and state tile are read before the wait for the
previous kernel.

All math is fp32 whatever the storage dtypes; every access is masked; tensors are read through strides
(x, B, C, dt and z are usually views into decode_in's output).
"""

from __future__ import annotations

import torch

from ._triton import cdiv, dependent_launch_options, launcher, tl, triton
from .norms_triton import next_power_of_2


@triton.jit
def _decode_ssm_fwd_kernel(
    s_ptr, x_ptr, B_ptr, C_ptr, dt_ptr, alog_ptr, dtb_ptr, D_ptr, z_ptr, y_ptr, gw_ptr,
    headdim, d_state, heads_per_group, dt_lo, dt_hi,
    s_sb, s_sh, s_sp, s_sn, s_xb, s_xh, s_xp, s_Bb, s_Bg, s_Bn, s_Cb, s_Cg, s_Cn, s_tb, s_th,
    s_Dh, s_Dp, s_zb, s_zh, s_zp, s_yb, s_yh, s_yp, ssq_ptr, s_qb,
    HAS_Z: tl.constexpr, HAS_LIMIT: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_S: tl.constexpr,
    GATE_NORM: tl.constexpr, PDL: tl.constexpr,
):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    h = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_n = tl.arange(0, BLOCK_S)
    mask_p = offs_p < headdim
    mask_n = offs_n < d_state
    mask_pn = mask_p[:, None] & mask_n[None, :]

    # the weights and this layer's state: nothing else in a decode step writes them (PDL: read before the wait)
    A = -tl.exp(tl.load(alog_ptr + h).to(tl.float32))
    dt_bias = tl.load(dtb_ptr + h).to(tl.float32)
    Dv = tl.load(D_ptr + h * s_Dh + offs_p * s_Dp, mask=mask_p, other=0.0).to(tl.float32)
    state_ptrs = s_ptr + b * s_sb + h * s_sh + offs_p[:, None] * s_sp + offs_n[None, :] * s_sn
    state = tl.load(state_ptrs, mask=mask_pn, other=0.0).to(tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()

    # dt = clamp(softplus(dt_raw + dt_bias), dt_limit): one scalar per (batch row, head)
    dt = tl.load(dt_ptr + b * s_tb + h * s_th).to(tl.float32) + dt_bias
    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)  # softplus, linear above 20 as in torch
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_lo), dt_hi)
    dA = tl.exp(A * dt)

    B = tl.load(B_ptr + b * s_Bb + g * s_Bg + offs_n * s_Bn, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + b * s_Cb + g * s_Cg + offs_n * s_Cn, mask=mask_n, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_xb + h * s_xh + offs_p * s_xp, mask=mask_p, other=0.0).to(tl.float32)

    state = state * dA + B[None, :] * (dt * x)[:, None]
    tl.store(state_ptrs, state.to(s_ptr.dtype.element_ty), mask=mask_pn)

    y = tl.sum(state * C[None, :], axis=1)
    y += x * Dv
    if HAS_Z:
        zv = tl.load(z_ptr + b * s_zb + h * s_zh + offs_p * s_zp, mask=mask_p, other=0.0).to(tl.float32)
        if GATE_NORM == 0:  # the gate alone (a model without the gated RMSNorm)
            y *= zv * tl.sigmoid(zv)
    if GATE_NORM != 0:  # the gated RMSNorm up to its scale: u = gate(y) * weight, and this block's sum of squares
        if GATE_NORM == 1:  # norm(y silu(z))
            y *= zv * tl.sigmoid(zv)
            sumsq = tl.sum(tl.where(mask_p, y * y, 0.0), axis=0)
        else:  # norm(y) silu(z)
            sumsq = tl.sum(tl.where(mask_p, y * y, 0.0), axis=0)
            y *= zv * tl.sigmoid(zv)
        y *= tl.load(gw_ptr + h * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        tl.store(ssq_ptr + b * s_qb + h * tl.num_programs(0) + tl.program_id(0), sumsq)
    tl.store(y_ptr + b * s_yb + h * s_yh + offs_p * s_yp, y.to(y_ptr.dtype.element_ty), mask=mask_p)


def _ssm_blocks(batch: int, nheads: int, headdim: int, d_state: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_S, num_warps): a state tile of about 2048 fp32 values (16 x 128 for the 130M model:
    96 programs at batch 1), smaller while that leaves fewer than ~128 programs."""
    block_s = max(16, next_power_of_2(d_state))
    block_p = min(next_power_of_2(headdim), max(4, 2048 // block_s))
    while block_p > 4 and batch * nheads * cdiv(headdim, block_p) < 128:
        block_p //= 2
    return block_p, block_s, 4 if block_s <= 128 else 8


def mamba2_decode_ssm_fwd(ssm_state, x, B, C, dt, A_log, dt_bias, D, z, dt_limit, *, wrap: bool,
                          block_p: int | None = None, num_warps: int | None = None, gate_norm=None):
    """Launches mamba2_decode_ssm; ssm_state is updated in place. Returns y (batch, nheads, headdim) in x's
    dtype. ``dt_limit`` is (lo, hi); (0, inf) skips the clamp. With ``gate_norm`` = (weight, norm_before_gate)
    (z then being the norm's gate) it returns (u, sumsq) as mamba2_decode_ssm_gated does."""
    batch, nheads, headdim, d_state = ssm_state.shape
    ngroups = B.shape[1]
    BLOCK_P, BLOCK_S, warps = _ssm_blocks(_static(batch, 1), _static(nheads, 24), _static(headdim, 64), d_state)
    BLOCK_P, warps = block_p or BLOCK_P, num_warps or warps
    if gate_norm is not None:  # fixed: the partial sums' partition (SUMSQ_BLOCK rows) is part of the op's contract
        from .mamba2_decode import SUMSQ_BLOCK

        BLOCK_P = min(SUMSQ_BLOCK, next_power_of_2(int(headdim)))
    # the per-head vectors are indexed densely; D (nheads,) is read with a zero headdim stride
    A_log, dt_bias, D = A_log.contiguous(), dt_bias.contiguous(), D.contiguous()
    s_D = (D.stride(0), D.stride(1)) if D.dim() == 2 else (D.stride(0), 0)
    s_z = z.stride() if z is not None else (0, 0, 0)
    lo, hi = float(dt_limit[0]), float(dt_limit[1])
    grid = (cdiv(headdim, BLOCK_P), nheads, batch)
    y = torch.empty((batch, nheads, headdim), device=x.device, dtype=x.dtype)
    gw, gate, ssq = y, 0, y  # placeholders, never read without the gated norm
    if gate_norm is not None:
        gw, gate = gate_norm[0].contiguous(), 2 if gate_norm[1] else 1
        ssq = torch.empty((batch, nheads * grid[0]), device=x.device, dtype=torch.float32)
    launcher(_decode_ssm_fwd_kernel, wrap)[grid](
        ssm_state, x, B, C, dt, A_log, dt_bias, D, _or(z, x), y, gw,
        headdim, d_state, nheads // ngroups, lo, hi,
        *ssm_state.stride(), *x.stride(), *B.stride(), *C.stride(), *dt.stride(), *s_D, *s_z, *y.stride(),
        ssq, ssq.stride(0),
        HAS_Z=z is not None, HAS_LIMIT=(lo, hi) != (0.0, float("inf")), BLOCK_P=BLOCK_P, BLOCK_S=BLOCK_S,
        GATE_NORM=gate, num_warps=warps, **dependent_launch_options(y),
    )
    return y if gate_norm is None else (y, ssq)


def _static(n, default: int) -> int:
    """A size for choosing block sizes: the value when it is known, ``default`` for a symbolic size."""
    return n if isinstance(n, int) else default


def _or(t, like):
    """A tensor to pass for an absent pointer argument (never read: its HAS_* flag is off)."""
    return t if t is not None else like
