"""Triton kernels for the fused Mamba-1 decode step (shapes and math in ``mamba1_decode``).

``_decode_in_fwd_kernel`` (the op ``decode_in``, serving Mamba-1 and Mamba-2): one program per (BLOCK_N rows
of in_proj's output) x (BLOCK_B batch rows). It computes its tile of hidden @ W_in^T + b_in, as a GEMV
(multiply and sum, BLOCK_B = 1) for one batch row or with tl.dot (the batch padded to BLOCK_B >= 16) for
more. Rows in [conv_start, conv_start + conv_dim) are conv channels (Mamba-1: x; Mamba-2: xBC): the program
applies the conv update to them (window read from conv_state, new input appended, bias, silu) and shifts
its own channels' conv_state; every other row is written as it is. A channel's state belongs to one
program, so no other program reads or writes it.

``_decode_ssm_fwd_kernel``: one program per (BLOCK_D channels) x (one batch row): dt = softplus(W_dt[c] .
x_dbl[:r] + b_dt[c]) as a short dot in registers, A = -exp(A_log) on load, then the state update, the C
contraction, the D skip and the silu(z) gate (the Mamba-1 case of ``selective_state_update_triton``).

All math is fp32 whatever the storage dtypes; every access is masked; tensors are read through strides.
"""

from __future__ import annotations

import torch

from ._triton import launcher, tl, triton
from .norms_triton import next_power_of_2


