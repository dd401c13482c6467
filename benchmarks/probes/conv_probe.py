"""Conv kernel variants on the GPU, CUDA-graph replay medians (benchmarks._common.graph_ms):

1. forward at b8 d1536 l2048 w4 bf16 silu bias, time-contiguous (issue 2's target: at most 1.25x the copy
   floor): the general kernel at its default and best-seen blocks, and the 16-bit pair kernel
   (causal_conv1d_triton._causal_conv1d_fwd_pairs_kernel) over a few blocks, each checked against the
   general kernel's output (max |diff| in units of the output's largest magnitude);
2. Mamba-2's layout: xBC, 1792 channels sliced from a (b, l, 3352) in_proj output and transposed
   (channel-last), forward and backward of the general kernels over block shapes, beside the same tensor
   made time-contiguous; then the row kernels (causal_conv1d_triton._causal_conv1d_fwd_rows_kernel and
   _causal_conv1d_bwd_rows_kernel) over configurations, checked against the general kernels;
3. the backward at the first shape: the two-kernel path (fp32 dy written, then read) against the one-kernel pair
   backward (causal_conv1d_triton._causal_conv1d_bwd_pairs_kernel) over a few blocks, each checked against the
   two-kernel path's gradients (dx must agree bit for bit), with the copy floor of reading x and dout and writing dx;
4. (``runs``) the run-per-thread backward (_causal_conv1d_bwd_runs_kernel) over configurations against the pair
   backward, time-contiguous and in the Mamba-1 mixer's channel-major layout, three rounds alternating.

    python -m benchmarks.probes.conv_probe --out $OUT/conv_probe.json [--parts fwd m2 bwd runs]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import floor_ms, graph_ms, nbytes, write_results
from mamba_compile.ops import causal_conv1d_triton as kernels


def _inputs(x):
    g = torch.Generator(device="cuda").manual_seed(1)
    dim, width = x.shape[1], 4
    weight = torch.randn(dim, width, device="cuda", generator=g) / width**0.5
    bias = torch.randn(dim, device="cuda", generator=g)
    return weight, bias


def forward_variants(rows):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 1536, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
    weight, bias = _inputs(x)
    floor = floor_ms(2 * nbytes(x))
    want = kernels.causal_conv1d_fwd(x, weight, bias, None, None, False, True, wrap=False, pairs=False)[0].float()
    variants = [("general", 8, 256, 4), ("general", 4, 1024, 8)]
    variants += [("pairs", bd, bl, w) for bd, bl, w in ((8, 256, 4), (4, 512, 4), (4, 1024, 8), (16, 128, 4),
                                                        (2, 1024, 4), (8, 512, 8), (16, 256, 8))]
    variants += [("general", 8, 256, 4)]  # again: the run's spread
    for kind, bd, bl, w in variants:
        def fwd(bd=bd, bl=bl, w=w, kind=kind):
            return kernels.causal_conv1d_fwd(x, weight, bias, None, None, False, True, wrap=False, block_d=bd,
                                             block_l=bl, num_warps=w, pairs=kind == "pairs")

        got = fwd()[0].float()
        err = ((got - want).abs().max() / want.abs().max()).item()
        ms = graph_ms(fwd)
        rows.append(dict(part="fwd contiguous", kernel=kind, blocks=f"{bd}x{bl} w{w}", fwd_ms=ms, ratio=ms / floor,
                         bwd_ms="", max_rel_diff=f"{err:.1e}"))
        print(rows[-1], flush=True)


def mamba2_layout(rows):
    g = torch.Generator(device="cuda").manual_seed(0)
    zxbcdt = torch.randn(8, 2048, 3352, device="cuda", dtype=torch.bfloat16, generator=g)
    x_cl = zxbcdt[..., 1560:3352].transpose(1, 2)  # (b, 1792, l), channel-last
    x_tc = x_cl.contiguous()
    weight, bias = _inputs(x_cl)
    floor = floor_ms(2 * nbytes(x_tc))
    dout_cl = torch.randn(8, 2048, 1792, device="cuda", dtype=torch.bfloat16, generator=g).transpose(1, 2)
    want = kernels.causal_conv1d_fwd(x_tc, weight, bias, None, None, False, True, wrap=False)[0].float()
    cases = [("time-contiguous", x_tc, dout_cl.contiguous(), None, None, 4)]
    cases += [("channel-last", x_cl, dout_cl, bd, bl, w) for bd, bl, w in (
        (None, None, 4), (128, 16, 4), (32, 64, 4), (128, 32, 8), (256, 8, 4), (64, 64, 8), (256, 16, 8), (128, 8, 4))]
    for name, x, dout, bd, bl, w in cases:
        def fwd(x=x, bd=bd, bl=bl, w=w):
            return kernels.causal_conv1d_fwd(x, weight, bias, None, None, False, True, wrap=False, block_d=bd,
                                             block_l=bl, num_warps=w, pairs=False, rows=False)

        def bwd(x=x, dout=dout, bd=bd, bl=bl, w=w):
            return kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, True, wrap=False,
                                             block_d=bd, block_l=bl, num_warps=w, rows=False)

        err = ((fwd()[0].float() - want).abs().max() / want.abs().max()).item()
        bwd()
        f_ms, b_ms = graph_ms(fwd), graph_ms(bwd)
        blocks = "default" if bd is None else f"{bd}x{bl} w{w}"
        rows.append(dict(part=f"m2 xBC {name}", kernel="general", blocks=blocks, fwd_ms=f_ms, ratio=f_ms / floor,
                         bwd_ms=b_ms, max_rel_diff=f"{err:.1e}"))
        print(rows[-1], flush=True)
    # the row kernels (causal_conv1d_triton._causal_conv1d_fwd_rows_kernel / _bwd_rows_kernel) over configurations,
    # against the general kernels' outputs and the two-kernel path's gradients
    bwd_floor = floor_ms(3 * nbytes(x_tc))
    want_out = kernels.causal_conv1d_fwd(x_cl, weight, bias, None, None, False, True, wrap=False, rows=False)[0]
    want = kernels.causal_conv1d_bwd(x_cl, weight, bias, None, None, dout_cl, None, True, wrap=False, rows=False)
    variants = [("general", None)]
    variants += [("rows", cfg) for cfg in (
        None, (128, 8, 64, 4, 1), (128, 8, 256, 4, 1), (128, 4, 64, 4, 1), (256, 8, 128, 8, 1), (256, 4, 128, 8, 1),
        (256, 8, 128, 4, 2), (128, 16, 128, 4, 1), (512, 8, 128, 8, 2), (64, 8, 64, 2, 1), (128, 4, 32, 4, 1))]
    variants += [("general", None)]  # again: the run's spread
    for kind, cfg in variants:
        def fwd(cfg=cfg, kind=kind):
            return kernels.causal_conv1d_fwd(x_cl, weight, bias, None, None, False, True, wrap=False,
                                             rows=kind == "rows", rows_config=cfg)

        def bwd(cfg=cfg, kind=kind):
            return kernels.causal_conv1d_bwd(x_cl, weight, bias, None, None, dout_cl, None, True, wrap=False,
                                             rows=kind == "rows", rows_config=cfg)

        out = fwd()[0].float()
        out_err = ((out - want_out.float()).abs().max() / want_out.float().abs().max()).item()
        got = bwd()
        dx_err = ((got[0].float() - want[0].float()).abs().max() / want[0].float().abs().max()).item()
        dw_err = ((got[1] - want[1]).abs().max() / want[1].abs().max()).item()
        f_ms, b_ms = graph_ms(fwd), graph_ms(bwd)
        blocks = "default" if cfg is None else "BD{} R{} SEG{} VEC{} w{}".format(*cfg)
        rows.append(dict(part="m2 xBC channel-last", kernel=kind, blocks=blocks, fwd_ms=f_ms, ratio=f_ms / floor,
                         bwd_ms=b_ms, bwd_ratio=b_ms / bwd_floor,
                         max_rel_diff=f"out {out_err:.1e} dx {dx_err:.1e} dw {dw_err:.1e}"))
        print(rows[-1], flush=True)


def backward_variants(rows):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(8, 1536, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
    dout = torch.randn(8, 1536, 2048, device="cuda", dtype=torch.bfloat16, generator=g)
    weight, bias = _inputs(x)
    floor = floor_ms(3 * nbytes(x))
    want = kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, True, wrap=False, pairs=False)
    variants = [("two-kernel", None, None, 4)]
    variants += [("pairs", bd, bl, w) for bd, bl, w in ((None, None, 4), (2, 512, 4), (4, 512, 4), (8, 256, 4),
                                                        (4, 256, 4), (2, 1024, 8), (4, 1024, 8), (16, 128, 4))]
    variants += [("two-kernel", None, None, 4)]  # again: the run's spread
    for kind, bd, bl, w in variants:
        def bwd(bd=bd, bl=bl, w=w, kind=kind):
            return kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, True, wrap=False,
                                             block_d=bd, block_l=bl, num_warps=w, pairs=kind == "pairs")

        got = bwd()
        dx_equal = torch.equal(got[0], want[0])
        dw_err = ((got[1] - want[1]).abs().max() / want[1].abs().max()).item()
        ms = graph_ms(bwd)
        blocks = "default" if bd is None else f"{bd}x{bl} w{w}"
        rows.append(dict(part="bwd contiguous", kernel=kind, blocks=blocks, bwd_ms=ms, ratio=ms / floor,
                         dx_bitwise=dx_equal, max_rel_diff=f"dw {dw_err:.1e}"))
        print(rows[-1], flush=True)


def runs_variants(rows):
    """The run-per-thread backward (_causal_conv1d_bwd_runs_kernel) over configurations (BLOCK_D, NT, NV, warps)
    against the pair backward, on contiguous x and on the Mamba-1 mixer's channel-major x (a (b, d, l) view of a
    (d, b, l) buffer), rounds alternating."""
    g = torch.Generator(device="cuda").manual_seed(0)
    b, d, l = 8, 1536, 2048
    layouts = {
        "contiguous": lambda: torch.randn(b, d, l, device="cuda", dtype=torch.bfloat16, generator=g),
        "channel-major": lambda: torch.randn(d, b, l, device="cuda", dtype=torch.bfloat16, generator=g).transpose(0, 1),
    }
    # session 21's first sweep: (4, 32, 1, 4), (2, 64, 1, 4), (1, 128, 1, 4), (8, 16, 1, 4), (8, 16, 2, 4),
    # (4, 32, 2, 4), (2, 64, 2, 4), (4, 64, 1, 8), (2, 32, 1, 2), (8, 32, 1, 8); timings in _bwd_runs_blocks
    configs = [None, (2, 64, 2, 4), (1, 128, 2, 4), (2, 64, 4, 4), (4, 32, 4, 4), (1, 64, 2, 2), (2, 32, 2, 2),
               (1, 64, 4, 2), (4, 64, 2, 8)]
    for layout, make in layouts.items():
        x, dout = make(), make()
        weight, bias = _inputs(x)
        floor = floor_ms(3 * nbytes(x))
        want = kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, True, wrap=False, runs=False)
        times = {}
        for rnd in range(3):
            for cfg in configs:
                def bwd(cfg=cfg):
                    return kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, True, wrap=False,
                                                     runs=cfg is not None, runs_config=cfg)
                if rnd == 0:
                    got = bwd()
                    dx_diff = ((got[0].float() - want[0].float()).abs().max() / want[0].float().abs().max()).item()
                    dw_err = ((got[1] - want[1]).abs().max() / want[1].abs().max()).item()
                    times[cfg] = dict(dx=dx_diff, dw=dw_err, ms=[])
                times[cfg]["ms"].append(graph_ms(bwd))
        for cfg, t in times.items():
            ms = sorted(t["ms"])[1]
            rows.append(dict(part=f"bwd {layout}", kernel="pairs" if cfg is None else "runs",
                             blocks="default" if cfg is None else "x".join(map(str, cfg)), bwd_ms=ms,
                             ratio=ms / floor, rounds=" ".join(f"{m:.4f}" for m in t["ms"]),
                             max_rel_diff=f"dx {t['dx']:.1e} dw {t['dw']:.1e}"))
            print(rows[-1], flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--parts", nargs="+", default=["fwd", "m2", "bwd"])
    args = parser.parse_args()
    rows = []
    parts = dict(fwd=forward_variants, m2=mamba2_layout, bwd=backward_variants, runs=runs_variants)
    for name in args.parts:
        parts[name](rows)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
