"""The SSD backward's dx kernel forming B_s . C_t per tile (a 64 x dstate x 64 dot per head) against reading it
from bmm_cb_fwd(B, C, upper=True), computed once per group: CUDA-graph medians of the kernel (with the bmm) at
both benchmark shapes, the largest difference of its outputs relative to their largest value, then the op's
graphed forward+backward with either, alternating.

    python -m benchmarks.probes.ssd_dx_bc [--out results.json]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.bench_ssd import call, impls, make_inputs
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, rel_err, shape_inputs


def main() -> None:
    from mamba_compile.ops import ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), f"chunk {CHUNK}", flush=True)
    rows = []
    default = kt.DX_READS_BC
    for name, shape in SHAPES.items():
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
        dy = torch.randn_like(x)
        dend, _, _ = kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, None, None, False, dend_dtype=C.dtype, wrap=False)

        def per_tile():
            return kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False)

        def read():
            bc = kt.bmm_cb_fwd(B, C, CHUNK, upper=True, wrap=False)
            return kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, bc=bc, wrap=False)

        want, got = per_tile(), read()
        diffs = {k: rel_err(g, w) for k, g, w in zip(("dx", "ddt", "col", "colstate"), got[:4], want[:4])}
        for label, f in (("per tile", per_tile), ("read (bmm included)", read), ("per tile", per_tile),
                         ("read (bmm included)", read)):
            rows.append(dict(shape=name, what=f"dx, B C^T {label}", ms=graph_ms(f), **diffs))
            print(rows[-1], flush=True)
        del t, x, dt, B, C, dtp, dA_cs, prev, dy, dend, want, got
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])
        fn = impls()["ours"]

        def step():
            for v in tg.values():
                v.grad = None
            call(fn, tg, 256).backward(dout)

        for flag in (True, False, True, False):
            kt.DX_READS_BC = flag
            step()
            rows.append(dict(shape=name, what=f"op fwd+bwd, dx reads B C^T: {flag}", ms=graph_ms(step)))
            print(rows[-1], flush=True)
        kt.DX_READS_BC = default
        del tg
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
