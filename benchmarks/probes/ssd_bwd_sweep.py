"""Launch configurations of the SSD backward's kernels at both benchmark shapes (bf16, 16-bit states as the op
stores them): chunk_scan_bwd_dcb (tile width, warps, stages), chunk_scan_bwd_dx (row tiles, warps, stages), dt_bwd
(heads per program, warps). Time (do_bench median) and the largest difference from the default's output relative to its
largest value (a miscompiled variant shows up there).

    python -m benchmarks.probes.ssd_bwd_sweep
"""

from __future__ import annotations

import importlib

import torch

from benchmarks._common import bench_ms
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, rel_err, shape_inputs

ssd = importlib.import_module("mamba_compile.ops.ssd")

DCB = [dict(block_t=64, num_warps=4, num_stages=2), dict(block_t=64, num_warps=4, num_stages=3),
       dict(block_t=64, num_warps=8, num_stages=2), dict(block_t=64, num_warps=4, num_stages=1),
       dict(block_t=128, num_warps=8, num_stages=2), dict(block_t=128, num_warps=4, num_stages=2)]
DX = [dict(num_warps=4, num_stages=2), dict(num_warps=8, num_stages=2), dict(num_warps=4, num_stages=3),
      dict(num_warps=8, num_stages=3), dict(num_warps=4, num_stages=1), dict(block_t=32, num_warps=4, num_stages=2),
      dict(block_t=32, num_warps=2, num_stages=2), dict(block_t=32, num_warps=4, num_stages=3),
      dict(block_t=32, num_warps=2, num_stages=3)]
DT = [dict(block_h=None, num_warps=4), dict(block_h=1, num_warps=2), dict(block_h=2, num_warps=4),
      dict(block_h=8, num_warps=4), dict(block_h=8, num_warps=8), dict(block_h=16, num_warps=8)]


def _sweep(name, configs, run, view=lambda out: out):
    """Times run(cfg) for each configuration; view(out) is what gets compared (outside the timing)."""
    want = None
    for cfg in configs:
        try:
            out = view(run(cfg))
            want = out if want is None else want
            print(f"{name} {cfg}: {bench_ms(lambda: run(cfg)):.4f} ms, diff {rel_err(out, want):.1e}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{name} {cfg}: failed {type(e).__name__}: {str(e)[:120]}", flush=True)


def main() -> None:
    from mamba_compile.ops import ssd_triton as kt

    for name, shape in SHAPES.items():
        print(f"\n## {name}", flush=True)
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
        dy = torch.randn_like(x)
        dprev = kt.chunk_state_fwd(dy, C, dtp, dA_cs, None, from_start=True, wrap=False)
        dend, _, dchunk = kt.state_passing_bwd(dprev, dA_cs, prev, None, None, x.shape[1], False, dend_dtype=C.dtype,
                                               wrap=False)
        lower = torch.ones(CHUNK, CHUNK, device=x.device).tril().bool()  # dcb's tiles above the diagonal are unwritten
        _sweep("dcb", DCB, lambda cfg: kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, B.shape[2], None, wrap=False, **cfg),
               view=lambda dcb: dcb[..., lower])
        _sweep("dx", DX, lambda cfg: kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False, **cfg)[0])
        _, ddt_x, col, colstate, row, _ = kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False)
        da = torch.randn_like(dtp)
        _sweep("dt_bwd", DT, lambda cfg: kt.dt_bwd(dt, bias, A, dtp, ddt_x, None, da, col, colstate, row, dchunk, True,
                                                   0.0, ssd._OPEN_BOUND, False, wrap=False, **cfg)[0])
        del t
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