# ----------------------------------------------------------------------------------------------
# mamba1_decode_in: in_proj + causal conv update + silu
# ----------------------------------------------------------------------------------------------
@triton.jit
def _decode_in_fwd_kernel(
    h_ptr, w_ptr, wb_ptr, cs_ptr, cw_ptr, cb_ptr, out_ptr,
    batch, d_model, n_rows, conv_start, conv_dim,
    s_hb, s_hk, s_wn, s_wk, s_csb, s_csd, s_csw, s_cwd, s_cww, s_ob, s_on,
    W: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, USE_DOT: tl.constexpr,
    DOT_FP32: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = (tl.program_id(1) * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    mask_n = offs_n < n_rows
    mask_b = offs_b < batch

    # ---- projection tile: (BLOCK_B, BLOCK_N) = hidden[b, :] . W[n, :] ----
    if USE_DOT:
        acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    else:
        acc_kn = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, d_model, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < d_model
        # W^T tile (BLOCK_K, BLOCK_N): W is (rows, d_model), K contiguous
        w = tl.load(w_ptr + offs_n[None, :] * s_wn + offs_k[:, None] * s_wk,
                    mask=mask_k[:, None] & mask_n[None, :], other=0.0)
        if USE_DOT:
            h = tl.load(h_ptr + offs_b[:, None] * s_hb + offs_k[None, :] * s_hk,
                        mask=mask_b[:, None] & mask_k[None, :], other=0.0)  # (BLOCK_B, BLOCK_K)
            if DOT_FP32:  # mixed or fp32 storage: exact fp32 products (no tf32), as cuBLAS does by default
                acc += tl.dot(h.to(tl.float32), w.to(tl.float32), input_precision="ieee")
            else:  # hidden and W share a 16-bit dtype: tensor-core products, fp32 accumulation
                acc += tl.dot(h, w)
        else:  # one batch row (BLOCK_B = 1): multiply now, reduce over K once after the loop
            h = tl.load(h_ptr + offs_b[None, :] * s_hb + offs_k[:, None] * s_hk,
                        mask=mask_b[None, :] & mask_k[:, None], other=0.0)  # (BLOCK_K, 1)
            acc_kn += w.to(tl.float32) * h.to(tl.float32)
    if not USE_DOT:
        acc = tl.sum(acc_kn, axis=0)[None, :]  # (1, BLOCK_N)
    if HAS_IN_BIAS:
        acc += tl.load(wb_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]

    # ---- rows outside [conv_start, conv_start + conv_dim): written as they are ----
    out_ptrs = out_ptr + offs_b[:, None] * s_ob + offs_n[None, :] * s_on
    offs_c = offs_n - conv_start  # conv channel of a row (negative or >= conv_dim outside the range)
    is_c = (offs_c >= 0) & (offs_c < conv_dim)
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=mask_b[:, None] & (mask_n & ~is_c)[None, :])

    # ---- conv rows: out = silu(conv_bias + sum_{k < W-1} cw[k] state[k] + cw[W-1] acc), state shifted ----
    mask_c = mask_b[:, None] & is_c[None, :]
    state_row = cs_ptr + offs_b[:, None] * s_csb + offs_c[None, :] * s_csd  # (BLOCK_B, BLOCK_N) pointers
    out = acc * tl.load(cw_ptr + offs_c * s_cwd + (W - 1) * s_cww, mask=is_c, other=0.0).to(tl.float32)[None, :]
    if HAS_CONV_BIAS:
        out += tl.load(cb_ptr + offs_c, mask=is_c, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(W - 1):
        cw_k = tl.load(cw_ptr + offs_c * s_cwd + k * s_cww, mask=is_c, other=0.0).to(tl.float32)
        out += cw_k[None, :] * tl.load(state_row + k * s_csw, mask=mask_c, other=0.0).to(tl.float32)
    out = out * tl.sigmoid(out)
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mask_c)

    tl.debug_barrier()  # the window is read completely before it is shifted in place
    for k in tl.static_range(W - 2):
        v = tl.load(state_row + (k + 1) * s_csw, mask=mask_c, other=0.0)
        tl.store(state_row + k * s_csw, v, mask=mask_c)
    tl.store(state_row + (W - 2) * s_csw, acc.to(cs_ptr.dtype.element_ty), mask=mask_c)


def _in_blocks(batch: int, d_model: int) -> tuple[bool, int, int, int, int]:
    """(USE_DOT, BLOCK_B, BLOCK_N, BLOCK_K, num_warps). One row: a GEMV over 16-row tiles of W (192 programs
    for the 130M in_proj, 3072 rows, to spread W's read over the SMs). More rows: tl.dot with the batch padded
    to 16..64 (each W tile is then read once per 64 rows)."""
    if batch == 1:
        return False, 1, 16, min(256, max(16, next_power_of_2(d_model))), 4
    block_b = min(64, max(16, next_power_of_2(batch)))
    return True, block_b, 32, min(128, max(16, next_power_of_2(d_model))), 4


def decode_in_fwd(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, conv_start, *,
                  wrap: bool, block_n: int | None = None, block_k: int | None = None, num_warps: int | None = None):
    """Launches decode_in; conv_state is updated in place. Returns out (batch, rows) in hidden's dtype: the
    conv rows [conv_start, conv_start + conv_dim) hold silu(conv), the others the projection.
    ``block_n`` / ``block_k`` / ``num_warps`` override the shape heuristic (for sweeps)."""
    batch, d_model = hidden.shape
    n_rows, conv_dim = in_proj_weight.shape[0], conv_weight.shape[0]
    width = int(conv_weight.shape[1])  # a constexpr: under dynamic shapes, specialised (guarded) here
    out = torch.empty((batch, n_rows), device=hidden.device, dtype=hidden.dtype)
    use_dot, BLOCK_B, BLOCK_N, BLOCK_K, warps = _in_blocks(_static(batch, 2), _static(d_model, 256))
    BLOCK_N, BLOCK_K, warps = block_n or BLOCK_N, block_k or BLOCK_K, num_warps or warps
    dot_fp32 = not (hidden.dtype == in_proj_weight.dtype and hidden.dtype in (torch.float16, torch.bfloat16))
    # the biases are indexed densely by row / channel
    in_bias = in_proj_bias.contiguous() if in_proj_bias is not None else None
    conv_b = conv_bias.contiguous() if conv_bias is not None else None
    grid = (triton.cdiv(n_rows, BLOCK_N), triton.cdiv(batch, BLOCK_B))
    launcher(_decode_in_fwd_kernel, wrap)[grid](
        hidden, in_proj_weight, _or(in_bias, hidden), conv_state, conv_weight, _or(conv_b, hidden), out,
        batch, d_model, n_rows, conv_start, conv_dim,
        *hidden.stride(), *in_proj_weight.stride(), *conv_state.stride(), *conv_weight.stride(), *out.stride(),
        W=width, HAS_IN_BIAS=in_bias is not None, HAS_CONV_BIAS=conv_b is not None, USE_DOT=use_dot,
        DOT_FP32=dot_fp32, BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=warps,
    )
    return out


def mamba1_decode_in_fwd(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, *, wrap: bool,
                         **blocks):
    """decode_in_fwd for Mamba-1 (conv on the first half of the rows): returns (x, z), views of one
    (batch, 2 d_inner) tensor."""
    out = decode_in_fwd(hidden, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias, 0, wrap=wrap,
                        **blocks)
    return out.chunk(2, dim=-1)


# ----------------------------------------------------------------------------------------------
# mamba1_decode_ssm: dt_proj + softplus + state update + C contraction + D skip + silu(z) gate
# ----------------------------------------------------------------------------------------------
@triton.jit
def _decode_ssm_fwd_kernel(
    s_ptr, x_ptr, xdbl_ptr, wdt_ptr, bdt_ptr, alog_ptr, D_ptr, z_ptr, y_ptr,
    d_inner, d_state, dt_rank,
    s_sb, s_sd, s_sn, s_xb, s_xd, s_qb, s_qk, s_wd, s_wr, s_ad, s_an, s_zb, s_zd, s_yb, s_yd,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr,
):
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_S)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    q_row = xdbl_ptr + b * s_qb

    # dt = softplus(W_dt[d, :] . x_dbl[b, :dt_rank] + b_dt[d])
    dt_acc = tl.zeros((BLOCK_D, BLOCK_R), dtype=tl.float32)
    for r0 in range(0, dt_rank, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < dt_rank
        q = tl.load(q_row + offs_r * s_qk, mask=mask_r, other=0.0).to(tl.float32)
        w = tl.load(wdt_ptr + offs_d[:, None] * s_wd + offs_r[None, :] * s_wr,
                    mask=mask_d[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
        dt_acc += w * q[None, :]
    dt = tl.sum(dt_acc, axis=1) + tl.load(bdt_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)  # softplus, linear above 20 as in torch

    A = -tl.exp(tl.load(alog_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn,
                        other=0.0).to(tl.float32))
    B = tl.load(q_row + (dt_rank + offs_n) * s_qk, mask=mask_n, other=0.0).to(tl.float32)
    C = tl.load(q_row + (dt_rank + d_state + offs_n) * s_qk, mask=mask_n, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)

    state_ptrs = s_ptr + b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    state = tl.load(state_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    state = state * tl.exp(A * dt[:, None]) + B[None, :] * (dt * x)[:, None]
    tl.store(state_ptrs, state.to(s_ptr.dtype.element_ty), mask=mask_dn)

    y = tl.sum(state * C[None, :], axis=1)
    y += x * tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    zv = tl.load(z_ptr + b * s_zb + offs_d * s_zd, mask=mask_d, other=0.0).to(tl.float32)
    y *= zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_yb + offs_d * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask_d)


def _ssm_blocks(batch: int, d_inner: int, d_state: int, dt_rank: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_S, BLOCK_R, num_warps): a state tile of about 512 fp32 values (as the state update's
    heuristic), smaller while that leaves fewer than ~128 programs (batch 1: 96 programs for d_inner 1536)."""
    block_s = max(16, next_power_of_2(d_state))
    block_d = max(4, 512 // block_s)
    while block_d > 8 and batch * triton.cdiv(d_inner, block_d) < 128:
        block_d //= 2
    block_r = min(64, max(16, next_power_of_2(dt_rank)))
    return block_d, block_s, block_r, 4 if block_s <= 128 else 8


def mamba1_decode_ssm_fwd(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z, *, wrap: bool,
                          block_d: int | None = None, num_warps: int | None = None):
    """Launches mamba1_decode_ssm; ssm_state is updated in place. Returns y (batch, d_inner) in x's dtype."""
    batch, d_inner, d_state = ssm_state.shape
    dt_rank = dt_proj_weight.shape[1]
    y = torch.empty((batch, d_inner), device=x.device, dtype=x.dtype)
    BLOCK_D, BLOCK_S, BLOCK_R, warps = _ssm_blocks(_static(batch, 1), _static(d_inner, 1536), d_state,
                                                   _static(dt_rank, 48))
    BLOCK_D, warps = block_d or BLOCK_D, num_warps or warps
    # the channel vectors are indexed densely
    dt_bias, D = dt_proj_bias.contiguous(), D.contiguous()
    grid = (triton.cdiv(d_inner, BLOCK_D), batch)
    launcher(_decode_ssm_fwd_kernel, wrap)[grid](
        ssm_state, x, x_dbl, dt_proj_weight, dt_bias, A_log, D, z, y,
        d_inner, d_state, dt_rank,
        *ssm_state.stride(), *x.stride(), *x_dbl.stride(), *dt_proj_weight.stride(), *A_log.stride(),
        *z.stride(), *y.stride(),
        BLOCK_D=BLOCK_D, BLOCK_S=BLOCK_S, BLOCK_R=BLOCK_R, num_warps=warps,
    )
    return y


def _static(n, default: int) -> int:
    """A size for choosing block sizes: the value when it is known, ``default`` for a symbolic size."""
    return n if isinstance(n, int) else default


def _or(t, like):
    """A tensor to pass for an absent pointer argument (never read: its HAS_* flag is off)."""
    return t if t is not None else like
