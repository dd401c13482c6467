"""Triton kernel for the one-token state update (Mamba-2 layout; Mamba-1 arrives as views with nheads = 1).

    h <- exp(dt' * A) * h + dt' * B * x;  out = (sum_n C * h + D * x) * silu(z)

One program owns a (BLOCK_M headdim rows) x (dstate) tile of one (batch row, head): it reads the
tile once, writes it once, and reduces over dstate for the output. Everything is read through
strides, so stride-0 expanded dt / dt_bias / A / D cost no extra traffic. Padding rows
(state index < 0) and out-of-range rows (index >= nstates) touch no state and write out = 0.
"""

from __future__ import annotations

import torch

from ._triton import cdiv, launcher, tl, triton
from .norms_triton import next_power_of_2


@triton.jit
def _state_update_fwd_kernel(
    state_ptr, x_ptr, dt_ptr, dt_bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, out_ptr, idx_ptr,
    headdim, dstate, nstates, heads_per_group,
    s_sb, s_sh, s_sp, s_sn,
    x_sb, x_sh, x_sp,
    dt_sb, dt_sh, dt_sp,
    dtb_sh, dtb_sp,
    A_sh, A_sp, A_sn,
    B_sb, B_sg, B_sn,
    C_sb, C_sg, C_sn,
    D_sh, D_sp,
    z_sb, z_sh, z_sp,
    o_sb, o_sh, o_sp,
    HAS_DT_BIAS: tl.constexpr, DT_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_IDX: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask_m = offs_m < headdim
    mask_n = offs_n < dstate

    if HAS_IDX:
        row = tl.load(idx_ptr + b).to(tl.int64)
        valid = (row >= 0) & (row < nstates)
        row = tl.where(valid, row, 0)
        # a padding row loads and stores no state (tl.where: the interpreter rejects block & scalar masks)
        mask_m = tl.where(valid, mask_m, False)
    else:
        row = b
    mask_mn = mask_m[:, None] & mask_n[None, :]
    state_ptrs = state_ptr + row * s_sb + h * s_sh + offs_m[:, None] * s_sp + offs_n[None, :] * s_sn
    state = tl.load(state_ptrs, mask=mask_mn, other=0.0).to(tl.float32)

    x = tl.load(x_ptr + b * x_sb + h * x_sh + offs_m * x_sp, mask=mask_m, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + b * dt_sb + h * dt_sh + offs_m * dt_sp, mask=mask_m, other=0.0).to(tl.float32)
    if HAS_DT_BIAS:
        dt += tl.load(dt_bias_ptr + h * dtb_sh + offs_m * dtb_sp, mask=mask_m, other=0.0).to(tl.float32)
    if DT_SOFTPLUS:
        # softplus, linear above 20 as in torch.nn.functional.softplus
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    A = tl.load(
        A_ptr + h * A_sh + offs_m[:, None] * A_sp + offs_n[None, :] * A_sn, mask=mask_mn, other=0.0
    ).to(tl.float32)
    B = tl.load(B_ptr + b * B_sb + g * B_sg + offs_n * B_sn, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(C_ptr + b * C_sb + g * C_sg + offs_n * C_sn, mask=mask_n, other=0.0).to(tl.float32)

    dA = tl.exp(A * dt[:, None])
    state = state * dA + B[None, :] * (dt * x)[:, None]
    tl.store(state_ptrs, state.to(state_ptr.dtype.element_ty), mask=mask_mn)

    y = tl.sum(state * C[None, :], axis=1)
    if HAS_D:
        y += x * tl.load(D_ptr + h * D_sh + offs_m * D_sp, mask=mask_m, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + b * z_sb + h * z_sh + offs_m * z_sp, mask=mask_m, other=0.0).to(tl.float32)
        y *= z * tl.sigmoid(z)
    # masked-off (padding) rows computed y from zeros and D * 0 = 0; store them as exact zeros
    y = tl.where(mask_m, y, 0.0)
    offs_out = b * o_sb + h * o_sh + offs_m * o_sp
    tl.store(out_ptr + offs_out, y.to(out_ptr.dtype.element_ty), mask=offs_m < headdim)


def _block_sizes(dstate) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps): a tile of about 512-2048 fp32 state values per program."""
    block_n = max(16, next_power_of_2(dstate))
    if block_n <= 16:
        return 32, block_n, 4
    if block_n <= 32:
        return 16, block_n, 4
    if block_n <= 64:
        return 8, block_n, 4
    if block_n <= 128:
        return 4, block_n, 4
    return 4, block_n, 8


def _strides(t: torch.Tensor | None, n: int) -> tuple:
    return tuple(t.stride()) if t is not None else (0,) * n


def selective_state_update_fwd(
    state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices, *, wrap: bool,
    block_m: int | None = None, num_warps: int | None = None,
) -> torch.Tensor:
    """Launches the update on Mamba-2 layout tensors; ``state`` is updated in place, returns out.

    ``block_m`` / ``num_warps`` override the shape heuristic (the benchmark sweeps them).
    """
    batch, nheads, headdim = x.shape
    nstates, dstate = state.shape[0], state.shape[3]
    out = torch.empty((batch, nheads, headdim), device=x.device, dtype=x.dtype)
    BLOCK_M, BLOCK_N, warps = _block_sizes(dstate)
    BLOCK_M, num_warps = block_m or BLOCK_M, num_warps or warps
    grid = (cdiv(headdim, BLOCK_M), batch, nheads)
    # absent optional tensors are passed as x (never read: their HAS_* flag is off), so no launch
    # path sees a None pointer, and the stand-in is a read-only input
    opt = lambda t: x if t is None else t  # noqa: E731
    launcher(_state_update_fwd_kernel, wrap)[grid](
        state, x, dt, opt(dt_bias), A, B, C, opt(D), opt(z), out, opt(state_batch_indices),
        headdim, dstate, nstates, nheads // B.shape[1],
        *state.stride(),
        *x.stride(),
        *dt.stride(),
        *_strides(dt_bias, 2),
        *A.stride(),
        *B.stride(),
        *C.stride(),
        *_strides(D, 2),
        *_strides(z, 3),
        *out.stride(),
        HAS_DT_BIAS=dt_bias is not None, DT_SOFTPLUS=dt_softplus, HAS_D=D is not None,
        HAS_Z=z is not None, HAS_IDX=state_batch_indices is not None,
        BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    return out
