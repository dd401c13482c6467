"""Persistent grids for the SSD forward's chunk_scan: a fixed number of programs (one or two an SM), each walking the
(row tile, head, chunk) work items in the tile-major order of the launched grid, with the loop nest marked for
flattening (``tl.range(..., flatten=True)``) so that Triton's pipeliner might issue the next item's loads while this
item's dots run. ncu (session 30) found chunk_scan at 25% occupancy with DRAM 47% busy: short programs (one to four
loop steps each), latency-bound. Also a variant that loads z (and x for D) before the loop instead of after it.
CUDA-graph medians against ssd_triton.chunk_scan_fwd, and the largest difference of the outputs relative to the
largest value. Session 31 (H100): all slower; Triton 3.6 pipelined nothing across items (see ssd_triton's docstring
and the README).

    python -m benchmarks.probes.ssd_persistent [--out results.json]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import graph_ms, write_results
from mamba_compile.ops import ssd_triton as kt
from mamba_compile.ops._triton import cdiv, tl, triton


@triton.jit
def _item_body(
    item, x_ptr, b_ptr, c_ptr, cb_ptr, dtp_ptr, dacs_ptr, prev_ptr, d_ptr, z_ptr, out_ptr,
    seqlen, nchunks, nheads, ntiles, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p, s_c_b, s_c_l, s_c_g, s_c_n, s_cb_b, s_cb_c, s_cb_g, s_cb_t, s_cb_s,
    s_a_b, s_a_h, s_a_c, s_a_l, s_s_b, s_s_c, s_s_h, s_s_p, s_s_n, s_d_h, s_d_p,
    s_z_b, s_z_l, s_z_h, s_z_p, s_o_b, s_o_l, s_o_h, s_o_p,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, Z_EARLY: tl.constexpr,
):
    """One work item of chunk_scan_fwd (D, z, C B^T read, no seq_idx, 16-bit inputs): the launched kernel's body."""
    pid_t = item % ntiles
    pid_h = (item // ntiles) % nheads
    pid_bc = item // (ntiles * nheads)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    t0 = (ntiles - 1 - pid_t) * BLOCK_T
    g = pid_h // heads_per_group
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    t_ok = offs_t < limit
    n_ok = offs_n < dstate
    mask = t_ok[:, None] & (offs_p[None, :] < headdim)
    x_h = x_ptr + pid_b * s_x_b + start * s_x_l + pid_h * s_x_h
    a_off = pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    if Z_EARLY:
        z = tl.load(z_ptr + pid_b * s_z_b + (start + offs_t[:, None]) * s_z_l + pid_h * s_z_h
                    + offs_p[None, :] * s_z_p, mask=mask, other=0.0)
        x_t = tl.load(x_h + offs_t[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask, other=0.0)
    a_t = tl.load(dacs_ptr + a_off + offs_t * s_a_l, mask=t_ok, other=0.0)
    c_t = tl.load(c_ptr + pid_b * s_c_b + (start + offs_t[:, None]) * s_c_l + g * s_c_g + offs_n[None, :] * s_c_n,
                  mask=t_ok[:, None] & n_ok[None, :], other=0.0)
    s_t = tl.load(prev_ptr + pid_b * s_s_b + pid_c * s_s_c + pid_h * s_s_h + offs_n[:, None] * s_s_n
                  + offs_p[None, :] * s_s_p, mask=n_ok[:, None] & (offs_p[None, :] < headdim), other=0.0)
    acc = tl.dot(c_t, s_t) * tl.exp(a_t)[:, None]
    hi = tl.minimum(t0 + BLOCK_T, limit)
    cb_base = cb_ptr + pid_b * s_cb_b + pid_c * s_cb_c + g * s_cb_g
    for s0 in range(0, hi, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < limit
        cb = tl.load(cb_base + offs_t[:, None] * s_cb_t + offs_s[None, :] * s_cb_s,
                     mask=t_ok[:, None] & s_ok[None, :], other=0.0).to(tl.float32)
        a_s = tl.load(dacs_ptr + a_off + offs_s * s_a_l, mask=s_ok, other=0.0)
        dt_s = tl.load(dtp_ptr + a_off + offs_s * s_a_l, mask=s_ok, other=0.0)
        keep = (offs_t[:, None] >= offs_s[None, :]) & s_ok[None, :]
        cb = tl.where(keep, cb * tl.exp(a_t[:, None] - a_s[None, :]) * dt_s[None, :], 0.0)
        x_s = tl.load(x_h + offs_s[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                      mask=s_ok[:, None] & (offs_p[None, :] < headdim), other=0.0)
        acc += tl.dot(cb.to(x_s.dtype), x_s)
    if not Z_EARLY:
        x_t = tl.load(x_h + offs_t[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask, other=0.0)
    d = tl.load(d_ptr + pid_h * s_d_h + offs_p * s_d_p, mask=offs_p < headdim, other=0.0).to(tl.float32)
    acc += x_t.to(tl.float32) * d[None, :]
    if not Z_EARLY:
        z = tl.load(z_ptr + pid_b * s_z_b + (start + offs_t[:, None]) * s_z_l + pid_h * s_z_h
                    + offs_p[None, :] * s_z_p, mask=mask, other=0.0)
    zf = z.to(tl.float32)
    acc = acc * zf * tl.sigmoid(zf)
    tl.store(out_ptr + pid_b * s_o_b + (start + offs_t[:, None]) * s_o_l + pid_h * s_o_h + offs_p[None, :] * s_o_p,
             acc, mask=mask)


@triton.jit
def _scan_kernel(
    x_ptr, b_ptr, c_ptr, cb_ptr, dtp_ptr, dacs_ptr, prev_ptr, d_ptr, z_ptr, out_ptr,
    seqlen, nchunks, nheads, ntiles, nitems, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p, s_c_b, s_c_l, s_c_g, s_c_n, s_cb_b, s_cb_c, s_cb_g, s_cb_t, s_cb_s,
    s_a_b, s_a_h, s_a_c, s_a_l, s_s_b, s_s_c, s_s_h, s_s_p, s_s_n, s_d_h, s_d_p,
    s_z_b, s_z_l, s_z_h, s_z_p, s_o_b, s_o_l, s_o_h, s_o_p,
    CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr, Z_EARLY: tl.constexpr, PERSISTENT: tl.constexpr, FLATTEN: tl.constexpr,
    OUTER_STAGES: tl.constexpr, NO_LICM: tl.constexpr,
):
    """PERSISTENT: programs walk the items pid, pid + nprog, ...; else one item a program (the launched grid's
    order, flattened)."""
    if PERSISTENT:
        nprog = tl.num_programs(0)
        for item in tl.range(tl.program_id(0), nitems, nprog, flatten=FLATTEN, num_stages=OUTER_STAGES,
                                disable_licm=NO_LICM):
            _item_body(item, x_ptr, b_ptr, c_ptr, cb_ptr, dtp_ptr, dacs_ptr, prev_ptr, d_ptr, z_ptr, out_ptr,
                       seqlen, nchunks, nheads, ntiles, headdim, dstate, heads_per_group,
                       s_x_b, s_x_l, s_x_h, s_x_p, s_c_b, s_c_l, s_c_g, s_c_n, s_cb_b, s_cb_c, s_cb_g, s_cb_t,
                       s_cb_s, s_a_b, s_a_h, s_a_c, s_a_l, s_s_b, s_s_c, s_s_h, s_s_p, s_s_n, s_d_h, s_d_p,
                       s_z_b, s_z_l, s_z_h, s_z_p, s_o_b, s_o_l, s_o_h, s_o_p,
                       CHUNK, BLOCK_T, BLOCK_S, BLOCK_P, BLOCK_N, Z_EARLY)
    else:
        _item_body(tl.program_id(0), x_ptr, b_ptr, c_ptr, cb_ptr, dtp_ptr, dacs_ptr, prev_ptr, d_ptr, z_ptr, out_ptr,
                   seqlen, nchunks, nheads, ntiles, headdim, dstate, heads_per_group,
                   s_x_b, s_x_l, s_x_h, s_x_p, s_c_b, s_c_l, s_c_g, s_c_n, s_cb_b, s_cb_c, s_cb_g, s_cb_t,
                   s_cb_s, s_a_b, s_a_h, s_a_c, s_a_l, s_s_b, s_s_c, s_s_h, s_s_p, s_s_n, s_d_h, s_d_p,
                   s_z_b, s_z_l, s_z_h, s_z_p, s_o_b, s_o_l, s_o_h, s_o_p,
                   CHUNK, BLOCK_T, BLOCK_S, BLOCK_P, BLOCK_N, Z_EARLY)


def scan(x, C, cb, dtp, dA_cs, prev, D, z, *, programs=None, z_early=False, flatten=True, outer_stages=2,
         no_licm=False,
         num_warps=4, num_stages=2, block_t=64, block_s=32, wrap=False, launch=None):
    """out = (y + D x) silu(z) as chunk_scan_fwd computes it (C B^T read), on a persistent grid of ``programs``
    programs, or one item a program with ``programs`` None."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = C.shape[2], C.shape[3]
    _, _, nchunks, chunk = dtp.shape
    ntiles = cdiv(chunk, block_t)
    nitems = batch * nchunks * nheads * ntiles
    out = torch.empty_like(x)
    grid = (min(programs, nitems),) if programs else (nitems,)
    (launch or kt.launcher)(_scan_kernel, wrap)[grid](
        x, C, C, cb, dtp, dA_cs, prev, D, z, out,
        seqlen, nchunks, nheads, ntiles, nitems, headdim, dstate, nheads // ngroups,
        *x.stride(), *C.stride(), *cb.stride(), *dtp.stride(), *prev.stride(), D.stride(0), 0,
        *z.stride(), *out.stride(),
        CHUNK=chunk, BLOCK_T=block_t, BLOCK_S=block_s, BLOCK_P=kt._pow2(headdim), BLOCK_N=kt._pow2(dstate),
        Z_EARLY=z_early, PERSISTENT=programs is not None, FLATTEN=flatten, OUTER_STAGES=outer_stages, NO_LICM=no_licm,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def variants(sms: int) -> dict:
    """ptxas (triton 3.6, sm_90, kernel_regs' method): the one-item kernel 128 registers like the op's, z early 168;
    persistent 255 (two programs an SM at most), 175 with LICM off (182 nested). Triton 3.6 left the PTX of the
    flattened and the nested persistent loop the same (the same async copies, no pipelining of the item loop)."""
    return {"one item a program": dict(), "z early": dict(z_early=True),
            "persistent 2/SM": dict(programs=2 * sms),
            "persistent 2/SM, LICM off": dict(programs=2 * sms, no_licm=True),
            "persistent 2/SM, LICM off, z early": dict(programs=2 * sms, no_licm=True, z_early=True),
            "persistent 1/SM, LICM off": dict(programs=sms, no_licm=True)}


def main() -> None:
    from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, rel_err, shape_inputs

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    for name, shape in SHAPES.items():
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
        cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)
        ref = kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb, wrap=False)
        runs = {"chunk_scan_fwd (the op's)": lambda: kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb,
                                                                        wrap=False)}
        for label, kw in variants(sms).items():
            runs[label] = lambda kw=kw: scan(x, C, cb, dtp, dA_cs, prev, D, z, **kw)
        diffs = {}
        for label, run in runs.items():
            try:
                diffs[label] = rel_err(run(), ref)
            except Exception as e:  # noqa: BLE001
                diffs[label] = f"failed: {type(e).__name__}: {str(e)[:200]}"
                print(label, diffs[label], flush=True)
        for r in range(args.rounds):
            for label, run in runs.items():
                if isinstance(diffs[label], str):
                    continue
                rows.append(dict(shape=name, variant=label, round=r, ms=graph_ms(run), diff=diffs[label]))
                print(rows[-1], flush=True)
    summary = {}
    for row in rows:
        summary.setdefault((row["shape"], row["variant"]), []).append(row["ms"])
    out = [dict(shape=s, variant=v, ms_median=sorted(m)[len(m) // 2], ms_all=" ".join(f"{x:.4f}" for x in m),
                diff=next(r["diff"] for r in rows if r["shape"] == s and r["variant"] == v))
           for (s, v), m in summary.items()]
    print()
    write_results(out, args.out)


if __name__ == "__main__":
    main()
