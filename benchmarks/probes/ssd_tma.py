"""The fused cumsum + state passing, chunk_scan_fwd and chunk_scan_bwd_dx with their tiles loaded and stored through
Hopper's tensor memory accelerator (Triton tensor descriptors built on the host, and variants building them on the
device) instead of pointer arithmetic. ncu (session 30) found dx issue-bound
at 251 registers and chunk_scan at 128 with DRAM 47% busy; a descriptor load is one instruction for a whole tile,
with no address tensors held in registers, and lands in shared memory where the dots read it.

Only the whole-tile case (every chunk full, headdim and dstate equal to their blocks, no seq_idx: ssd_triton's
EVEN case) and 16-bit inputs. For each benchmark shape: each variant's largest difference from the default kernel's
outputs relative to the largest value, then CUDA-graph medians, default and variants alternating over two rounds.

    python -m benchmarks.probes.ssd_tma [--out results.json] [--check]   # --check: small shapes, outputs only
    python -m benchmarks.probes.ssd_tma --inductor-check                # device-built descriptors, traced

Session 34 built these into the op for untraced launches (commit 9607f59 has the code, its tests and an --op mode
timing the op with them on and off); ssd_triton's module docstring has what was measured and why they went.
"""

from __future__ import annotations

import argparse

import torch

from mamba_compile.ops import ssd_triton as kt
from mamba_compile.ops._triton import tl, triton


