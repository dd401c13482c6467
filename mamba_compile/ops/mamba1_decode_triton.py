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

decode_norm_in, decode_norm_head and the state update take ``PDL`` (programmatic dependent launch, see
``_triton``): their weights, and the update's state, are read before the wait for the previous kernel.

All math is fp32 whatever the storage dtypes; every access is masked; tensors are read through strides.
"""

from __future__ import annotations

import torch

from ._triton import cdiv, dependent_launch_options, launcher, tl, triton
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

    _store_rows(acc, offs_b, mask_b, offs_n, mask_n, out_ptr, cs_ptr, cw_ptr, cb_ptr, h_ptr, h_ptr,
                conv_start, conv_dim, 0, s_csb, s_csd, s_csw, s_cwd, s_cww, s_ob, s_on, 0, 0, 0, 0,
                W, HAS_CONV_BIAS, False, BLOCK_N, 16)


@triton.jit
def _store_rows(
    acc, offs_b, mask_b, offs_n, mask_n, out_ptr, cs_ptr, cw_ptr, cb_ptr, wx_ptr, xp_ptr,
    conv_start, conv_dim, n_r, s_csb, s_csd, s_csw, s_cwd, s_cww, s_ob, s_on, s_wxr, s_wxc, s_xpp, s_xpb,
    W: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_XPROJ: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    """Writes a (BLOCK_B, BLOCK_N) tile of in_proj's output: the conv rows through the conv update and silu
    (their conv_state shifted), the others as they are; with HAS_XPROJ (conv_start 0: program n holds
    channels [n BLOCK_N, (n + 1) BLOCK_N)), also this program's partial x_proj sum over its channels."""
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

    if HAS_XPROJ:
        if tl.program_id(0) * BLOCK_N < conv_dim:
            offs_r = tl.arange(0, BLOCK_R)
            mask_r = offs_r < n_r
            wx = tl.load(wx_ptr + offs_r[None, :] * s_wxr + offs_c[:, None] * s_wxc,
                         mask=is_c[:, None] & mask_r[None, :], other=0.0).to(tl.float32)  # (BLOCK_N, BLOCK_R)
            xp = tl.sum(tl.where(mask_c, out, 0.0)[:, :, None] * wx[None, :, :], axis=1)  # (BLOCK_B, BLOCK_R)
            tl.store(xp_ptr + tl.program_id(0) * s_xpp + offs_b[:, None] * s_xpb + offs_r[None, :], xp,
                     mask=mask_b[:, None] & mask_r[None, :])

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
    grid = (cdiv(n_rows, BLOCK_N), cdiv(batch, BLOCK_B))
    launcher(_decode_in_fwd_kernel, wrap)[grid](
        hidden, in_proj_weight, _or(in_bias, hidden), conv_state, conv_weight, _or(conv_b, hidden), out,
        batch, d_model, n_rows, conv_start, conv_dim,
        *hidden.stride(), *in_proj_weight.stride(), *conv_state.stride(), *conv_weight.stride(), *out.stride(),
        W=width, HAS_IN_BIAS=in_bias is not None, HAS_CONV_BIAS=conv_b is not None, USE_DOT=use_dot,
        DOT_FP32=dot_fp32, BLOCK_B=BLOCK_B, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=warps,
    )
    return out


