"""The SSD forward's dt_proc and within-chunk cumsum computed inside the state-passing kernel
(ssd_triton.chunk_cumsum_state_passing_fwd, one launch) against chunk_cumsum_fwd followed by chunk_state_passing_fwd
(two launches): CUDA-graph medians of each at both benchmark shapes with the largest difference of their outputs
relative to the largest value, then the op's graphed forward and forward+backward with either (ssd.FUSED_CUMSUM),
alternating.

    python -m benchmarks.probes.ssd_fused_cumsum [--out results.json]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import alternating_graph_ms, device_name, graph_ms, write_results
from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, rel_err, shape_inputs


def main() -> None:
    from mamba_compile.ops import ssd, ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), f"chunk {CHUNK}", flush=True)
    rows = []
    default = ssd.FUSED_CUMSUM
    for name, shape in SHAPES.items():
        t, x, dt, A, B, C, D, z, bias, _, _ = shape_inputs(shape)
        dt_args = (dt, A, bias, CHUNK, True, 0.0, ssd._OPEN_BOUND, False)

        def two():
            dtp, dA_cs = kt.chunk_cumsum_fwd(*dt_args, wrap=False)
            return (dtp, dA_cs, *kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype,
                                                            wrap=False))

        def one():
            return kt.chunk_cumsum_state_passing_fwd(x, B, *dt_args, None, None, prev_dtype=C.dtype, wrap=False)

        want, got = two(), one()
        diff = max(rel_err(g, w) for g, w in zip(got, want))
        for label, fn in (("cumsum + passing, two launches", two), ("one launch", one)) * 2:
            rows.append(dict(shape=name, what=label, ms=graph_ms(fn), diff=diff))
            print(rows[-1], flush=True)
        del t, x, dt, B, C, want, got
        fn = impls()["ours"]
        ti = make_inputs(*shape)
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])
        variants = {flag: lambda flag=flag: setattr(ssd, "FUSED_CUMSUM", flag) for flag in (True, False)}
        with torch.no_grad():
            for flag, ms in alternating_graph_ms(lambda: call(fn, ti, 256), variants):
                rows.append(dict(shape=name, what=f"op fwd, one launch: {flag}", ms=ms))
                print(rows[-1], flush=True)
        for flag, ms in alternating_graph_ms(lambda: fwd_bwd(fn, tg, 256, dout), variants):
            rows.append(dict(shape=name, what=f"op fwd+bwd, one launch: {flag}", ms=ms))
            print(rows[-1], flush=True)
        ssd.FUSED_CUMSUM = default
        del ti, tg
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
