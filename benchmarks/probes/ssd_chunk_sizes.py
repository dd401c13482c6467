"""The SSD op at several chunk sizes, beside the reference at the same ones: CUDA-graph medians of the forward and
of forward+backward at both benchmark shapes, and each one's error against a float64 evaluation (the chunked
torch math in float64 on the first --rows batch rows, one by default; the result does not depend on the chunk
size there). Ours runs at exactly the chunk asked for: the probe lifts ssd.CUDA_CHUNK_MAX, which otherwise
caps the CUDA kernels' chunk.

The chunk size is an algorithm parameter: the output is the same function of the inputs at every chunk size, up
to rounding. A smaller chunk shrinks the within-chunk (t, s) work, which is most of the time, and adds chunk
states (more memory traffic and a longer sequential pass). This measures where that balance lies on the GPU.

    python -m benchmarks.probes.ssd_chunk_sizes [--out results.json] [--chunks 64 128 256] [--ref-chunks 256]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.bench_ssd import SHAPES, fwd_bwd, impls, make_inputs

NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias")


def _run(fn, t, chunk, dout):
    out, final = fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                    dt_softplus=True, return_final_states=True)
    grads = torch.autograd.grad(out, [t[k] for k in NAMES], dout) if dout is not None else None
    return out, final, grads


def _truth(t, dout, rows: int):
    """float64 out, final states and input gradients for the first ``rows`` batch rows."""
    from mamba_compile.ops.ssd import _ssd_torch

    t64 = {k: (v[:rows] if v.dim() > 1 else v).detach().double().requires_grad_() for k, v in t.items()}
    out, final, _ = _ssd_torch(t64["x"], t64["dt"], t64["A"], t64["B"], t64["C"], 256, t64["D"], t64["z"],
                               t64["dt_bias"], None, None, None, True, 0.0, float("inf"))
    grads = torch.autograd.grad(out, [t64[k] for k in NAMES], dout[:rows].double())
    return out.detach(), final.detach(), [g.detach() for g in grads]


def _rel(got, want) -> float:
    """Norm of the error over the norm of the float64 value: the largest elementwise error is the same bf16
    rounding step for every chunk size (and for the reference), so it cannot tell them apart."""
    return ((got.double() - want).norm() / want.norm()).item()


def _kernel_table(fn, t, chunk, dout, steps: int = 10) -> list[tuple[str, float]]:
    """GPU ms per step of each kernel in forward+backward (torch.profiler, eager), largest first."""
    from torch.profiler import ProfilerActivity, profile

    fwd_bwd(fn, t, chunk, dout)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fwd_bwd(fn, t, chunk, dout)
        torch.cuda.synchronize()
    per = {}
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            per[e.key] = per.get(e.key, 0.0) + e.device_time_total / 1e3 / steps
    return sorted(per.items(), key=lambda kv: -kv[1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--chunks", type=int, nargs="+", default=[64, 128, 256])
    p.add_argument("--ref-chunks", type=int, nargs="+", default=[256],
                   help="chunk sizes for the reference (each one autotunes for about a minute per shape)")
    p.add_argument("--profile", action="store_true", help="also print ours' per-kernel GPU times")
    p.add_argument("--rows", type=int, default=1, help="batch rows checked against float64")
    args = p.parse_args()
    from mamba_compile.ops import ssd

    ssd.CUDA_CHUNK_MAX = max(args.chunks)
    print(device_name(), flush=True)
    rows = []
    for shape in SHAPES:
        batch, seqlen, nheads, headdim, ngroups, dstate, _ = shape
        label = f"b{batch} l{seqlen} h{nheads}"
        t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, requires_grad=True)
        dout = torch.randn_like(t["x"])
        want_out, want_final, want_grads = _truth(t, dout, args.rows)
        torch.cuda.empty_cache()
        for name, fn in impls().items():
            for chunk in args.chunks if name == "ours" else args.ref_chunks:
                out, final, grads = _run(fn, t, chunk, dout)
                r = args.rows
                err = dict(out=_rel(out[:r], want_out), final=_rel(final[:r], want_final),
                           **{f"d{k}": _rel(g[:r], w) for k, g, w in zip(NAMES, grads, want_grads)
                              if k not in ("A", "D", "dt_bias")})  # those three sum over the whole batch
                del out, final, grads  # their autograd graph, kept alive, breaks the backward's capture
                fwd_bwd(fn, t, chunk, dout)
                with torch.no_grad():
                    fwd = graph_ms(lambda: _run(fn, t, chunk, None))
                both = graph_ms(lambda: fwd_bwd(fn, t, chunk, dout))
                rows.append(dict(shape=label, impl=name, chunk=chunk, fwd_ms=fwd, fwd_bwd_ms=both,
                                 **{f"err_{k}": v for k, v in err.items()}))
                print(rows[-1], flush=True)
                if args.profile and name == "ours":
                    for k, ms in _kernel_table(fn, t, chunk, dout)[:14]:
                        print(f"  kernel {label} chunk {chunk}: {ms:.4f} ms  {k[:90]}", flush=True)
        del t, dout, want_out, want_final, want_grads
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
