"""Benchmark of rms_norm / layer_norm (fused residual add) and rms_norm_gated on CUDA, beside the reference.

    python -m benchmarks.bench_norms --out $OUT/bench_norms.json

Shapes (8*2048, 768) and (8*2048, 1536), bf16 activations, fp32 weights. add_norm runs as the Mamba
block calls it: residual fp32, prenorm=True, residual_in_fp32=True. The gated norm runs as Mamba-2's
does: z given, norm_before_gate=False, one group. ``ms`` is the median of do_bench on the public
function (eager: the host's time per call included), ``graph_ms`` of the same calls replayed from a CUDA graph (the
GPU's time); the floor counts each tensor the pass must read or write once (forward+backward: the
forward's bytes plus the backward's reads of dout, dr, x, residual / z and writes of the gradients).
REFERENCE_TIMINGS.md records no norm times; with the reference source under .ref/ its Triton norms
(rms_norm_fn / layer_norm_fn / rmsnorm_fn) are timed in the same run.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import bench_ms, floor_ms, fwd_bwd_step, graph_ms, nbytes, no_grad_step, write_results
from benchmarks.bench_selective_state_update import reference_module
from mamba_compile.ops import layer_norm, rms_norm, rms_norm_gated

ROWS = 8 * 2048


def _timed(rows, op, shape, ours, theirs, fwd_bytes, bwd_bytes, leaves, outs_grad):
    """Times ours / theirs (theirs may be None) for fwd (no grad) and fwd+bwd (gradients into .grad, as training
    does), eager (do_bench: the host's per-call time included) and replayed from a CUDA graph (the GPU's)."""
    def fwd_bwd(fn):
        return fwd_bwd_step(fn, leaves, outs_grad)

    for case, wrap, nbytes_ in (("fwd", no_grad_step, fwd_bytes), ("fwd+bwd", fwd_bwd, fwd_bytes + bwd_bytes)):
        ours_fn = wrap(ours)
        ours_fn()
        ms, gms = bench_ms(ours_fn), graph_ms(ours_fn)
        ref_ms = ref_gms = float("nan")
        if theirs is not None:
            theirs_fn = wrap(theirs)
            theirs_fn()  # the reference autotunes on its first call
            ref_ms, ref_gms = bench_ms(theirs_fn), graph_ms(theirs_fn)
        floor = floor_ms(nbytes_)
        rows.append(dict(op=f"{op} {case}", shape=shape, ms=ms, ref_ms=ref_ms, speedup=ref_ms / ms,
                         graph_ms=gms, ref_graph_ms=ref_gms, graph_speedup=ref_gms / gms, floor_ms=floor,
                         graph_ratio_to_floor=gms / floor))


def bench_add_norm(rows, ref, hidden, is_rms):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    res = torch.randn(ROWS, hidden, device="cuda", generator=g, requires_grad=True)  # fp32 residual stream
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=g)).requires_grad_()
    b = None if is_rms else (0.1 * torch.randn(hidden, device="cuda", generator=g)).requires_grad_()
    leaves = [t for t in (x, res, w, b) if t is not None]
    douts = (torch.randn_like(x), torch.randn_like(res))
    norm = rms_norm if is_rms else layer_norm

    def ours():
        return norm(x, w, b, res, eps=1e-5, prenorm=True, residual_in_fp32=True)

    theirs = None
    if ref is not None:
        def theirs():
            return ref.layer_norm_fn(x, w, b, residual=res, eps=1e-5, prenorm=True, residual_in_fp32=True,
                                     is_rms_norm=is_rms)

    fwd_bytes = nbytes(x, res, w, b) + nbytes(x, res)  # read x, residual, weights; write out, r
    bwd_bytes = 2 * nbytes(x, res) + nbytes(x, res)  # read dout, dr, x, residual; write dx, dresidual
    _timed(rows, "rms_norm" if is_rms else "layer_norm", f"({ROWS}, {hidden}) bf16, fp32 residual, prenorm",
           ours, theirs, fwd_bytes, bwd_bytes, leaves, douts)


def bench_gated(rows, ref, hidden):
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=g)).requires_grad_()
    douts = (torch.randn_like(x),)

    def ours():
        return rms_norm_gated(x, w, z, eps=1e-5, norm_before_gate=False)

    theirs = None
    if ref is not None:
        def theirs():
            return ref.rmsnorm_fn(x, w, None, z=z, eps=1e-5, norm_before_gate=False)

    fwd_bytes = nbytes(x, z, w) + nbytes(x)
    bwd_bytes = 3 * nbytes(x) + 2 * nbytes(x)  # read dout, x, z; write dx, dz
    _timed(rows, "rms_norm_gated", f"({ROWS}, {hidden}) bf16, z, norm after gate", ours, theirs,
           fwd_bytes, bwd_bytes, [x, z, w], douts)


def sweep_rows_per_program(rows, hidden=1536):
    """Direct launches of the add_norm and gated-norm backwards over rows per program (each program keeps dweight
    partials for its rows: programs x hidden, summed afterwards), replayed from CUDA graphs."""
    from mamba_compile.ops import norms_triton as kernels

    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16)
    z = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16)
    res = torch.randn(ROWS, hidden, device="cuda", generator=g)
    w = torch.randn(hidden, device="cuda", generator=g)
    out, r, mean, rstd = kernels.add_norm_fwd(x, w, None, res, 1e-5, True, True, torch.float32, wrap=False)
    _, grstd = kernels.rms_norm_gated_fwd(x, w, z, 1e-5, hidden, False, wrap=False)
    dout, dr = torch.randn_like(out), torch.randn_like(r)
    cases = {
        "rms_norm bwd": (lambda rpp: kernels.add_norm_bwd(dout, dr, x, w, None, res, mean, rstd, True, wrap=False,
                                                          rows_per_program=rpp),
                         floor_ms(2 * nbytes(x, res) + nbytes(x, res))),
        "rms_norm_gated bwd": (lambda rpp: kernels.rms_norm_gated_bwd(dout, x, w, z, grstd, hidden, False,
                                                                      wrap=False, rows_per_program=rpp),
                               floor_ms(5 * nbytes(x))),
    }
    for case, (run, floor) in cases.items():
        for rpp in (4, 8, 16, 32, 64, 128):
            fn = lambda: run(rpp)  # noqa: E731
            fn()
            ms = graph_ms(fn)
            rows.append(dict(case=f"{case} ({ROWS}, {hidden}), CUDA graph", rows_per_program=rpp,
                             default=rpp == kernels.ROWS_PER_PROGRAM, ms=ms, ratio_to_floor=ms / floor))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    ref_ln = reference_module("ops.triton.layer_norm")
    ref_gated = reference_module("ops.triton.layernorm_gated")
    rows = []
    for hidden in (768, 1536):
        bench_add_norm(rows, ref_ln, hidden, is_rms=True)
        bench_add_norm(rows, ref_ln, hidden, is_rms=False)
        bench_gated(rows, ref_gated, hidden)
    sweep = []
    sweep_rows_per_program(sweep)
    write_results(rows, args.out)
    print()
    write_results(sweep, args.out.replace(".json", "_sweep.json") if args.out else None)


if __name__ == "__main__":
    main()