# ----------------------------------------------------------------------------------------------
# decode_norm_in: [gated-norm scale,] residual add, norm, in_proj + conv update + silu [+ x_proj parts]
# ----------------------------------------------------------------------------------------------
@triton.jit
def _decode_norm_in_kernel(
    h_ptr, res_ptr, ssq_ptr, nw_ptr, nb_ptr, rout_ptr, w_ptr, wb_ptr, cs_ptr, cw_ptr, cb_ptr, out_ptr, wx_ptr, xp_ptr,
    d_model, n_rows, conv_start, conv_dim, n_r, n_ssq, eps, gate_eps, gate_group_size,
    s_hb, s_rb, s_qb, s_rob, s_wn, s_wk, s_csb, s_csd, s_csw, s_cwd, s_cww, s_ob, s_on, s_wxr, s_wxc, s_xpp, s_xpb,
    W: tl.constexpr, HAS_RES: tl.constexpr, HAS_SSQ: tl.constexpr, IS_RMS: tl.constexpr,
    HAS_NORM_BIAS: tl.constexpr, HAS_IN_BIAS: tl.constexpr, HAS_CONV_BIAS: tl.constexpr, HAS_XPROJ: tl.constexpr,
    HAS_CONV: tl.constexpr, STORE_RES: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_R: tl.constexpr,
    PDL: tl.constexpr,
):
    """decode_norm_in; without HAS_CONV (decode_norm_head) every row is stored as it is and, without
    STORE_RES, the new residual is not written. PDL: W is read before the wait (see ``_triton``)."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n_rows
    b = tl.program_id(1).to(tl.int64)
    offs_b = b + tl.arange(0, 1)
    mask_b = offs_b >= 0
    offs_f = tl.arange(0, BLOCK_F)
    mask_f = offs_f < d_model

    # the whole (d_model, BLOCK_N) slice of W^T in one load, issued before anything waits
    w = tl.load(w_ptr + offs_n[None, :] * s_wn + offs_f[:, None] * s_wk, mask=mask_f[:, None] & mask_n[None, :],
                other=0.0)
    if PDL:  # the hidden state, residual and scales are the previous kernels' outputs
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    s = tl.load(h_ptr + b * s_hb + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    if HAS_SSQ:  # Mamba-2's gated RMSNorm, deferred past out_proj: one scale per row
        offs_q = tl.arange(0, BLOCK_Q)
        q = tl.load(ssq_ptr + b * s_qb + offs_q, mask=offs_q < n_ssq, other=0.0)
        s = s * tl.math.rsqrt(tl.sum(q, axis=0) / gate_group_size + gate_eps)
    if HAS_RES:
        s += tl.load(res_ptr + b * s_rb + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    if STORE_RES:
        if tl.program_id(0) == 0:
            tl.store(rout_ptr + b * s_rob + offs_f, s.to(rout_ptr.dtype.element_ty), mask=mask_f)
    if IS_RMS:
        xhat = s * tl.math.rsqrt(tl.sum(s * s, axis=0) / d_model + eps)
    else:
        centred = tl.where(mask_f, s - tl.sum(s, axis=0) / d_model, 0.0)
        xhat = centred * tl.math.rsqrt(tl.sum(centred * centred, axis=0) / d_model + eps)
    xn = xhat * tl.load(nw_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    if HAS_NORM_BIAS:
        xn += tl.load(nb_ptr + offs_f, mask=mask_f, other=0.0).to(tl.float32)
    xn = xn.to(h_ptr.dtype.element_ty).to(tl.float32)  # the norm's output dtype, as the unfused step has it

    acc = tl.sum(w.to(tl.float32) * xn[:, None], axis=0)[None, :]  # (1, BLOCK_N)
    if HAS_IN_BIAS:
        acc += tl.load(wb_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    if HAS_CONV:
        _store_rows(acc, offs_b, mask_b, offs_n, mask_n, out_ptr, cs_ptr, cw_ptr, cb_ptr, wx_ptr, xp_ptr,
                    conv_start, conv_dim, n_r, s_csb, s_csd, s_csw, s_cwd, s_cww, s_ob, s_on, s_wxr, s_wxc, s_xpp,
                    s_xpb, W, HAS_CONV_BIAS, HAS_XPROJ, BLOCK_N, BLOCK_R)
    else:
        tl.store(out_ptr + b * s_ob + offs_n[None, :] * s_on, acc.to(out_ptr.dtype.element_ty), mask=mask_n[None, :])


def decode_norm_in_fwd(hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms,
                       residual_in_fp32, in_proj_weight, in_proj_bias, conv_state, conv_weight, conv_bias,
                       conv_start, x_proj_weight, *, wrap: bool, num_warps: int | None = None):
    """Launches decode_norm_in (shapes and math in ``mamba1_decode``); conv_state is updated in place.
    Returns (out, residual_out, x_dbl_parts)."""
    from .mamba1_decode import norm_in_block_n

    batch, d_model = hidden.shape
    n_rows, conv_dim = in_proj_weight.shape[0], conv_weight.shape[0]
    width = int(conv_weight.shape[1])
    BLOCK_F = max(16, next_power_of_2(int(d_model)))
    BLOCK_N = norm_in_block_n(int(d_model))
    out = torch.empty((batch, n_rows), device=hidden.device, dtype=hidden.dtype)
    rout = torch.empty((batch, d_model), device=hidden.device,
                       dtype=torch.float32 if residual_in_fp32 else hidden.dtype)
    if x_proj_weight is not None:
        n_r = x_proj_weight.shape[0]
        parts = torch.empty((cdiv(conv_dim, BLOCK_N), batch, n_r), device=hidden.device, dtype=torch.float32)
        xproj = (x_proj_weight, parts, n_r, *x_proj_weight.stride(), parts.stride(0), parts.stride(1))
    else:
        parts = torch.empty((0,), device=hidden.device, dtype=torch.float32)
        xproj = (hidden, hidden, 1, 0, 0, 0, 0)
    n_ssq = sumsq.shape[1] if sumsq is not None else 1
    in_b = in_proj_bias.contiguous() if in_proj_bias is not None else None
    conv_b = conv_bias.contiguous() if conv_bias is not None else None
    norm_w = norm_weight.contiguous()
    norm_b = norm_bias.contiguous() if norm_bias is not None else None
    grid = (cdiv(n_rows, BLOCK_N), batch)
    launcher(_decode_norm_in_kernel, wrap)[grid](
        hidden, _or(residual, hidden), _or(sumsq, hidden), norm_w, _or(norm_b, norm_w), rout, in_proj_weight,
        _or(in_b, hidden), conv_state, conv_weight, _or(conv_b, hidden), out, xproj[0], xproj[1],
        d_model, n_rows, conv_start, conv_dim, xproj[2], n_ssq, float(eps), float(gate_eps), gate_group_size,
        hidden.stride(0), residual.stride(0) if residual is not None else 0,
        sumsq.stride(0) if sumsq is not None else 0, rout.stride(0), *in_proj_weight.stride(), *conv_state.stride(),
        *conv_weight.stride(), *out.stride(), *xproj[3:],
        W=width, HAS_RES=residual is not None, HAS_SSQ=sumsq is not None, IS_RMS=is_rms,
        HAS_NORM_BIAS=norm_b is not None, HAS_IN_BIAS=in_b is not None, HAS_CONV_BIAS=conv_b is not None,
        HAS_XPROJ=x_proj_weight is not None, HAS_CONV=True, STORE_RES=True, BLOCK_N=BLOCK_N, BLOCK_F=BLOCK_F,
        BLOCK_Q=max(16, next_power_of_2(int(n_ssq))), BLOCK_R=max(16, next_power_of_2(int(xproj[2]))),
        # H100, 130M, batch 1: with x_proj 4.6 us at 8 warps against 4.9 at 4; without it 4.2 at 4 against 4.4
        num_warps=num_warps or (8 if x_proj_weight is not None and BLOCK_F * BLOCK_N >= 8192 else 4),
        **dependent_launch_options(out),
    )
    return out, rout, parts


def decode_norm_head_fwd(hidden, residual, sumsq, gate_eps, gate_group_size, norm_weight, norm_bias, eps, is_rms,
                         weight, *, wrap: bool, block_n: int | None = None, num_warps: int | None = None):
    """Launches decode_norm_head (decode_norm_in's kernel without the conv rows or the residual output):
    returns (batch, rows of weight) in hidden's dtype."""
    from .mamba1_decode import norm_in_block_n

    batch, d_model = hidden.shape
    n_rows = weight.shape[0]
    BLOCK_F = max(16, next_power_of_2(int(d_model)))
    BLOCK_N = block_n or norm_in_block_n(int(d_model))
    out = torch.empty((batch, n_rows), device=hidden.device, dtype=hidden.dtype)
    n_ssq = sumsq.shape[1] if sumsq is not None else 1
    norm_w = norm_weight.contiguous()
    norm_b = norm_bias.contiguous() if norm_bias is not None else None
    launcher(_decode_norm_in_kernel, wrap)[(cdiv(n_rows, BLOCK_N), batch)](
        hidden, _or(residual, hidden), _or(sumsq, hidden), norm_w, _or(norm_b, norm_w), hidden, weight, hidden,
        hidden, hidden, hidden, out, hidden, hidden,
        d_model, n_rows, 0, 0, 1, n_ssq, float(eps), float(gate_eps), gate_group_size,
        hidden.stride(0), residual.stride(0) if residual is not None else 0,
        sumsq.stride(0) if sumsq is not None else 0, 0, *weight.stride(), 0, 0, 0, 0, 0, *out.stride(), 0, 0, 0, 0,
        W=2, HAS_RES=residual is not None, HAS_SSQ=sumsq is not None, IS_RMS=is_rms,
        HAS_NORM_BIAS=norm_b is not None, HAS_IN_BIAS=False, HAS_CONV_BIAS=False, HAS_XPROJ=False, HAS_CONV=False,
        STORE_RES=False, BLOCK_N=BLOCK_N, BLOCK_F=BLOCK_F, BLOCK_Q=max(16, next_power_of_2(int(n_ssq))), BLOCK_R=16,
        num_warps=num_warps or 4, **dependent_launch_options(out),
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
    d_inner, d_state, dt_rank, n_qparts,
    s_sb, s_sd, s_sn, s_xb, s_xd, s_qp, s_qb, s_qk, s_wd, s_wr, s_ad, s_an, s_zb, s_zd, s_yb, s_yd,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr,
    PDL: tl.constexpr,
):
    offs_d = tl.program_id(0) * BLOCK_D + tl.arange(0, BLOCK_D)
    b = tl.program_id(1).to(tl.int64)
    offs_n = tl.arange(0, BLOCK_S)
    mask_d = offs_d < d_inner
    mask_n = offs_n < d_state
    mask_dn = mask_d[:, None] & mask_n[None, :]
    q_row = xdbl_ptr + b * s_qb

    # the weights and this layer's state: nothing else in a decode step writes them (PDL: read before the wait)
    A = -tl.exp(tl.load(alog_ptr + offs_d[:, None] * s_ad + offs_n[None, :] * s_an, mask=mask_dn,
                        other=0.0).to(tl.float32))
    Dv = tl.load(D_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.load(bdt_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    state_ptrs = s_ptr + b * s_sb + offs_d[:, None] * s_sd + offs_n[None, :] * s_sn
    state = tl.load(state_ptrs, mask=mask_dn, other=0.0).to(tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()

    # dt = softplus(W_dt[d, :] . x_dbl[b, :dt_rank] + b_dt[d])
    dt_acc = tl.zeros((BLOCK_D, BLOCK_R), dtype=tl.float32)
    for r0 in range(0, dt_rank, BLOCK_R):
        offs_r = r0 + tl.arange(0, BLOCK_R)
        mask_r = offs_r < dt_rank
        q = _sum_parts(q_row + offs_r * s_qk, n_qparts, s_qp, mask_r, BLOCK_Q)
        w = tl.load(wdt_ptr + offs_d[:, None] * s_wd + offs_r[None, :] * s_wr,
                    mask=mask_d[:, None] & mask_r[None, :], other=0.0).to(tl.float32)
        dt_acc += w * q[None, :]
    dt = tl.sum(dt_acc, axis=1) + bias
    dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)  # softplus, linear above 20 as in torch

    B = _sum_parts(q_row + (dt_rank + offs_n) * s_qk, n_qparts, s_qp, mask_n, BLOCK_Q)
    C = _sum_parts(q_row + (dt_rank + d_state + offs_n) * s_qk, n_qparts, s_qp, mask_n, BLOCK_Q)
    x = tl.load(x_ptr + b * s_xb + offs_d * s_xd, mask=mask_d, other=0.0).to(tl.float32)

    state = state * tl.exp(A * dt[:, None]) + B[None, :] * (dt * x)[:, None]
    tl.store(state_ptrs, state.to(s_ptr.dtype.element_ty), mask=mask_dn)

    y = tl.sum(state * C[None, :], axis=1)
    y += x * Dv
    zv = tl.load(z_ptr + b * s_zb + offs_d * s_zd, mask=mask_d, other=0.0).to(tl.float32)
    y *= zv * tl.sigmoid(zv)
    tl.store(y_ptr + b * s_yb + offs_d * s_yd, y.to(y_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _sum_parts(ptrs, n_parts, s_p, mask, BLOCK_Q: tl.constexpr):
    """sum over q < n_parts of the values at ptrs + q * s_p, in fp32 (x_dbl given as partial sums): one
    (BLOCK_Q, ...) tile load, so that every part's load is in flight at once."""
    offs_q = tl.arange(0, BLOCK_Q)
    v = tl.load(ptrs[None, :] + offs_q[:, None] * s_p, mask=(offs_q < n_parts)[:, None] & mask[None, :], other=0.0)
    return tl.sum(v.to(tl.float32), axis=0)


def _ssm_blocks(batch: int, d_inner: int, d_state: int, dt_rank: int) -> tuple[int, int, int, int]:
    """(BLOCK_D, BLOCK_S, BLOCK_R, num_warps): a state tile of about 512 fp32 values (as the state update's
    heuristic), smaller while that leaves fewer than ~128 programs (batch 1: 96 programs for d_inner 1536)."""
    block_s = max(16, next_power_of_2(d_state))
    block_d = max(4, 512 // block_s)
    while block_d > 8 and batch * cdiv(d_inner, block_d) < 128:
        block_d //= 2
    block_r = min(64, max(16, next_power_of_2(dt_rank)))
    return block_d, block_s, block_r, 4 if block_s <= 128 else 8


def mamba1_decode_ssm_fwd(ssm_state, x, x_dbl, dt_proj_weight, dt_proj_bias, A_log, D, z, *, wrap: bool,
                          block_d: int | None = None, num_warps: int | None = None):
    """Launches mamba1_decode_ssm; ssm_state is updated in place. x_dbl is (batch, r + 2n) or partial sums
    (parts, batch, r + 2n). Returns y (batch, d_inner) in x's dtype."""
    batch, d_inner, d_state = ssm_state.shape
    dt_rank = dt_proj_weight.shape[1]
    q = x_dbl if x_dbl.dim() == 3 else x_dbl.unsqueeze(0)
    y = torch.empty((batch, d_inner), device=x.device, dtype=x.dtype)
    BLOCK_D, BLOCK_S, BLOCK_R, warps = _ssm_blocks(_static(batch, 1), _static(d_inner, 1536), d_state,
                                                   _static(dt_rank, 48))
    if q.shape[0] > 1:  # each program reads every part: fewer programs (b1, 130M: 5.1 -> 4.1 us with 96 parts)
        BLOCK_D = max(BLOCK_D, 16)
    BLOCK_D, warps = block_d or BLOCK_D, num_warps or warps
    # the channel vectors are indexed densely
    dt_bias, D = dt_proj_bias.contiguous(), D.contiguous()
    grid = (cdiv(d_inner, BLOCK_D), batch)
    launcher(_decode_ssm_fwd_kernel, wrap)[grid](
        ssm_state, x, q, dt_proj_weight, dt_bias, A_log, D, z, y,
        d_inner, d_state, dt_rank, q.shape[0],
        *ssm_state.stride(), *x.stride(), *q.stride(), *dt_proj_weight.stride(), *A_log.stride(),
        *z.stride(), *y.stride(),
        BLOCK_D=BLOCK_D, BLOCK_S=BLOCK_S, BLOCK_R=BLOCK_R, BLOCK_Q=next_power_of_2(int(q.shape[0])),
        num_warps=warps, **dependent_launch_options(y),
    )
    return y


def _static(n, default: int) -> int:
    """A size for choosing block sizes: the value when it is known, ``default`` for a symbolic size."""
    return n if isinstance(n, int) else default


def _or(t, like):
    """A tensor to pass for an absent pointer argument (never read: its HAS_* flag is off)."""
    return t if t is not None else like