@triton.jit
def _scan_fwd_tma_kernel(
    x_desc, xt_desc, c_desc, cb_desc, prev_desc, z_desc, out_desc, pre_desc,
    dtp_ptr, dacs_ptr, d_ptr,
    seqlen, nheads, ngroups, heads_per_group,
    s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
    CHUNK: tl.constexpr, KEEP_PRE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """chunk_scan_fwd's EVEN case with HAS_CB, HAS_D and HAS_Z; grid (row tiles, nheads, batch * nchunks)."""
    _scan_fwd_body(x_desc, xt_desc, c_desc, cb_desc, prev_desc, z_desc, out_desc, pre_desc, dtp_ptr, dacs_ptr, d_ptr,
                   seqlen, nheads, ngroups, heads_per_group, s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
                   CHUNK, KEEP_PRE, BLOCK_T, BLOCK_S, BLOCK_P, BLOCK_N)


@triton.jit
def _scan_fwd_dev_kernel(
    x_ptr, c_ptr, cb_ptr, prev_ptr, z_ptr, out_ptr, pre_ptr, dtp_ptr, dacs_ptr, d_ptr,
    rows, ld_x, ld_c, ld_z, rows_cb, rows_prev,
    seqlen, nheads, ngroups, heads_per_group,
    s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
    CHUNK: tl.constexpr, KEEP_PRE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """_scan_fwd_tma_kernel with its descriptors built on the device (tl.make_tensor_descriptor, each program its
    own in global scratch), from pointers: what a traced launch can take."""
    hp = nheads * BLOCK_P
    x_desc = tl.make_tensor_descriptor(x_ptr, [rows, hp], [ld_x, 1], [BLOCK_S, BLOCK_P])
    xt_desc = tl.make_tensor_descriptor(x_ptr, [rows, hp], [ld_x, 1], [BLOCK_T, BLOCK_P])
    c_desc = tl.make_tensor_descriptor(c_ptr, [rows, ngroups * BLOCK_N], [ld_c, 1], [BLOCK_T, BLOCK_N])
    cb_desc = tl.make_tensor_descriptor(cb_ptr, [rows_cb, CHUNK], [CHUNK, 1], [BLOCK_T, BLOCK_S])
    prev_desc = tl.make_tensor_descriptor(prev_ptr, [rows_prev, BLOCK_N], [BLOCK_N, 1], [BLOCK_P, BLOCK_N])
    z_desc = tl.make_tensor_descriptor(z_ptr, [rows, hp], [ld_z, 1], [BLOCK_T, BLOCK_P])
    out_desc = tl.make_tensor_descriptor(out_ptr, [rows, hp], [hp, 1], [BLOCK_T, BLOCK_P])
    pre_desc = tl.make_tensor_descriptor(pre_ptr, [rows, hp], [hp, 1], [BLOCK_T, BLOCK_P])
    _scan_fwd_body(x_desc, xt_desc, c_desc, cb_desc, prev_desc, z_desc, out_desc, pre_desc, dtp_ptr, dacs_ptr, d_ptr,
                   seqlen, nheads, ngroups, heads_per_group, s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
                   CHUNK, KEEP_PRE, BLOCK_T, BLOCK_S, BLOCK_P, BLOCK_N)


@triton.jit
def _scan_fwd_body(
    x_desc, xt_desc, c_desc, cb_desc, prev_desc, z_desc, out_desc, pre_desc,
    dtp_ptr, dacs_ptr, d_ptr,
    seqlen, nheads, ngroups, heads_per_group,
    s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
    CHUNK: tl.constexpr, KEEP_PRE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_t, pid_h, pid_bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    ntiles = tl.num_programs(0)
    nchunks = seqlen // CHUNK
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    t0 = (ntiles - 1 - pid_t) * BLOCK_T
    g = pid_h // heads_per_group
    row0 = pid_b * seqlen + pid_c * CHUNK  # the chunk's first row of (batch * seqlen, ...) views
    col_x = pid_h * BLOCK_P
    a_ptr = dacs_ptr + pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    t_ptr = dtp_ptr + pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    offs_t = t0 + tl.arange(0, BLOCK_T)
    a_t = tl.load(a_ptr + offs_t * s_a_l)
    c_t = c_desc.load([row0 + t0, g * BLOCK_N])
    s_pn = prev_desc.load([(pid_bc * nheads + pid_h) * BLOCK_P, 0])  # (p, n) of the state entering the chunk
    acc = tl.dot(c_t, tl.trans(s_pn)) * tl.exp(a_t)[:, None]
    cb_row = (pid_bc * ngroups + g) * CHUNK + t0
    for s0 in range(0, t0 + BLOCK_T, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        cb = cb_desc.load([cb_row, s0])
        a_s = tl.load(a_ptr + offs_s * s_a_l)
        dt_s = tl.load(t_ptr + offs_s * s_a_l)
        keep = offs_t[:, None] >= offs_s[None, :]
        cb = tl.where(keep, cb * tl.exp(a_t[:, None] - a_s[None, :]) * dt_s[None, :], 0.0)
        x_s = x_desc.load([row0 + s0, col_x])
        acc += tl.dot(cb.to(x_s.dtype), x_s)
    x_t = xt_desc.load([row0 + t0, col_x])
    d = tl.load(d_ptr + pid_h * s_d_h + tl.arange(0, BLOCK_P) * s_d_p).to(tl.float32)
    acc += x_t.to(tl.float32) * d[None, :]
    if KEEP_PRE:
        pre_desc.store([row0 + t0, col_x], acc.to(pre_desc.dtype))
    z = z_desc.load([row0 + t0, col_x]).to(tl.float32)
    out_desc.store([row0 + t0, col_x], (acc * z * tl.sigmoid(z)).to(out_desc.dtype))


def _rows(t):
    """A (batch * seqlen, heads * last) view of a (batch, seqlen, heads, last) tensor."""
    return t.reshape(t.shape[0] * t.shape[1], t.shape[2] * t.shape[3])


BUILDS: dict = {}  # variant label -> (registers, spilled bytes, shared memory bytes) of its last launch


def _note_build(label, compiled) -> None:
    if label and compiled is not None and hasattr(compiled, "n_regs"):
        BUILDS[label] = (compiled.n_regs, compiled.n_spills, compiled.metadata.shared)


def _cap(maxnreg):
    return {"maxnreg": maxnreg} if maxnreg else {}


def scan_fwd_tma(x, B, C, dtp, dA_cs, prev, D, z, cb, *, pre_gate=None, block_t=64, block_s=32, num_warps=4,
                 num_stages=2, maxnreg=None, label=None, device_desc=False):
    from triton.tools.tensor_descriptor import TensorDescriptor as TD

    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk = dtp.shape
    assert seqlen % chunk == 0 and headdim == kt._pow2(headdim) and dstate == kt._pow2(dstate)
    out = torch.empty_like(x)
    pre = pre_gate if pre_gate is not None else out
    x2, c2, z2, o2, p2 = _rows(x), _rows(C), _rows(z), _rows(out), _rows(pre)
    cb2 = cb.reshape(-1, chunk)
    prev2 = prev.reshape(-1, dstate)
    ntiles = chunk // block_t
    if device_desc:
        compiled = _scan_fwd_dev_kernel[(ntiles, nheads, batch * nchunks)](
            x, C, cb, prev, z, out, pre, dtp, dA_cs, D, batch * seqlen, x2.stride(0), c2.stride(0), z2.stride(0),
            cb2.shape[0], prev2.shape[0], seqlen, nheads, ngroups, nheads // ngroups,
            *dtp.stride(), *kt._d_strides(D),
            CHUNK=chunk, KEEP_PRE=pre_gate is not None, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_P=headdim,
            BLOCK_N=dstate, num_warps=num_warps, num_stages=num_stages, **_cap(maxnreg),
        )
        _note_build(label, compiled)
        return out
    compiled = _scan_fwd_tma_kernel[(ntiles, nheads, batch * nchunks)](
        TD.from_tensor(x2, [block_s, headdim]), TD.from_tensor(x2, [block_t, headdim]),
        TD.from_tensor(c2, [block_t, dstate]), TD.from_tensor(cb2, [block_t, block_s]),
        TD.from_tensor(prev2, [headdim, dstate]), TD.from_tensor(z2, [block_t, headdim]),
        TD.from_tensor(o2, [block_t, headdim]), TD.from_tensor(p2, [block_t, headdim]),
        dtp, dA_cs, D, seqlen, nheads, ngroups, nheads // ngroups,
        *dtp.stride(), *kt._d_strides(D),
        CHUNK=chunk, KEEP_PRE=pre_gate is not None, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_P=headdim,
        BLOCK_N=dstate, num_warps=num_warps, num_stages=num_stages, **_cap(maxnreg),
    )
    _note_build(label, compiled)
    return out


@triton.jit
def _dx_tma_kernel(
    x_desc, b_desc, c_desc, dend_desc, dy_desc, dx_desc,
    dtp_ptr, dacs_ptr, d_ptr, ddt_ptr, col_ptr, colstate_ptr, row_ptr, dd_ptr,
    seqlen, nheads, heads_per_group,
    s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p, s_r_b, s_r_h, s_r_c, s_r_k, s_r_l, s_dd_r, s_dd_h, s_dd_k,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """chunk_scan_bwd_dx's EVEN case with HAS_D, without seq_idx or dx_extra; grid (row tiles, nheads,
    batch * nchunks)."""
    _dx_body(x_desc, b_desc, c_desc, dend_desc, dy_desc, dx_desc, dtp_ptr, dacs_ptr, d_ptr, ddt_ptr, col_ptr,
             colstate_ptr, row_ptr, dd_ptr, seqlen, nheads, heads_per_group, s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
             s_r_b, s_r_h, s_r_c, s_r_k, s_r_l, s_dd_r, s_dd_h, s_dd_k, CHUNK, BLOCK_T, BLOCK_P, BLOCK_N)


@triton.jit
def _dx_dev_kernel(
    x_ptr, b_ptr, c_ptr, dend_ptr, dy_ptr, dx_ptr,
    dtp_ptr, dacs_ptr, d_ptr, ddt_ptr, col_ptr, colstate_ptr, row_ptr, dd_ptr,
    rows, ld_x, ld_b, ld_c, ld_dy, rows_dend, ngroups,
    seqlen, nheads, heads_per_group,
    s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p, s_r_b, s_r_h, s_r_c, s_r_k, s_r_l, s_dd_r, s_dd_h, s_dd_k,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """_dx_tma_kernel with its descriptors built on the device."""
    hp = nheads * BLOCK_P
    gn = ngroups * BLOCK_N
    x_desc = tl.make_tensor_descriptor(x_ptr, [rows, hp], [ld_x, 1], [BLOCK_T, BLOCK_P])
    b_desc = tl.make_tensor_descriptor(b_ptr, [rows, gn], [ld_b, 1], [BLOCK_T, BLOCK_N])
    c_desc = tl.make_tensor_descriptor(c_ptr, [rows, gn], [ld_c, 1], [BLOCK_T, BLOCK_N])
    dend_desc = tl.make_tensor_descriptor(dend_ptr, [rows_dend, BLOCK_N], [BLOCK_N, 1], [BLOCK_P, BLOCK_N])
    dy_desc = tl.make_tensor_descriptor(dy_ptr, [rows, hp], [ld_dy, 1], [BLOCK_T, BLOCK_P])
    dx_desc = tl.make_tensor_descriptor(dx_ptr, [rows, hp], [hp, 1], [BLOCK_T, BLOCK_P])
    _dx_body(x_desc, b_desc, c_desc, dend_desc, dy_desc, dx_desc, dtp_ptr, dacs_ptr, d_ptr, ddt_ptr, col_ptr,
             colstate_ptr, row_ptr, dd_ptr, seqlen, nheads, heads_per_group, s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p,
             s_r_b, s_r_h, s_r_c, s_r_k, s_r_l, s_dd_r, s_dd_h, s_dd_k, CHUNK, BLOCK_T, BLOCK_P, BLOCK_N)


@triton.jit
def _dx_body(
    x_desc, b_desc, c_desc, dend_desc, dy_desc, dx_desc,
    dtp_ptr, dacs_ptr, d_ptr, ddt_ptr, col_ptr, colstate_ptr, row_ptr, dd_ptr,
    seqlen, nheads, heads_per_group,
    s_a_b, s_a_h, s_a_c, s_a_l, s_d_h, s_d_p, s_r_b, s_r_h, s_r_c, s_r_k, s_r_l, s_dd_r, s_dd_h, s_dd_k,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_s, pid_h, pid_bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nchunks = seqlen // CHUNK
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    s0 = pid_s * BLOCK_T
    g = pid_h // heads_per_group
    row0 = pid_b * seqlen + pid_c * CHUNK
    col_x = pid_h * BLOCK_P
    col_b = g * BLOCK_N
    a_off = pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    offs_s = s0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    a_s = tl.load(dacs_ptr + a_off + offs_s * s_a_l)
    dt_s = tl.load(dtp_ptr + a_off + offs_s * s_a_l)
    a_last = tl.load(dacs_ptr + a_off + (CHUNK - 1) * s_a_l)
    x_s = x_desc.load([row0 + s0, col_x])
    b_s = b_desc.load([row0 + s0, col_b])
    e_pn = dend_desc.load([(pid_bc * nheads + pid_h) * BLOCK_P, 0])
    acc = tl.dot(b_s, tl.trans(e_pn)) * tl.exp(a_last - a_s)[:, None]
    x32 = x_s.to(tl.float32)
    tl.store(colstate_ptr + a_off + offs_s * s_a_l, dt_s * tl.sum(acc * x32, axis=1))
    col = tl.zeros((BLOCK_T,), dtype=tl.float32)
    rp = row_ptr + pid_b * s_r_b + pid_h * s_r_h + pid_c * s_r_c + pid_s * s_r_k
    for t0 in range(s0, CHUNK, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        c_t = c_desc.load([row0 + t0, col_b])
        cb = tl.dot(b_s, tl.trans(c_t))
        a_t = tl.load(dacs_ptr + a_off + offs_t * s_a_l)
        keep = offs_t[None, :] >= offs_s[:, None]
        cb = tl.where(keep, cb * tl.exp(a_t[None, :] - a_s[:, None]), 0.0)
        dy_t = dy_desc.load([row0 + t0, col_x])
        acc += tl.dot(cb.to(dy_t.dtype), dy_t)
        pair = cb * dt_s[:, None] * tl.dot(x_s, tl.trans(dy_t))
        col += tl.sum(pair, axis=1)
        tl.store(rp + offs_t * s_r_l, tl.sum(pair, axis=0))
    tl.store(col_ptr + a_off + offs_s * s_a_l, col)
    tl.store(ddt_ptr + a_off + offs_s * s_a_l, tl.sum(acc * x32, axis=1))
    dx = acc * dt_s[:, None]
    d = tl.load(d_ptr + pid_h * s_d_h + offs_p * s_d_p).to(tl.float32)
    dy_s = dy_desc.load([row0 + s0, col_x]).to(tl.float32)
    dx += dy_s * d[None, :]
    tl.store(dd_ptr + pid_bc * s_dd_r + pid_h * s_dd_h + pid_s * s_dd_k + offs_p, tl.sum(dy_s * x32, axis=0))
    dx_desc.store([row0 + s0, col_x], dx.to(dx_desc.dtype))


def dx_tma(x, B, C, dtp, dA_cs, dy, dend, D, *, block_t=64, num_warps=4, num_stages=2, maxnreg=None, label=None,
           device_desc=False):
    """chunk_scan_bwd_dx's outputs, in its layouts."""
    from triton.tools.tensor_descriptor import TensorDescriptor as TD

    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk = dtp.shape
    nblocks = chunk // block_t
    dx = torch.empty(batch, seqlen, nheads, headdim, device=x.device, dtype=x.dtype)
    ddt, col, colstate = (torch.empty_like(dA_cs) for _ in range(3))
    row = torch.empty(batch, nheads, nchunks, nblocks, chunk, device=x.device, dtype=torch.float32)
    dd = torch.empty(batch * nchunks, nblocks, nheads, headdim, device=x.device, dtype=torch.float32)
    x2, b2, c2, dy2, dx2 = _rows(x), _rows(B), _rows(C), _rows(dy), _rows(dx)
    if device_desc:
        compiled = _dx_dev_kernel[(nblocks, nheads, batch * nchunks)](
            x, B, C, dend, dy, dx, dtp, dA_cs, D, ddt, col, colstate, row, dd,
            batch * seqlen, x2.stride(0), b2.stride(0), c2.stride(0), dy2.stride(0), dend.numel() // dstate, ngroups,
            seqlen, nheads, nheads // ngroups,
            *dtp.stride(), *kt._d_strides(D), *row.stride(), dd.stride(0), dd.stride(2), dd.stride(1),
            CHUNK=chunk, BLOCK_T=block_t, BLOCK_P=headdim, BLOCK_N=dstate, num_warps=num_warps,
            num_stages=num_stages, **_cap(maxnreg),
        )
        _note_build(label, compiled)
        return dx, ddt, col, colstate, row, dd.view(-1, nheads, headdim)
    compiled = _dx_tma_kernel[(nblocks, nheads, batch * nchunks)](
        TD.from_tensor(x2, [block_t, headdim]), TD.from_tensor(b2, [block_t, dstate]),
        TD.from_tensor(c2, [block_t, dstate]), TD.from_tensor(dend.reshape(-1, dstate), [headdim, dstate]),
        TD.from_tensor(dy2, [block_t, headdim]), TD.from_tensor(dx2, [block_t, headdim]),
        dtp, dA_cs, D, ddt, col, colstate, row, dd, seqlen, nheads, nheads // ngroups,
        *dtp.stride(), *kt._d_strides(D), *row.stride(), dd.stride(0), dd.stride(2), dd.stride(1),
        CHUNK=chunk, BLOCK_T=block_t, BLOCK_P=headdim, BLOCK_N=dstate, num_warps=num_warps, num_stages=num_stages,
        **_cap(maxnreg),
    )
    _note_build(label, compiled)
    return dx, ddt, col, colstate, row, dd.view(-1, nheads, headdim)


@triton.jit
def _passing_fwd_tma_kernel(
    x_desc, b_desc, prev_desc, dt_ptr, A_ptr, bias_ptr, dtp_ptr, dacs_ptr, final_ptr,
    seqlen, nchunks, nheads, heads_per_group,
    s_dt_b, s_dt_l, s_dt_h, s_a_b, s_a_h, s_a_c, s_a_l, s_f_b, s_f_h, s_f_p, s_f_n,
    CHUNK: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, HEADDIM: tl.constexpr, DSTATE: tl.constexpr,
    DEV: tl.constexpr = False, ld_x=0, ld_b=0, ngroups=1,
):
    """chunk_cumsum_state_passing_fwd's whole-chunk case with a bias and softplus, no initial states, seq_idx or
    limit; grid (batch, nheads, state blocks). DEV: x_desc, b_desc and prev_desc are pointers, the descriptors built
    here."""
    if DEV:
        rows = tl.num_programs(0) * seqlen
        x_desc = tl.make_tensor_descriptor(x_desc, [rows, nheads * HEADDIM], [ld_x, 1], [CHUNK, BLOCK_P])
        b_desc = tl.make_tensor_descriptor(b_desc, [rows, ngroups * DSTATE], [ld_b, 1], [CHUNK, BLOCK_N])
        prev_desc = tl.make_tensor_descriptor(prev_desc, [rows // CHUNK * nheads * HEADDIM, DSTATE], [DSTATE, 1],
                                              [BLOCK_P, BLOCK_N])
    pid_b, pid_h, pid_pn = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    npb = HEADDIM // BLOCK_P
    p0 = (pid_pn % npb) * BLOCK_P
    n0 = (pid_pn // npb) * BLOCK_N
    col_x = pid_h * HEADDIM + p0
    col_b = (pid_h // heads_per_group) * DSTATE + n0
    A = tl.load(A_ptr + pid_h).to(tl.float32)
    bias = tl.load(bias_ptr + pid_h).to(tl.float32)
    offs_k = tl.arange(0, CHUNK)
    dt_ptr += pid_b * s_dt_b + pid_h * s_dt_h
    a_ptr = dacs_ptr + pid_b * s_a_b + pid_h * s_a_h
    t_ptr = dtp_ptr + pid_b * s_a_b + pid_h * s_a_h
    first = offs_k < tl.where(pid_pn == 0, CHUNK, 0)
    run = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for c in range(nchunks):
        row = pid_b * seqlen + c * CHUNK
        dtv = tl.load(dt_ptr + (c * CHUNK + offs_k) * s_dt_l).to(tl.float32) + bias
        dtv = tl.where(dtv <= 20.0, tl.log(1.0 + tl.exp(dtv)), dtv)
        a = tl.cumsum(dtv * A, axis=0)
        tl.store(t_ptr + c * s_a_c + offs_k * s_a_l, dtv, mask=first)
        tl.store(a_ptr + c * s_a_c + offs_k * s_a_l, a, mask=first)
        a_last = tl.sum(tl.where(offs_k == CHUNK - 1, a, 0.0))
        w = tl.exp(a_last - a) * dtv
        x_t = x_desc.load([row, col_x])  # (t, p)
        b_t = b_desc.load([row, col_b]).to(tl.float32)  # (t, n)
        acc = tl.dot(tl.trans(x_t), (b_t * w[:, None]).to(x_t.dtype))
        prev_desc.store([((pid_b * nchunks + c) * nheads + pid_h) * HEADDIM + p0, n0], run.to(prev_desc.dtype))
        run = tl.exp(a_last) * run + acc
    offs_p = p0 + tl.arange(0, BLOCK_P)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    tl.store(final_ptr + pid_b * s_f_b + pid_h * s_f_h + offs_p[:, None] * s_f_p + offs_n[None, :] * s_f_n, run)


def passing_fwd_tma(x, B, dt, A, dt_bias, chunk, *, block_n=64, num_warps=4, num_stages=2, maxnreg=None, label=None,
                    device_desc=False):
    """(dtp, dA_cs, prev, final) as chunk_cumsum_state_passing_fwd returns them (softplus, prev in B's dtype)."""
    from triton.tools.tensor_descriptor import TensorDescriptor as TD

    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    nchunks = seqlen // chunk
    dtp = torch.empty(batch, nheads, nchunks, chunk, device=x.device, dtype=torch.float32)
    dA_cs = torch.empty_like(dtp)
    prev = torch.empty(batch, nchunks, nheads, headdim, dstate, device=x.device, dtype=B.dtype)
    final = torch.empty(batch, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
    block_p, block_n = headdim, min(block_n, dstate)
    if device_desc:
        descs, extra = (x, B, prev), dict(DEV=True, ld_x=_rows(x).stride(0), ld_b=_rows(B).stride(0), ngroups=ngroups)
    else:
        descs = (TD.from_tensor(_rows(x), [chunk, block_p]), TD.from_tensor(_rows(B), [chunk, block_n]),
                 TD.from_tensor(prev.reshape(-1, dstate), [block_p, block_n]))
        extra = {}
    compiled = _passing_fwd_tma_kernel[(batch, nheads, dstate // block_n)](
        *descs, dt, A, dt_bias, dtp, dA_cs, final, seqlen, nchunks, nheads, nheads // ngroups,
        *dt.stride(), *dtp.stride(), *final.stride(),
        CHUNK=chunk, BLOCK_P=block_p, BLOCK_N=block_n, HEADDIM=headdim, DSTATE=dstate,
        num_warps=num_warps, num_stages=num_stages, **extra, **_cap(maxnreg),
    )
    _note_build(label, compiled)
    return [dtp, dA_cs, prev, final]


def _set_allocator(device) -> None:
    """Global scratch for the device-built descriptors (each program writes its own)."""
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=device))


def _rel(a, b, mask=None):
    a, b = a.float(), b.float()
    if mask is not None:
        a, b = a[mask], b[mask]
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _row_mask(row, block_t):
    """row's written positions: row tile k's from position k * block_t on."""
    k = torch.arange(row.shape[3], device=row.device)[:, None]
    pos = torch.arange(row.shape[4], device=row.device)[None, :]
    return (pos >= k * block_t).expand_as(row)


def compare(outs, want, block_t):
    """The largest relative difference over a kernel's outputs; dx's partial row sums (5-d, its fifth output) only
    where they are written."""
    return max(_rel(a, b, _row_mask(b, block_t) if i == 4 and b.dim() == 5 else None)
               for i, (a, b) in enumerate(zip(outs, want)))


def _inputs(shape, chunk, device):
    """Random bf16 inputs at ``shape`` = (batch, seqlen, nheads, headdim, ngroups, dstate) and the forward's
    chunked dt, states, C B^T and a random dy with its state gradients, as the op makes them."""
    from benchmarks.bench_ssd import make_inputs
    from mamba_compile.ops import ssd

    t = make_inputs(*shape, device=device)
    x, B, C, D, z = t["x"], t["B"], t["C"], t["D"], t["z"]
    dtp, dA_cs = kt.chunk_cumsum_fwd(t["dt"], t["A"], t["dt_bias"], chunk, True, 0.0, ssd._OPEN_BOUND, False,
                                     wrap=False)
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    cb = kt.bmm_cb_fwd(C, B, chunk, block_t=min(kt.BLOCK_T_MAX, chunk), wrap=False)
    dy = torch.randn_like(x)
    dend, _, _ = kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, None, None, False, dend_dtype=C.dtype, wrap=False)
    return x, B, C, D, z, dtp, dA_cs, prev, cb, dy, dend, (t["dt"], t["A"], t["dt_bias"])


def kernels(inp, block_t):
    """name -> (the default launch, {variant label: launch}), each launch returning a list of outputs."""
    from mamba_compile.ops import ssd

    x, B, C, D, z, dtp, dA_cs, prev, cb, dy, dend, (dt, A, bias) = inp
    chunk = dtp.shape[3]
    passing = {}
    # (state block's dstate width, warps, stages)
    for bn, nw, ns, dev in ((64, 4, 2, False), (64, 4, 2, True)):
        label = f"tma n{bn} w{nw} st{ns}" + (" device" if dev else "")
        passing[label] = lambda bn=bn, nw=nw, ns=ns, dev=dev, label=label: passing_fwd_tma(
            x, B, dt, A, bias, chunk, block_n=bn, num_warps=nw, num_stages=ns, label=label, device_desc=dev)
    pre = torch.empty_like(x)
    scan = {}
    # (row tile, column tile, warps, stages, register cap)
    for bt, bs, nw, ns, cap, dev in ((64, 32, 4, 2, None, False), (64, 32, 4, 2, None, True)):
        label = f"tma t{bt} s{bs} w{nw} st{ns}" + (f" cap{cap}" if cap else "") + (" device" if dev else "")
        bt, bs = min(bt, x.shape[1], dtp.shape[3]), min(bs, block_t)
        scan[label] = lambda bt=bt, bs=bs, nw=nw, ns=ns, cap=cap, dev=dev, label=label: [scan_fwd_tma(
            x, B, C, dtp, dA_cs, prev, D, z, cb, pre_gate=pre, block_t=bt, block_s=bs, num_warps=nw, num_stages=ns,
            maxnreg=cap, label=label, device_desc=dev), pre]
    dx = {}
    # (warps, stages, register cap)
    for nw, ns, cap, dev in ((4, 2, None, False), (4, 2, None, True), (4, 1, 168, False), (4, 1, 168, True)):
        label = f"tma w{nw} st{ns}" + (f" cap{cap}" if cap else "") + (" device" if dev else "")
        dx[label] = lambda nw=nw, ns=ns, cap=cap, dev=dev, label=label: list(dx_tma(
            x, B, C, dtp, dA_cs, dy, dend, D, block_t=block_t, num_warps=nw, num_stages=ns, maxnreg=cap, label=label,
            device_desc=dev))
    pre0 = torch.empty_like(x)
    cfg = dict(block_t=block_t, block_s=min(32, block_t))
    return {
        "chunk_cumsum_state_passing_fwd": (lambda: list(kt.chunk_cumsum_state_passing_fwd(
            x, B, dt, A, bias, chunk, True, 0.0, ssd._OPEN_BOUND, False, None, None, prev_dtype=C.dtype,
            wrap=False)), passing),
        "chunk_scan_fwd (pre-gate kept)": (lambda: [kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb,
                                                                      pre_gate=pre0, config=cfg, wrap=False), pre0],
                                           scan),
        "chunk_scan_bwd_dx": (lambda: list(kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None,
                                                                block_t=block_t, wrap=False)), dx),
    }


def check(device) -> None:
    """Every variant against the default kernels at small whole-tile shapes (runs under TRITON_INTERPRET=1)."""
    _set_allocator(device)
    for shape, chunk, block_t in (((1, 128, 4, 16, 2, 16), 64, 32), ((2, 64, 2, 32, 1, 32), 32, 16)):
        inp = _inputs(shape, chunk, device)
        for name, (default, variants) in kernels(inp, block_t).items():
            want = [o.clone() for o in default()]
            for label, run in variants.items():
                diff = compare(run(), want, block_t)
                print(f"{shape} chunk {chunk}: {name}, {label}: diff {diff:.2e}", flush=True)
                assert diff < 1e-2, (name, label, diff)


def inductor_check() -> None:
    """Whether device-built descriptors survive tracing: a triton_op whose kernel builds its descriptors on the
    device (global scratch from the allocator), eagerly, under torch.compile (Inductor launches it, with Triton's
    allocator reset to none first: Inductor must set its own) and as an AOTInductor package."""
    import tempfile

    from triton.runtime._allocation import NullAllocator

    @triton.jit
    def _double_kernel(x_ptr, y_ptr, rows, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
        xd = tl.make_tensor_descriptor(x_ptr, [rows, cols], [cols, 1], [BLOCK_R, BLOCK_C])
        yd = tl.make_tensor_descriptor(y_ptr, [rows, cols], [cols, 1], [BLOCK_R, BLOCK_C])
        r = tl.program_id(0) * BLOCK_R
        for c in range(0, cols, BLOCK_C):
            yd.store([r, c], xd.load([r, c]) * 2)

    @torch.library.triton_op("ssd_tma_probe::double", mutates_args=())
    def double(x: torch.Tensor) -> torch.Tensor:
        y = torch.empty_like(x)
        torch.library.wrap_triton(_double_kernel)[(x.shape[0] // 64,)](x, y, x.shape[0], x.shape[1], BLOCK_R=64,
                                                                       BLOCK_C=64)
        return y

    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16)
    _set_allocator("cuda")
    print("eager:", torch.equal(double(x), 2 * x), flush=True)
    for dynamic in (False, True):
        triton.set_allocator(NullAllocator())
        try:
            torch._dynamo.reset()
            got = torch.compile(lambda t: double(t) + 1, fullgraph=True, dynamic=dynamic)(x)
            print(f"compile dynamic={dynamic}:", torch.equal(got, 2 * x + 1), flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"compile dynamic={dynamic}: {type(e).__name__}: {str(e)[:400]}", flush=True)

    class M(torch.nn.Module):
        def forward(self, t):
            return double(t) + 1

    triton.set_allocator(NullAllocator())
    try:
        ep = torch.export.export(M(), (x,))
        with tempfile.TemporaryDirectory() as d:
            path = torch._inductor.aoti_compile_and_package(ep, package_path=f"{d}/double.pt2")
            package = torch._inductor.aoti_load_package(path)
            print("aoti:", torch.equal(package(x), 2 * x + 1), flush=True)
    except Exception as e:  # noqa: BLE001
        print(f"aoti: {type(e).__name__}: {str(e)[:400]}", flush=True)


def main() -> None:
    from benchmarks._common import device_name, graph_ms, write_results
    from benchmarks.probes.ssd_sweep import CHUNK, SHAPES

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--check", action="store_true")
    p.add_argument("--inductor-check", action="store_true", help="device-built descriptors traced (see inductor_check)")
    args = p.parse_args()
    if args.inductor_check:
        inductor_check()
        return
    if args.check:
        check("cuda" if torch.cuda.is_available() else "cpu")
        return
    _set_allocator("cuda")
    print(device_name(), f"chunk {CHUNK}", flush=True)
    rows = []
    for name, shape in SHAPES.items():
        inp = _inputs(shape, CHUNK, "cuda")
        for kname, (default, variants) in kernels(inp, min(kt.BLOCK_T_MAX, CHUNK)).items():
            want = [o.clone() for o in default()]
            runs = {"default": default}
            for label, run in variants.items():
                try:
                    diff = compare(run(), want, min(kt.BLOCK_T_MAX, CHUNK))
                except Exception as e:  # noqa: BLE001  (a variant that fails to build should not lose the others)
                    print(f"{name} {kname} {label}: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                runs[label] = run
                rows.append(dict(shape=name, what=f"{kname}, {label}: diff", diff=diff,
                                 build=str(BUILDS.get(label, ""))))
                print(rows[-1], flush=True)
            for _ in range(2):
                for label, run in runs.items():
                    rows.append(dict(shape=name, what=f"{kname}, {label}", ms=graph_ms(run)))
                    print(rows[-1], flush=True)
        del inp
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
