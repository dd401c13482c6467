"""Where the SSD's GPU time goes, ours beside the reference's: every kernel of a forward and of a forward+backward,
from torch.profiler, averaged per call, at both benchmark shapes. The reference runs from .ref/ as in bench_ssd.

    python -m benchmarks.probes.ssd_vs_ref_kernels [--iters 20] [--out $OUT/ssd_vs_ref.md]
"""

from __future__ import annotations

import argparse
import collections

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_ssd import SHAPES, call, fwd_bwd, impls, make_inputs


def kernel_times(fn, iters: int) -> dict[str, tuple[float, int]]:
    """{kernel name: (mean µs per call, launches per call)} over ``iters`` calls of ``fn`` after two warm-ups."""
    for _ in range(2):
        fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    acc = collections.defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            acc[e.name][0] += e.device_time
            acc[e.name][1] += 1
    return {k: (v[0] / iters, v[1] // iters) for k, v in acc.items()}


def table(name: str, times: dict[str, tuple[float, int]]) -> list[str]:
    total = sum(t for t, _ in times.values())
    lines = [f"### {name}: {total / 1e3:.3f} ms of kernels per call", "", "| kernel | µs | launches |",
             "|---|---|---|"]
    for k, (t, n) in sorted(times.items(), key=lambda kv: -kv[1][0]):
        lines.append(f"| {k[:90]} | {t:.1f} | {n} |")
    return lines + [""]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    lines = [f"# SSD kernels, {torch.cuda.get_device_name()}, torch {torch.__version__}", ""]
    for shape in SHAPES:
        batch, seqlen, nheads, headdim, ngroups, dstate, chunk = shape
        lines.append(f"## b{batch} l{seqlen} h{nheads} p{headdim} g{ngroups} n{dstate} chunk {chunk}\n")
        for impl_name, fn in impls().items():
            t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate)
            tg = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, requires_grad=True)
            dout = torch.randn_like(t["x"])

            def fwd():
                with torch.no_grad():
                    call(fn, t, chunk)

            def both():
                fwd_bwd(fn, tg, chunk, dout)

            for case, f in (("fwd", fwd), ("fwd+bwd", both)):
                new = table(f"{impl_name} {case}", kernel_times(f, args.iters))
                print("\n".join(new), flush=True)
                lines += new
            del t, tg
            torch.cuda.empty_cache()
    text = "\n".join(lines)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
