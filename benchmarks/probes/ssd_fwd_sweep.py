"""Tile and launch configurations of the SSD forward's two large kernels (chunk_scan_fwd and
chunk_state_passing_fwd) at both benchmark shapes, bf16 with 16-bit chunk states as the op runs them: time
(do_bench median) and the largest difference from the default configuration's output, relative to its largest
value (a miscompiled variant shows up there; see the num_stages note in ssd_triton).

    python -m benchmarks.probes.ssd_fwd_sweep [--scan-only | --passing-only]

--passing-only: chunk_state_passing_fwd's configurations, then the op's forward and forward+backward as CUDA graphs
with its default configuration and with --passing-candidate (JSON: the launcher's keyword arguments), alternating.
"""

from __future__ import annotations

import functools
import json

import torch

from benchmarks._common import bench_ms
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, rel_err, shape_inputs

SCAN = [dict(block_t=64, block_s=32, num_warps=4, num_stages=2),  # the default first: the others compare to it
        dict(block_t=64, block_s=64, num_warps=4, num_stages=2),
        dict(block_t=64, block_s=32, num_warps=8, num_stages=2),
        dict(block_t=64, block_s=32, num_warps=4, num_stages=3),
        dict(block_t=128, block_s=32, num_warps=8, num_stages=2),
        dict(block_t=128, block_s=64, num_warps=8, num_stages=2),
        dict(block_t=128, block_s=32, num_warps=4, num_stages=2),
        dict(block_t=32, block_s=32, num_warps=4, num_stages=2),
        dict(block_t=32, block_s=64, num_warps=4, num_stages=2)]
PASSING = [dict(block_n=64, block_k=128, num_warps=4, num_stages=2),  # the default at chunk 128
           dict(block_n=64, block_k=64, num_warps=4, num_stages=2),
           dict(block_n=64, block_k=32, num_warps=4, num_stages=4),
           dict(block_n=64, block_k=16, num_warps=4, num_stages=4),
           dict(block_n=32, block_k=32, num_warps=4, num_stages=3),
           dict(block_n=64, block_k=64, num_warps=4, num_stages=3),
           dict(block_n=32, block_k=64, num_warps=4, num_stages=2),
           dict(block_n=64, block_k=32, num_warps=4, num_stages=3),
           dict(block_n=128, block_k=64, num_warps=8, num_stages=2),
           dict(block_n=32, block_k=128, num_warps=4, num_stages=2),
           dict(block_n=64, block_k=64, num_warps=8, num_stages=2)]


def passing_only(kt, candidate: dict) -> None:
    """chunk_state_passing_fwd's configurations at both shapes, then the op's graphed forward and forward+backward
    with the default and with ``candidate`` (the kernel also recomputes the states in the backward), alternating."""
    from benchmarks._common import graph_ms
    from benchmarks.bench_ssd import call, fwd_bwd, make_inputs
    from mamba_compile.ops import ssd_chunk_scan

    default = kt.chunk_state_passing_fwd
    for name, shape in SHAPES.items():
        print(f"\n## {name}", flush=True)
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        want = None
        for cfg in PASSING:
            f = lambda cfg=cfg: default(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype,  # noqa: E731
                                        wrap=False, **cfg)
            prev, final = f()
            want = (prev, final) if want is None else want
            print(f"state_passing {cfg}: {graph_ms(f):.4f} ms (graph), diff {rel_err(prev, want[0]):.1e} / "
                  f"{rel_err(final, want[1]):.1e}", flush=True)
        del t
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])

        def step():
            fwd_bwd(ssd_chunk_scan, tg, CHUNK, dout)

        for label in ("default", "candidate", "default", "candidate"):
            kt.chunk_state_passing_fwd = default if label == "default" else functools.partial(default, **candidate)
            with torch.no_grad():
                fwd = graph_ms(lambda: call(ssd_chunk_scan, tg, CHUNK))
            print(f"op {label} {candidate if label == 'candidate' else ''}: fwd {fwd:.4f} ms, fwd+bwd "
                  f"{graph_ms(step):.4f} ms (graphs)", flush=True)
        kt.chunk_state_passing_fwd = default
        del tg
        torch.cuda.empty_cache()


def main() -> None:
    import argparse

    from mamba_compile.ops import ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--scan-only", action="store_true", help="chunk_scan_fwd's configurations only")
    p.add_argument("--passing-only", action="store_true", help="chunk_state_passing_fwd's, then the op with one")
    p.add_argument("--passing-candidate", default='{"block_k": 32, "num_stages": 3}',
                   help="JSON: the launcher's keyword arguments")
    args = p.parse_args()
    scan_only = args.scan_only
    if args.passing_only:
        return passing_only(kt, json.loads(args.passing_candidate))

    for name, shape in SHAPES.items():
        print(f"\n## {name}", flush=True)
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        want_prev = None
        for cfg in PASSING[: 1 if scan_only else None]:
            try:
                f = lambda: kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False,
                                                       **cfg)
                prev, _ = f()
                want_prev = prev if want_prev is None else want_prev
                print(f"state_passing {cfg}: {bench_ms(f):.4f} ms, diff {rel_err(prev, want_prev):.1e}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"state_passing {cfg}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
        cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)
        want = None
        for cfg in SCAN:
            try:
                f = lambda: kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, want_prev, D, z, None, cb=cb, config=cfg, wrap=False)
                out = f()
                want = out if want is None else want
                print(f"chunk_scan {cfg}: {bench_ms(f):.4f} ms, diff {rel_err(out, want):.1e}", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"chunk_scan {cfg}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)
        del t
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
