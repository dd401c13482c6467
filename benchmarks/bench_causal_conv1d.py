"""Benchmark of causal_conv1d (forward, forward+backward) and causal_conv1d_update on CUDA.

    python -m benchmarks.bench_causal_conv1d --out $OUT/causal_conv1d.json

Each row gives the median of ``do_bench`` on the public function (eager, Python overhead included) and of
``do_bench_cudagraph`` (the kernels alone), the bandwidth floor (x read once and out written once for
the forward; x4 of that for forward+backward, as in REFERENCE_TIMINGS.md), and the reference's recorded
time with the speed-up against the CUDA-graph time. A second table sweeps the kernels' block sizes so
the shape heuristic in ``causal_conv1d_triton`` can be checked against the best choice.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import bench_ms, floor_ms, graph_ms, nbytes, write_results
from mamba_compile.ops import causal_conv1d, causal_conv1d_update

# REFERENCE_TIMINGS.md: causal-conv1d 1.6.1 CUDA extension, H100, b8 d1536 l2048 w4 bf16 silu bias
REFERENCE_MS = {"fwd": 0.042, "fwd+bwd": 0.408}


def _conv_inputs(batch, dim, seqlen, width, layout="contiguous", seq=False, requires_grad=False):
    g = torch.Generator(device="cuda").manual_seed(0)
    if layout == "channel_last":
        x = torch.randn(batch, seqlen, dim, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2)
    else:
        x = torch.randn(batch, dim, seqlen, device="cuda", generator=g, dtype=torch.bfloat16)
    weight = torch.randn(dim, width, device="cuda", generator=g) / width**0.5
    bias = torch.randn(dim, device="cuda", generator=g)
    seq_idx = None
    if seq:  # four packed sequences per row
        seq_idx = (torch.arange(seqlen, device="cuda") * 4 // seqlen).int().expand(batch, -1).contiguous()
    for t in (x, weight, bias):
        t.requires_grad_(requires_grad)
    return x, weight, bias, seq_idx


def bench_conv(rows, batch=8, dim=1536, seqlen=2048, width=4, layout="contiguous", seq=False):
    x, weight, bias, seq_idx = _conv_inputs(batch, dim, seqlen, width, layout, seq, requires_grad=True)
    shape = f"b{batch} d{dim} l{seqlen} w{width} bf16 silu bias" + (f" {layout}" if layout != "contiguous" else "") + (
        " seq_idx" if seq else "")
    fwd_floor = floor_ms(2 * nbytes(x))

    def fwd():
        with torch.no_grad():
            return causal_conv1d(x, weight, bias, seq_idx, activation="silu")

    dout = torch.randn_like(x)

    def fwd_bwd():
        out = causal_conv1d(x, weight, bias, seq_idx, activation="silu")
        return torch.autograd.grad(out, (x, weight, bias), dout)

    ref_ok = layout == "contiguous" and not seq and (batch, dim, seqlen, width) == (8, 1536, 2048, 4)
    for case, fn, floor in (("fwd", fwd, fwd_floor), ("fwd+bwd", fwd_bwd, 4 * fwd_floor)):
        fn()  # compile the kernels outside the timing
        eager, graph = bench_ms(fn), graph_ms(fn)
        ref = REFERENCE_MS[case] if ref_ok else None
        rows.append(dict(op=f"causal_conv1d {case}", shape=shape, ms=eager, graph_ms=graph, floor_ms=floor,
                         ratio=graph / floor, ref_ms=ref if ref else "n/a",
                         speedup=ref / graph if ref else "n/a"))


def bench_update(rows, batch=64, dim=1536 * 2, width=4, state_len=3, circular=False):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(batch, dim, device="cuda", generator=g, dtype=torch.bfloat16)
    state = torch.randn(batch, dim, state_len, device="cuda", generator=g, dtype=torch.bfloat16)
    weight = torch.randn(dim, width, device="cuda", generator=g)
    bias = torch.randn(dim, device="cuda", generator=g)
    seqlens = torch.full((batch,), 17, device="cuda", dtype=torch.int32) if circular else None

    def fn():
        return causal_conv1d_update(x, state, weight, bias, "silu", seqlens)

    fn()
    eager, graph = bench_ms(fn), graph_ms(fn)
    floor = floor_ms(2 * nbytes(x) + 2 * nbytes(state))
    rows.append(dict(op="causal_conv1d_update", shape=f"b{batch} d{dim} w{width} state_len{state_len} bf16 silu"
                     + (" circular" if circular else ""), ms=eager, graph_ms=graph, floor_ms=floor,
                     ratio=graph / floor, ref_ms="n/a", speedup="n/a"))


def sweep_blocks(rows, batch=8, dim=1536, seqlen=2048, width=4):
    """Direct kernel launches over block sizes: forward and backward kernels alone. The 16-bit forward and the pair
    backward take these blocks; the run-per-thread backward that the op runs by default has its own configurations
    (``causal_conv1d_triton._bwd_runs_blocks``, swept by ``benchmarks/probes/conv_probe.py --parts runs``), so the
    backward column is the pair kernel's."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    x, weight, bias, _ = _conv_inputs(batch, dim, seqlen, width)
    dout = torch.randn_like(x)
    floor = floor_ms(2 * nbytes(x))
    default = kernels._fwd_blocks(x)
    for block_d, block_l, warps in ((16, 128, 4), (8, 256, 4), (32, 64, 4), (16, 256, 4), (16, 128, 8),
                                    (8, 512, 4), (32, 128, 4), (4, 512, 4)):
        def fwd():
            return kernels.causal_conv1d_fwd(x, weight, bias, None, None, False, True, wrap=False,
                                             block_d=block_d, block_l=block_l, num_warps=warps)

        def bwd():
            return kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, True, wrap=False,
                                             block_d=block_d, block_l=block_l, num_warps=warps, runs=False)

        fwd(), bwd()
        f_ms, b_ms = graph_ms(fwd), graph_ms(bwd)
        rows.append(dict(blocks=f"BLOCK_D={block_d} BLOCK_L={block_l} warps={warps}",
                         default=(block_d, block_l) == default and warps == 4,
                         fwd_ms=f_ms, fwd_ratio=f_ms / floor, bwd_ms=b_ms, bwd_ratio=b_ms / (1.5 * floor)))  # bwd: x, dout in, dx out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the results")
    parser.add_argument("--no-sweep", action="store_true", help="skip the block-size sweep")
    args = parser.parse_args()

    rows = []
    bench_conv(rows)
    bench_conv(rows, layout="channel_last")
    bench_conv(rows, seq=True)
    bench_update(rows)
    bench_update(rows, state_len=4, circular=True)
    write_results(rows, args.out)
    if not args.no_sweep:
        sweep = []
        sweep_blocks(sweep)
        print()
        write_results(sweep, args.out.replace(".json", "_sweep.json") if args.out else None)


if __name__ == "__main__":
    main()
