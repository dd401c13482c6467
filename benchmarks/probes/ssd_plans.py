"""Eager SSD calls with launch plans (ssd.EAGER_PLANS) and without, alternating: the host time per call (wall time
of back-to-back calls, the GPU synchronised at the ends) and do_bench's median (bench_ssd's eager rows), for the
forward without grad, the forward with inputs requiring grad and the forward+backward, at a tiny shape (b1 l256 h4,
where the host is the bound) and at both benchmark shapes; then the same for the reference where .ref/ holds it.

    python3 -m benchmarks.probes.ssd_plans [--rounds 3] [--out FILE]
"""
import argparse

import torch

from benchmarks._common import bench_ms, host_us, write_results
from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs

SHAPES = [(1, 256, 4, 64, 1, 128, 256), (8, 2048, 24, 64, 1, 128, 256), (2, 8192, 80, 64, 1, 128, 256)]


def cases(fn, shape):
    batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size = shape
    t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate)
    tg = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, requires_grad=True)
    dout = torch.randn_like(t["x"])
    return {
        "fwd, no grad": torch.no_grad()(lambda: call(fn, t, chunk_size)),
        "fwd, inputs require grad": lambda: call(fn, tg, chunk_size),
        "fwd+bwd": lambda: fwd_bwd(fn, tg, chunk_size, dout),
    }


def main():
    from mamba_compile.ops import ssd

    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    fns = impls()
    rows = []
    for shape in SHAPES:
        label = "b{} l{} h{}".format(*shape[:3])
        ours = cases(fns["ours"], shape)
        ref = cases(fns["reference"], shape) if "reference" in fns else {}
        for r in range(a.rounds):
            for case, run in ours.items():
                for plans in (True, False):
                    ssd.EAGER_PLANS = plans
                    us, ms = host_us(run, n=100), bench_ms(run)
                    rows.append(dict(shape=label, round=r, impl="ours", plans=plans, case=case, host_us=us, ms=ms))
                    print(f"{label} r{r} {case}, plans {plans}: {us:.0f} us a call, do_bench {ms:.3f} ms", flush=True)
                ssd.EAGER_PLANS = True
                if case in ref:
                    us, ms = host_us(ref[case], n=100), bench_ms(ref[case])
                    rows.append(dict(shape=label, round=r, impl="reference", plans=None, case=case, host_us=us, ms=ms))
                    print(f"{label} r{r} {case}, reference: {us:.0f} us a call, do_bench {ms:.3f} ms", flush=True)
    plans = [(k, type(p).__name__, getattr(p, "reason", "")) for k, p in ssd._PLANS.plans.items()]
    for key, kind, reason in plans:
        print(f"plan {key[0][0]} {kind} {reason}")
    print("medians over rounds:")
    groups = {}
    for row in rows:
        groups.setdefault((row["shape"], row["case"], row["impl"], row["plans"]), []).append(row)
    for (shape, case, impl, p), rs in groups.items():
        us = sorted(x["host_us"] for x in rs)[len(rs) // 2]
        ms = sorted(x["ms"] for x in rs)[len(rs) // 2]
        print(f"| {shape} | {case} | {impl}{'' if p is None else ', plans ' + str(p)} | {us:.0f} | {ms:.3f} |")
    if a.out:
        write_results(rows, a.out)


if __name__ == "__main__":
    main()
