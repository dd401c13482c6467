"""The SSD backward's reverse pass over the chunks: chunk_state_fwd(from_start) + state_passing_bwd (two kernels,
dprev through memory in float32) against chunk_state_passing_bwd (one kernel) per tile configuration, at both
benchmark shapes with 16-bit states as the op stores them: CUDA-graph medians and the largest difference of
dend and the per-chunk sums, relative to their largest value; then the op's forward+backward as a graph.

    python -m benchmarks.probes.ssd_passing_bwd [--out results.json]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import alternating_graph_ms, device_name, graph_ms, write_results
from benchmarks.bench_ssd import fwd_bwd, impls
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, rel_err, shape_inputs

CONFIGS = [dict(block_p=64, block_n=64, block_k=32, num_warps=4, num_stages=4),  # the default
           dict(block_p=64, block_n=64, block_k=32, num_warps=4, num_stages=3),
           dict(block_p=64, block_n=64, block_k=64, num_warps=4, num_stages=2),
           dict(block_p=64, block_n=64, block_k=16, num_warps=4, num_stages=4),
           dict(block_p=64, block_n=32, block_k=32, num_warps=4, num_stages=3),
           dict(block_p=64, block_n=128, block_k=32, num_warps=8, num_stages=3),
           dict(block_p=64, block_n=64, block_k=64, num_warps=4, num_stages=3)]


def _two_kernels(dy, C, dA_cs, prev, dfinal, seq_idx, has_init, *, dend_dtype, wrap):
    """The reverse pass as the op ran it before chunk_state_passing_bwd (from_start reads no dt: dA_cs stands in)."""
    from mamba_compile.ops import ssd_triton as kt

    dprev = kt.chunk_state_fwd(dy, C, dA_cs, dA_cs, seq_idx, from_start=True, wrap=wrap)
    return kt.state_passing_bwd(dprev, dA_cs, prev, dfinal, seq_idx, dy.shape[1], has_init, dend_dtype=dend_dtype,
                                wrap=wrap)


def main() -> None:
    from benchmarks.bench_ssd import make_inputs
    from mamba_compile.ops import ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    rows = []
    print(device_name(), flush=True)
    for name, shape in SHAPES.items():
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        prev, final = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
        dy = torch.randn_like(x)
        dfinal = torch.randn_like(final)

        def two():
            return _two_kernels(dy, C, dA_cs, prev, dfinal, None, False, dend_dtype=C.dtype, wrap=False)

        want = two()
        rows.append(dict(shape=name, what="two kernels", ms=graph_ms(two)))
        print(rows[-1], flush=True)
        for cfg in CONFIGS:
            f = lambda cfg=cfg: kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, dfinal, None, False,  # noqa: E731
                                                           dend_dtype=C.dtype, config=cfg, wrap=False)
            try:
                got = f()
                rows.append(dict(shape=name, what=f"one kernel {cfg}", ms=graph_ms(f),
                                 dend_diff=rel_err(got[0], want[0]),
                                 dchunk_diff=rel_err(got[2].sum(-1), want[2].sum(-1))))
            except Exception as e:  # noqa: BLE001
                rows.append(dict(shape=name, what=f"one kernel {cfg}", error=f"{type(e).__name__}: {str(e)[:200]}"))
            print(rows[-1], flush=True)
        del t
        torch.cuda.empty_cache()
        b, l, h, pd, g, n = shape
        tg = make_inputs(b, l, h, pd, g, n, requires_grad=True)
        dout = torch.randn_like(tg["x"])

        fused = kt.chunk_state_passing_bwd
        variants = {"one kernel": lambda: setattr(kt, "chunk_state_passing_bwd", fused),
                    "two kernels": lambda: setattr(kt, "chunk_state_passing_bwd", _two_kernels)}
        fn = impls()["ours"]
        for label, ms in alternating_graph_ms(lambda: fwd_bwd(fn, tg, CHUNK, dout), variants):
            rows.append(dict(shape=name, what=f"op fwd+bwd, reverse pass in {label}", ms=ms))
            print(rows[-1], flush=True)
        kt.chunk_state_passing_bwd = fused
        del tg
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
