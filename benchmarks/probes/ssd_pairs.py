"""Where the SSD backward forms the log-decay gradient's within-chunk pair sums: in dcb (ssd.PAIRS_IN_DCB, one
C_t . B_s dot per tile for the group's heads, times each head's tile that dcb forms anyway) or in dx (a third dot
per tile, x_s . dy_t, and the pair tile's registers). CUDA-graph medians of dx, dcb (with the pairs at 8 and 16
warps) and the three kernels together for both, with the largest differences of dx and of dt_bwd's outputs between
them relative to the largest value (dcb's is not meaningful: the tiles above the diagonal are never written); then
the op's graphed forward+backward with each setting, on two streams (eager calls) and on one (what torch.compile
runs), alternating.

    python -m benchmarks.probes.ssd_pairs [--out results.json]
"""

from __future__ import annotations

import math

import torch

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import ab_probe, rel_err, shape_inputs
from mamba_compile.ops import ssd
from mamba_compile.ops import ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    g = torch.Generator(device="cuda").manual_seed(3)
    dy = torch.randn(x.shape, generator=g, device="cuda").to(x.dtype)
    dend = torch.randn(prev.shape, generator=g, device="cuda").to(prev.dtype)
    da = torch.randn(dtp.shape, generator=g, device="cuda")
    dchunk = torch.randn(*dtp.shape[:3], 2, generator=g, device="cuda")
    ngroups = B.shape[2]

    def in_dx():
        dcb = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, ngroups, None, wrap=False)
        dx, ddt_x, col, colstate, row, _ = kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False)
        return dcb, dx, ddt_x, col, colstate, row

    def in_dcb():
        dcb, row, col = kt.chunk_scan_bwd_dcb_pairs(x, B, C, dtp, dA_cs, dy, None, wrap=False)
        dx, ddt_x, _, colstate, _, _ = kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, pairs=False,
                                                             wrap=False)
        return dcb, dx, ddt_x, col, colstate, row

    def dt_grads(parts):
        _, _, ddt_x, col, colstate, row = parts
        return kt.dt_bwd(dt, bias, A, dtp, ddt_x, None, da, col, colstate, row, dchunk, True, 0.0, math.inf, False,
                         wrap=False)

    want, got = in_dx(), in_dcb()
    diff = {"dx": rel_err(got[1], want[1]), "dcb": rel_err(got[0], want[0])}
    diff.update({k: rel_err(a, b) for k, a, b in zip(("ddt", "dA", "ddt_bias"), dt_grads(got), dt_grads(want))})
    print(name, "differences", diff, flush=True)
    rows = []
    for what, fn in (
            ("dx, pairs in dx", lambda: kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False)),
            ("dx, pairs in dcb", lambda: kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, pairs=False,
                                                               wrap=False)),
            ("dcb", lambda: kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, ngroups, None, wrap=False)),
            ("dcb with pairs, 8 warps", lambda: kt.chunk_scan_bwd_dcb_pairs(x, B, C, dtp, dA_cs, dy, None,
                                                                            num_warps=8, wrap=False)),
            ("dcb with pairs, 16 warps", lambda: kt.chunk_scan_bwd_dcb_pairs(x, B, C, dtp, dA_cs, dy, None,
                                                                             num_warps=16, wrap=False)),
            ("dx + dcb + dt_bwd, pairs in dx", lambda: dt_grads(in_dx())),
            ("dx + dcb + dt_bwd, pairs in dcb", lambda: dt_grads(in_dcb()))):
        rows.append(dict(shape=name, what=what, ms=graph_ms(fn), **{f"diff {k}": v for k, v in diff.items()}))
        print(rows[-1], flush=True)
    return rows


# (ssd.PAIRS_IN_DCB, ssd.SIDE_STREAM, ssd_triton.DCB_PAIRS_WARPS)
VARIANTS = {"in dcb, two streams": (True, True, 16), "in dcb 8 warps, two streams": (True, True, 8),
            "in dx, two streams": (False, True, 16), "in dcb, one stream": (True, False, 16),
            "in dcb 8 warps, one stream": (True, False, 8), "in dx, one stream": (False, False, 16)}


def _use(variant):
    ssd.PAIRS_IN_DCB, ssd.SIDE_STREAM, kt.DCB_PAIRS_WARPS = VARIANTS[variant]


def main() -> None:
    default = (ssd.PAIRS_IN_DCB, ssd.SIDE_STREAM, kt.DCB_PAIRS_WARPS)

    def restore():
        ssd.PAIRS_IN_DCB, ssd.SIDE_STREAM, kt.DCB_PAIRS_WARPS = default

    ab_probe(kernel_rows, {v: lambda v=v: _use(v) for v in VARIANTS}, restore, "pairs", forward=False)


if __name__ == "__main__":
    main()
