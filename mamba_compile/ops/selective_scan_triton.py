"""Triton kernels of the Mamba-1 selective scan (shapes and math in ``selective_scan``'s docstring).

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t h_t + D u_t,   out_t = y_t silu(z_t)

Design (H100, bf16 activations, fp32 state). One program (one warp) owns BLOCK_D channels of one batch
row and all dstate states, a [BLOCK_N, BLOCK_D] fp32 tile in registers, and walks time sequentially:
a block of BLOCK_L steps of u/delta/z is loaded as a [BLOCK_L, BLOCK_D] tile whose time axis lies
inside each thread (8 bf16 = one 16-byte vector), and a statically unrolled loop takes one column per
step, so a step costs per state one exp2 (the floor: b*d*l*n exponentials), two multiplies and two FMAs,
with no cross-thread scan. (A chunked ``tl.associative_scan`` design, the first version, spent ~15
shuffles per state-step and measured 2.2 ms forward at b8 d1536 l2048.) Input-dependent B/C are
copied time-major, fp32, zero-padded to (batch, ngroups, seqlen_pad, BLOCK_N), so a step's B_t is one
unmasked vector load. The forward saves the state entering every STATE_CHUNK steps plus the last.

The backward walks blocks of BLOCK_L (= STATE_CHUNK) steps in reverse: it recomputes and keeps the
block's states from the saved one ([BLOCK_L, BLOCK_N, BLOCK_D] in registers), then steps backwards
carrying q_t = exp(dt_t A) g_t, so that the state gradient is g_t = C_t dy_t + q_{t+1}; dL/dh_0 is the
final q. Per-step dB_t/dC_t for input-dependent B/C are sums over channels: reduced over the program's
BLOCK_D channels in registers, then added with ``tl.atomic_add`` into an fp32 (batch, ngroups,
seqlen_pad, BLOCK_N) buffer: a partials buffer would be dim / BLOCK_D times larger than dB itself
(hundreds of MB at training shapes), whereas atomics add dim / BLOCK_D values per element through L2
(the reference adds one per channel). The price is a summation order that varies from run to run
(fp32 rounding-level differences). Per-channel sums (dA, dD, d delta_bias, time-invariant dB/dC)
accumulate over time in registers and are written per batch row, then summed over the batch in torch.

Measured on an H100 (torch 2.11, triton 3.6), b8 d1536 l2048 n16 bf16: forward 0.86 ms, backward
kernel 4.8 ms, slower than the reference (0.452 / 2.463 ms fwd / fwd+bwd). The SASS shows why: each
step's B/C row load is consumed 8-30 instructions after it is issued, so every step waits a full L1/L2
round trip (~5.9k cycles per 8-step block against ~940 issued instructions). ``prefetch=True`` (the
PREFETCH constexpr) carries the rows 4 steps ahead in registers, which moves the load-to-use distance
to ~130-400 instructions at +5% instructions, no spills in the forward and at BLOCK_D 8 in the backward;
it is tested in the interpreter but not yet measured or run on a GPU, so it is off by default.

Block sizes come from a shape heuristic (no autotuning); the launch functions take ``wrap``: True
inside the ops (``wrap_triton``, so tracing sees the kernels), False for direct launches in tests
(the Triton interpreter on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._triton import launcher, tl, triton

_LOG2E = 1.4426950408889634


@triton.jit
def _lg2_approx(x):
    return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rcp_approx(x):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _softplus(x, FAST_MATH: tl.constexpr):
    # torch's softplus with threshold 20: x itself where exp would not change it in fp32. FAST_MATH
    # (CUDA) uses the MUFU lg2/ex2 approximations (~2^-22 relative error) instead of libdevice's log,
    # a ~15-instruction polynomial; the interpreter cannot run PTX, so it takes the plain path.
    if FAST_MATH:
        sp = _lg2_approx(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453
    else:
        sp = tl.log(1.0 + tl.exp(x))
    return tl.where(x <= 20.0, sp, x)


@triton.jit
def _sigmoid(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # one ex2 and one rcp instead of an IEEE division
        sig = _rcp_approx(1.0 + tl.exp2(-x * 1.4426950408889634))
    else:
        sig = tl.sigmoid(x)
    return sig


@triton.jit
def _column(tile, sel):
    """Row j of a [BLOCK_L, BLOCK_D] tile as a [BLOCK_D] vector (sel = offs_t == j, j static). The time
    axis lives inside each thread, so with j unrolled this folds to register moves."""
    return tl.sum(tl.where(sel, tile, 0.0), axis=0)


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, last_ptr, states_ptr,
    dim, seqlen, dstate, B_dpg, C_dpg,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_l, s_B_n, s_C_b, s_C_g, s_C_l, s_C_n,
    s_D, s_z_b, s_z_d, s_z_l, s_bias, s_h0_b, s_h0_d, s_h0_n, s_o_b, s_o_d, s_o_l,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, STATE_CHUNK: tl.constexpr,
    FAST_MATH: tl.constexpr, PREFETCH: tl.constexpr,
):  # fmt: skip
    # State tile h: [BLOCK_N, BLOCK_D] fp32. Time is walked one step at a time (a static loop over a
    # block of BLOCK_L steps whose u/delta/z are loaded as [BLOCK_L, BLOCK_D] tiles): one exp2 and two
    # FMAs per state and step, no cross-thread scan. Varying B/C come time-major, (batch, ngroups, seqlen,
    # dstate) fp32, so a step's B_t is one contiguous row. The state entering every STATE_CHUNK steps
    # (a multiple of BLOCK_L) is saved for the backward, then the final state. Varying B/C copies are
    # zero-padded to BLOCK_N states and to a whole number of BLOCK_L steps.
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]
    # exp(dt A) = exp2(dt A log2 e); padded channels/states get A = 0 (decay 1, input 0: state stays 0).
    A2 = tl.load(A_ptr + offs_n[:, None] * s_A_n + offs_d[None, :] * s_A_d, mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(tl.float32)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if HAS_H0:
        h = tl.load(h0_ptr + pid_b * s_h0_b + offs_n[:, None] * s_h0_n + offs_d[None, :] * s_h0_d, mask=mask_nd, other=0.0).to(tl.float32)
    # B/C rows of the group owning this channel block (BLOCK_D divides dim / ngroups), or
    # per-channel [BLOCK_N, BLOCK_D] tiles when time-invariant.
    if B_VARYING:
        B_base = B_ptr + pid_b * s_B_b + ((pid_d * BLOCK_D) // B_dpg) * s_B_g + offs_n * s_B_n
    else:
        Bt = tl.load(B_ptr + offs_n[:, None] * s_B_n + offs_d[None, :] * s_B_g, mask=mask_nd, other=0.0).to(tl.float32)
    if C_VARYING:
        C_base = C_ptr + pid_b * s_C_b + ((pid_d * BLOCK_D) // C_dpg) * s_C_g + offs_n * s_C_n
    else:
        Ct = tl.load(C_ptr + offs_n[:, None] * s_C_n + offs_d[None, :] * s_C_g, mask=mask_nd, other=0.0).to(tl.float32)
    nstates = tl.cdiv(seqlen, STATE_CHUNK)
    states_base = states_ptr + pid_b * (nstates + 1) * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate
    # Pointers to block 0; block l0 adds l0 * (time stride).
    u_blk = u_ptr + pid_b * s_u_b + offs_t[:, None] * s_u_l + offs_d[None, :] * s_u_d
    dl_blk = delta_ptr + pid_b * s_dl_b + offs_t[:, None] * s_dl_l + offs_d[None, :] * s_dl_d
    z_blk = z_ptr + pid_b * s_z_b + offs_t[:, None] * s_z_l + offs_d[None, :] * s_z_d
    if PREFETCH:
        # Software pipelining by hand: the next block's tiles (and B/C as [BLOCK_L, BLOCK_N] tiles) are
        # loaded one block ahead, so no load latency sits between a step and the next.
        mask0 = (offs_t < seqlen)[:, None] & mask_d[None, :]
        u_nxt = tl.load(u_blk, mask=mask0, other=0.0)
        dl_nxt = tl.load(dl_blk, mask=mask0, other=0.0)
        if HAS_Z:
            z_nxt = tl.load(z_blk, mask=mask0, other=0.0)
        # B/C rows run 4 steps ahead of their use (the copies carry _ROWS_AHEAD extra zero rows).
        if B_VARYING:
            B_r0, B_r1, B_r2, B_r3 = tl.load(B_base), tl.load(B_base + s_B_l), tl.load(B_base + 2 * s_B_l), tl.load(B_base + 3 * s_B_l)
        if C_VARYING:
            C_r0, C_r1, C_r2, C_r3 = tl.load(C_base), tl.load(C_base + s_C_l), tl.load(C_base + 2 * s_C_l), tl.load(C_base + 3 * s_C_l)
    for l0 in range(0, seqlen, BLOCK_L):
        offs_l = l0 + offs_t
        mask_ld = (offs_l < seqlen)[:, None] & mask_d[None, :]
        if SAVE_STATES:
            if l0 % STATE_CHUNK == 0:
                tl.store(states_base + (l0 // STATE_CHUNK) * dim * dstate, h, mask=mask_nd)
        if PREFETCH:
            u_raw, dl_raw = u_nxt, dl_nxt
            mask_nx = (offs_l + BLOCK_L < seqlen)[:, None] & mask_d[None, :]
            u_nxt = tl.load(u_blk + (l0 + BLOCK_L) * s_u_l, mask=mask_nx, other=0.0)
            dl_nxt = tl.load(dl_blk + (l0 + BLOCK_L) * s_dl_l, mask=mask_nx, other=0.0)
            if HAS_Z:
                z_raw = z_nxt
                z_nxt = tl.load(z_blk + (l0 + BLOCK_L) * s_z_l, mask=mask_nx, other=0.0)
        else:
            u_raw = tl.load(u_blk + l0 * s_u_l, mask=mask_ld, other=0.0)
            dl_raw = tl.load(dl_blk + l0 * s_dl_l, mask=mask_ld, other=0.0)
            if HAS_Z:
                z_raw = tl.load(z_blk + l0 * s_z_l, mask=mask_ld, other=0.0)
        u = u_raw.to(tl.float32)
        dt = dl_raw.to(tl.float32) + bias[None, :]
        if DELTA_SOFTPLUS:
            dt = _softplus(dt, FAST_MATH)
        dt = tl.where(mask_ld, dt, 0.0)  # padded steps: decay 1, input 0
        dtu = dt * u
        y = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
        for j in tl.static_range(BLOCK_L):
            sel = (offs_t == j)[:, None]
            dt_j = _column(dt, sel)
            dtu_j = _column(dtu, sel)
            if B_VARYING:
                if PREFETCH:
                    Bt = B_r0[:, None]
                    B_r0, B_r1, B_r2 = B_r1, B_r2, B_r3
                    B_r3 = tl.load(B_base + (l0 + j + 4) * s_B_l)
                else:  # padded copies: no mask, so the row is one vector load
                    Bt = tl.load(B_base + (l0 + j) * s_B_l)[:, None]
            if C_VARYING:
                if PREFETCH:
                    Ct = C_r0[:, None]
                    C_r0, C_r1, C_r2 = C_r1, C_r2, C_r3
                    C_r3 = tl.load(C_base + (l0 + j + 4) * s_C_l)
                else:
                    Ct = tl.load(C_base + (l0 + j) * s_C_l)[:, None]
            h = tl.exp2(A2 * dt_j[None, :]) * h + Bt * dtu_j[None, :]
            y = tl.where(sel, tl.sum(Ct * h, axis=0)[None, :], y)
        if HAS_D:
            y += Dv[None, :] * u
        if HAS_Z:
            zt = z_raw.to(tl.float32)
            y = y * zt * _sigmoid(zt, FAST_MATH)
        tl.store(out_ptr + pid_b * s_o_b + offs_l[:, None] * s_o_l + offs_d[None, :] * s_o_d, y.to(out_ptr.dtype.element_ty), mask=mask_ld)
    tl.store(last_ptr + pid_b * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate, h, mask=mask_nd)
    if SAVE_STATES:
        tl.store(states_base + nstates * dim * dstate, h, mask=mask_nd)


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr, dbias_ptr, dh0_ptr,
    dim, seqlen, dstate, B_dpg, C_dpg, ngroups_B, ngroups_C,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_l, s_B_n, s_C_b, s_C_g, s_C_l, s_C_n,
    s_D, s_z_b, s_z_d, s_z_l, s_bias, s_do_b, s_do_d, s_do_l, s_dls_b, s_dls_d, s_dls_n,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, FAST_MATH: tl.constexpr,
    PREFETCH: tl.constexpr,
):  # fmt: skip
    # Blocks of BLOCK_L steps in reverse; BLOCK_L is the forward's STATE_CHUNK, so each block starts
    # from a saved state. Inside a block: the states are recomputed forward and kept
    # ([BLOCK_L, BLOCK_N, BLOCK_D], time inside each thread), then a reverse step loop carries
    # q = exp(dt_{t+1} A) g_{t+1}, so that the state gradient is g_t = C_t dy_t + q.
    # Outputs du, ddelta, dz: contiguous (batch, dim, seqlen); dA, dh0 and time-invariant dB/dC
    # partials: (batch, dim, dstate); dD, dbias partials: (batch, dim); varying dB/dC: fp32
    # (batch, ngroups, seqlen padded to BLOCK_L, BLOCK_N), summed over this program's channels, then
    # added atomically (padded steps and states receive zeros).
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]
    A = tl.load(A_ptr + offs_n[:, None] * s_A_n + offs_d[None, :] * s_A_d, mask=mask_nd, other=0.0).to(tl.float32)
    A2 = A * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(tl.float32)
    if B_VARYING:
        B_base = B_ptr + pid_b * s_B_b + ((pid_d * BLOCK_D) // B_dpg) * s_B_g + offs_n * s_B_n
        dB_base = dB_ptr + (pid_b * ngroups_B + (pid_d * BLOCK_D) // B_dpg) * tl.cdiv(seqlen, BLOCK_L) * BLOCK_L * BLOCK_N + offs_n
    else:
        Bt = tl.load(B_ptr + offs_n[:, None] * s_B_n + offs_d[None, :] * s_B_g, mask=mask_nd, other=0.0).to(tl.float32)
        dB_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    if C_VARYING:
        C_base = C_ptr + pid_b * s_C_b + ((pid_d * BLOCK_D) // C_dpg) * s_C_g + offs_n * s_C_n
        dC_base = dC_ptr + (pid_b * ngroups_C + (pid_d * BLOCK_D) // C_dpg) * tl.cdiv(seqlen, BLOCK_L) * BLOCK_L * BLOCK_N + offs_n
    else:
        Ct = tl.load(C_ptr + offs_n[:, None] * s_C_n + offs_d[None, :] * s_C_g, mask=mask_nd, other=0.0).to(tl.float32)
        dC_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dA_acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    nblocks = tl.cdiv(seqlen, BLOCK_L)
    states_base = states_ptr + pid_b * (nblocks + 1) * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate
    q = tl.load(dlast_ptr + pid_b * s_dls_b + offs_n[:, None] * s_dls_n + offs_d[None, :] * s_dls_d, mask=mask_nd, other=0.0).to(tl.float32)
    t3 = offs_t[:, None, None]
    out_base = pid_b * dim * seqlen + offs_d[None, :] * seqlen
    for cc in range(0, nblocks):
        c = nblocks - 1 - cc
        l0 = c * BLOCK_L
        offs_l = l0 + offs_t
        mask_ld = (offs_l < seqlen)[:, None] & mask_d[None, :]
        h_start = tl.load(states_base + c * dim * dstate, mask=mask_nd, other=0.0)
        u = tl.load(u_ptr + pid_b * s_u_b + offs_l[:, None] * s_u_l + offs_d[None, :] * s_u_d, mask=mask_ld, other=0.0).to(tl.float32)
        pre = tl.load(delta_ptr + pid_b * s_dl_b + offs_l[:, None] * s_dl_l + offs_d[None, :] * s_dl_d, mask=mask_ld, other=0.0).to(tl.float32)
        pre += bias[None, :]
        dt = pre
        if DELTA_SOFTPLUS:
            dt = _softplus(pre, FAST_MATH)
        dt = tl.where(mask_ld, dt, 0.0)
        dtu = dt * u
        dout = tl.load(dout_ptr + pid_b * s_do_b + offs_l[:, None] * s_do_l + offs_d[None, :] * s_do_d, mask=mask_ld, other=0.0).to(tl.float32)
        dy = dout
        if HAS_Z:
            zt = tl.load(z_ptr + pid_b * s_z_b + offs_l[:, None] * s_z_l + offs_d[None, :] * s_z_d, mask=mask_ld, other=0.0).to(tl.float32)
            sig = _sigmoid(zt, FAST_MATH)
            dy = dout * zt * sig
        # Forward through the block: keep every state; dC_t = sum over channels of dy_t h_t.
        hs = tl.zeros([BLOCK_L, BLOCK_N, BLOCK_D], tl.float32)
        y = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
        h = h_start
        if PREFETCH:  # B/C rows 4 steps ahead (the copies carry 4 zero rows past each end)
            if B_VARYING:
                B_r0, B_r1, B_r2, B_r3 = tl.load(B_base + l0 * s_B_l), tl.load(B_base + (l0 + 1) * s_B_l), tl.load(B_base + (l0 + 2) * s_B_l), tl.load(B_base + (l0 + 3) * s_B_l)
            if C_VARYING and HAS_Z:
                C_r0, C_r1, C_r2, C_r3 = tl.load(C_base + l0 * s_C_l), tl.load(C_base + (l0 + 1) * s_C_l), tl.load(C_base + (l0 + 2) * s_C_l), tl.load(C_base + (l0 + 3) * s_C_l)
        for j in tl.static_range(BLOCK_L):
            sel = (offs_t == j)[:, None]
            if B_VARYING:
                if PREFETCH:
                    Bt = B_r0[:, None]
                    B_r0, B_r1, B_r2 = B_r1, B_r2, B_r3
                    B_r3 = tl.load(B_base + (l0 + j + 4) * s_B_l)
                else:
                    Bt = tl.load(B_base + (l0 + j) * s_B_l)[:, None]
            if C_VARYING and HAS_Z:
                if PREFETCH:
                    Ct = C_r0[:, None]
                    C_r0, C_r1, C_r2 = C_r1, C_r2, C_r3
                    C_r3 = tl.load(C_base + (l0 + j + 4) * s_C_l)
                else:
                    Ct = tl.load(C_base + (l0 + j) * s_C_l)[:, None]
            h = tl.exp2(A2 * _column(dt, sel)[None, :]) * h + Bt * _column(dtu, sel)[None, :]
            hs = tl.where(t3 == j, h[None, :, :], hs)
            dy_j = _column(dy, sel)
            if HAS_Z:
                y = tl.where(sel, tl.sum(Ct * h, axis=0)[None, :], y)
            if C_VARYING:
                tl.atomic_add(dC_base + (l0 + j) * BLOCK_N, tl.sum(h * dy_j[None, :], axis=1))
            else:
                dC_acc += h * dy_j[None, :]
        if HAS_Z:
            if HAS_D:
                y += Dv[None, :] * u
            tl.store(dz_ptr + out_base + offs_l[:, None], (dout * y * sig * (1.0 + zt * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=mask_ld)
        du = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
        if HAS_D:
            dD_acc += tl.sum(dy * u, axis=0)
            du = dy * Dv[None, :]
        ddt = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
        # Reverse through the block.
        if PREFETCH:  # rows 4 steps behind, in reverse
            last = l0 + BLOCK_L - 1
            if B_VARYING:
                B_r0, B_r1, B_r2, B_r3 = tl.load(B_base + last * s_B_l), tl.load(B_base + (last - 1) * s_B_l), tl.load(B_base + (last - 2) * s_B_l), tl.load(B_base + (last - 3) * s_B_l)
            if C_VARYING:
                C_r0, C_r1, C_r2, C_r3 = tl.load(C_base + last * s_C_l), tl.load(C_base + (last - 1) * s_C_l), tl.load(C_base + (last - 2) * s_C_l), tl.load(C_base + (last - 3) * s_C_l)
        for jj in tl.static_range(BLOCK_L):
            j = BLOCK_L - 1 - jj
            sel = (offs_t == j)[:, None]
            if B_VARYING:
                if PREFETCH:
                    Bt = B_r0[:, None]
                    B_r0, B_r1, B_r2 = B_r1, B_r2, B_r3
                    B_r3 = tl.load(B_base + (l0 + j - 4) * s_B_l)
                else:
                    Bt = tl.load(B_base + (l0 + j) * s_B_l)[:, None]
            if C_VARYING:
                if PREFETCH:
                    Ct = C_r0[:, None]
                    C_r0, C_r1, C_r2 = C_r1, C_r2, C_r3
                    C_r3 = tl.load(C_base + (l0 + j - 4) * s_C_l)
                else:
                    Ct = tl.load(C_base + (l0 + j) * s_C_l)[:, None]
            dt_j = _column(dt, sel)
            dtu_j = _column(dtu, sel)
            g = Ct * _column(dy, sel)[None, :] + q
            if j == 0:
                h_prev = h_start
            else:
                h_prev = tl.sum(tl.where(t3 == j - 1, hs, 0.0), axis=0)
            dA_j = tl.exp2(A2 * dt_j[None, :])
            s = g * dA_j * h_prev  # dL/d(dt_t A) per state
            d_dtu = tl.sum(g * Bt, axis=0)
            ddt = tl.where(sel, (d_dtu * _column(u, sel) + tl.sum(s * A, axis=0))[None, :], ddt)
            du = tl.where(sel, du + (d_dtu * dt_j)[None, :], du)
            dA_acc += s * dt_j[None, :]
            if B_VARYING:
                tl.atomic_add(dB_base + (l0 + j) * BLOCK_N, tl.sum(g * dtu_j[None, :], axis=1))
            else:
                dB_acc += g * dtu_j[None, :]
            q = dA_j * g
        if DELTA_SOFTPLUS:
            ddt = ddt * tl.where(pre <= 20.0, _sigmoid(pre, FAST_MATH), 1.0)
        ddt = tl.where(mask_ld, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=0)
        tl.store(du_ptr + out_base + offs_l[:, None], du.to(du_ptr.dtype.element_ty), mask=mask_ld)
        tl.store(ddelta_ptr + out_base + offs_l[:, None], ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_ld)
    # q is now exp(dt_0 A) g_0 = dL/d(initial_state).
    dn_off = pid_b * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate
    tl.store(dh0_ptr + dn_off, q, mask=mask_nd)
    tl.store(dA_ptr + dn_off, dA_acc, mask=mask_nd)
    if not B_VARYING:
        tl.store(dB_ptr + dn_off, dB_acc, mask=mask_nd)
    if not C_VARYING:
        tl.store(dC_ptr + dn_off, dC_acc, mask=mask_nd)
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


# ---------------------------------------------------------------------------------------------
# Launchers.


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two <= cap dividing n."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def fwd_block_sizes(dim: int, dstate: int, dpg: int | None) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps) of the forward by shape. One warp per program: with 16 states the
    [BLOCK_N, BLOCK_D] state tile puts 1-2 states' lanes per channel, and the [BLOCK_L, BLOCK_D] input
    tiles keep their time steps inside a thread (BLOCK_L 8: one 16-byte bf16 vector), so a step's column
    is a register, not a shuffle. dpg is the channels per B/C group, which BLOCK_D must divide (None when
    B and C are time-invariant)."""
    BLOCK_N = block_n(dstate)
    BLOCK_D = max(1, min(256 // BLOCK_N, triton.next_power_of_2(dim)))
    if dpg is not None:
        BLOCK_D = _pow2_divisor(dpg, BLOCK_D)
    return BLOCK_D, 8, 1


def bwd_block_sizes(dim: int, dstate: int, dpg: int | None) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps) of the backward; its BLOCK_L is also the interval at which the
    forward saves states (a multiple of the forward's BLOCK_L), so it depends on nothing else."""
    BLOCK_N = block_n(dstate)
    BLOCK_D = max(1, min(256 // BLOCK_N, triton.next_power_of_2(dim)))
    if dpg is not None:
        BLOCK_D = _pow2_divisor(dpg, BLOCK_D)
    return BLOCK_D, 8, 1


def block_n(dstate: int) -> int:
    return max(triton.next_power_of_2(dstate), 2)


_ROWS_AHEAD = 4  # the PREFETCH variants read B/C rows up to 4 steps past either end of the padded copy


def _bc_layout(M: Tensor, dim: int, BLOCK_N: int, seqlen_pad: int):
    """(varying, channels per group, ngroups, tensor for the kernel, strides (b, group-or-channel, l, n)).
    Varying B/C go time-major, fp32, zero-padded to (batch, ngroups, seqlen_pad, BLOCK_N): a step's row
    is then one unmasked vector load (a copy of 2 * batch * ngroups * seqlen * dstate values: small)."""
    if M.dim() == 2:  # (dim, dstate): indexed per channel, no time stride
        return False, 1, dim, M, (0, M.stride(0), 0, M.stride(1))
    batch, dstate, seqlen = M.shape[0], M.shape[-2], M.shape[-1]
    Mg = M if M.dim() == 4 else M.unsqueeze(1)
    ngroups = Mg.shape[1]
    Mt = Mg.new_zeros((batch, ngroups, _ROWS_AHEAD + seqlen_pad + _ROWS_AHEAD, BLOCK_N), dtype=torch.float32)
    Mt[:, :, _ROWS_AHEAD : _ROWS_AHEAD + seqlen, :dstate] = Mg.transpose(-1, -2)
    Mt = Mt[:, :, _ROWS_AHEAD:]  # row 0 is step 0; the zero rows before it are addressable
    return True, dim // ngroups, ngroups, Mt, Mt.stride()


def _common_dpg(dim: int, B: Tensor, C: Tensor) -> int | None:
    """Channels per group that a channel block must not straddle (None: B and C time-invariant)."""
    dpgs = [dim // (M.shape[1] if M.dim() == 4 else 1) for M in (B, C) if M.dim() > 2]
    return math.gcd(*dpgs) if dpgs else None


def _check_config(BLOCK_D: int, dpg: int | None, state_chunk: int, BLOCK_L: int) -> None:
    # A channel block must lie inside one B/C group (one B/C tile per chunk, one dB/dC row per program).
    if dpg is not None and dpg % BLOCK_D != 0:
        raise ValueError(f"BLOCK_D = {BLOCK_D} must divide the channels per B/C group, {dpg}")
    if state_chunk % BLOCK_L != 0:
        raise ValueError(f"the forward's BLOCK_L = {BLOCK_L} must divide the saved-state interval {state_chunk}")


def _strides1(t: Tensor | None) -> tuple:
    return (0,) if t is None else (t.stride(0),)


def _strides3(t: Tensor | None) -> tuple:
    return (0, 0, 0) if t is None else tuple(t.stride())


def selective_scan_fwd(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_states, *, wrap: bool,
    config=None, state_chunk: int | None = None, prefetch: bool = False,
):
    """Forward launch: out (u's dtype), last_state (fp32), chunk_states (fp32, the state entering every
    ``state_chunk`` steps, then the last state; empty unless save_states). ``config`` = (BLOCK_D, BLOCK_L,
    num_warps) overrides the heuristic and ``state_chunk`` the backward's BLOCK_L (tests, benchmarks).
    ``prefetch`` selects the hand-pipelined variant (B/C rows 4 steps ahead, u/delta/z one block ahead;
    not yet run on a GPU, see the module docstring)."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    dpg = _common_dpg(dim, B, C)
    BLOCK_D, BLOCK_L, num_warps = fwd_block_sizes(dim, dstate, dpg) if config is None else config
    STATE_CHUNK = bwd_block_sizes(dim, dstate, dpg)[1] if state_chunk is None else state_chunk
    BLOCK_L = min(BLOCK_L, STATE_CHUNK)
    _check_config(BLOCK_D, dpg, STATE_CHUNK, BLOCK_L)
    BLOCK_N = block_n(dstate)
    seqlen_pad = (seqlen + STATE_CHUNK - 1) // STATE_CHUNK * STATE_CHUNK
    B_lay, C_lay = _bc_layout(B, dim, BLOCK_N, seqlen_pad), _bc_layout(C, dim, BLOCK_N, seqlen_pad)
    out = torch.empty_like(u)
    last_state = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    nchunks = (seqlen + STATE_CHUNK - 1) // STATE_CHUNK
    shape = (batch, nchunks + 1, dim, dstate) if save_states else (0,)
    chunk_states = torch.empty(shape, device=u.device, dtype=torch.float32)
    grid = (triton.cdiv(dim, BLOCK_D), batch)
    launcher(_selective_scan_fwd_kernel, wrap)[grid](
        u, delta, A, B_lay[3], C_lay[3],
        u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
        u if initial_state is None else initial_state,
        out, last_state, chunk_states if save_states else last_state,
        dim, seqlen, dstate, B_lay[1], C_lay[1],
        *u.stride(), *delta.stride(), *A.stride(), *B_lay[4], *C_lay[4],
        *_strides1(D), *_strides3(z), *_strides1(delta_bias), *_strides3(initial_state), *out.stride(),
        DELTA_SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_H0=initial_state is not None, SAVE_STATES=save_states, B_VARYING=B_lay[0], C_VARYING=C_lay[0],
        BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L, STATE_CHUNK=STATE_CHUNK,
        FAST_MATH=u.device.type == "cuda", PREFETCH=prefetch, num_warps=num_warps,
    )  # fmt: skip
    return out, last_state, chunk_states


def selective_scan_bwd(
    dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_states,
    *, wrap: bool, config=None, prefetch: bool = False,
):
    """Backward launch; returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state, each in its
    input's dtype (empty for an absent input). ``config`` = (BLOCK_D, BLOCK_L, num_warps) overrides the
    heuristic; its BLOCK_L must be the ``state_chunk`` of the forward that saved ``chunk_states``."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    dpg = _common_dpg(dim, B, C)
    BLOCK_D, BLOCK_L, num_warps = bwd_block_sizes(dim, dstate, dpg) if config is None else config
    _check_config(BLOCK_D, dpg, BLOCK_L, BLOCK_L)
    BLOCK_N = block_n(dstate)
    nchunks = (seqlen + BLOCK_L - 1) // BLOCK_L
    seqlen_pad = nchunks * BLOCK_L
    if chunk_states.numel() == 0:  # the forward ran without saving: recompute the chunk-start states
        _, _, chunk_states = selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, True, wrap=wrap, state_chunk=BLOCK_L,
            prefetch=prefetch,
        )
    torch._check(chunk_states.shape[1] == nchunks + 1, lambda: "chunk_states do not match the kernel's chunk size")
    B_lay, C_lay = _bc_layout(B, dim, BLOCK_N, seqlen_pad), _bc_layout(C, dim, BLOCK_N, seqlen_pad)
    f32 = dict(device=u.device, dtype=torch.float32)
    du, ddelta = torch.empty(u.shape, device=u.device, dtype=u.dtype), torch.empty(u.shape, device=u.device, dtype=delta.dtype)
    dz = torch.empty(u.shape, device=u.device, dtype=z.dtype) if z is not None else du
    dA = torch.empty(batch, dim, dstate, **f32)

    def d_bc(lay):  # varying: time-major padded fp32, added to atomically; else per-row partials
        return torch.zeros(batch, lay[2], seqlen_pad, BLOCK_N, **f32) if lay[0] else torch.empty(batch, dim, dstate, **f32)

    dB, dC = d_bc(B_lay), d_bc(C_lay)
    dD, dbias = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    dh0 = torch.empty(batch, dim, dstate, **f32)
    grid = (triton.cdiv(dim, BLOCK_D), batch)
    launcher(_selective_scan_bwd_kernel, wrap)[grid](
        u, delta, A, B_lay[3], C_lay[3], u if D is None else D, u if z is None else z,
        u if delta_bias is None else delta_bias, dout, dlast_state, chunk_states,
        du, ddelta, dz, dA, dB, dC, dD, dbias, dh0,
        dim, seqlen, dstate, B_lay[1], C_lay[1], B_lay[2], C_lay[2],
        *u.stride(), *delta.stride(), *A.stride(), *B_lay[4], *C_lay[4],
        *_strides1(D), *_strides3(z), *_strides1(delta_bias), *dout.stride(), *dlast_state.stride(),
        DELTA_SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        B_VARYING=B_lay[0], C_VARYING=C_lay[0],
        BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L, FAST_MATH=u.device.type == "cuda",
        PREFETCH=prefetch, num_warps=num_warps,
    )  # fmt: skip

    def empty():  # one per absent gradient: outputs of an op may not alias each other
        return u.new_empty(0)

    def bc_grad(M, dM):  # back to M's layout and dtype
        if M.dim() == 2:
            return dM.sum(0).to(M.dtype)
        dM = dM[:, :, :seqlen, :dstate].transpose(-1, -2)
        return (dM.squeeze(1) if M.dim() == 3 else dM).to(M.dtype)

    return (
        du, ddelta, dA.sum(0).to(A.dtype), bc_grad(B, dB), bc_grad(C, dC),
        empty() if D is None else dD.sum(0).to(D.dtype), dz if z is not None else empty(),
        empty() if delta_bias is None else dbias.sum(0).to(delta_bias.dtype),
        empty() if initial_state is None else dh0.to(initial_state.dtype),
    )  # fmt: skip
