"""Tile and launch configurations of the SSD forward's two large kernels (chunk_scan_fwd and
chunk_state_passing_fwd) at both benchmark shapes, bf16 with 16-bit chunk states as the op runs them: time
(do_bench median) and the largest difference from the default configuration's output, relative to its largest
value (a miscompiled variant shows up there; see the num_stages note in ssd_triton).

    python -m benchmarks.probes.ssd_fwd_sweep [--scan-only]
"""

from __future__ import annotations

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
PASSING = [dict(block_n=64, block_k=64, num_warps=4, num_stages=2),
           dict(block_n=32, block_k=64, num_warps=4, num_stages=2),
           dict(block_n=64, block_k=128, num_warps=4, num_stages=2),
           dict(block_n=64, block_k=32, num_warps=4, num_stages=3),
           dict(block_n=128, block_k=64, num_warps=8, num_stages=2),
           dict(block_n=32, block_k=128, num_warps=4, num_stages=2),
           dict(block_n=64, block_k=64, num_warps=8, num_stages=2)]


def main() -> None:
    import argparse

    from mamba_compile.ops import ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--scan-only", action="store_true", help="chunk_scan_fwd's configurations only")
    scan_only = p.parse_args().scan_only

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
