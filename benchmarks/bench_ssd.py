"""SSD chunked scan: ours against the reference's Triton path (mamba_chunk_scan_combined), side by side.

    python -m benchmarks.bench_ssd --out $OUT/ssd.json

The reference runs from its source unpacked in .ref/ (see REFERENCE_TIMINGS.md); its package __init__
imports CUDA extensions, so an empty ``mamba_ssm`` package is registered first and only the Triton modules
load. First-call times (Triton compilation included) are measured each in a fresh subprocess.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import types

import torch

from benchmarks._common import bench_ms, floor_ms, graph_ms, nbytes, write_results

REF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ref")
# (batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size) -> reference ms (fwd, fwd+bwd), REFERENCE_TIMINGS.md
SHAPES = {
    (8, 2048, 24, 64, 1, 128, 256): (0.546, 5.031),
    (2, 8192, 80, 64, 1, 128, 256): (0.851, 5.317),
}


def load_reference():
    """mamba_chunk_scan_combined from .ref/ without running mamba_ssm/__init__.py; None if unavailable."""
    if not os.path.isdir(os.path.join(REF_DIR, "mamba_ssm")):
        return None
    if "mamba_ssm" not in sys.modules:
        pkg = types.ModuleType("mamba_ssm")
        pkg.__path__ = [os.path.join(REF_DIR, "mamba_ssm")]
        sys.modules["mamba_ssm"] = pkg
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

    return mamba_chunk_scan_combined


def make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, device="cuda", requires_grad=False, seed=0):
    """bf16 activations (x, z, B, C, dt), fp32 A, D, dt_bias, as in REFERENCE_TIMINGS.md."""
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*shape, scale=1.0, dtype=torch.bfloat16):
        return (torch.randn(*shape, generator=g, device=device) * scale).to(dtype)

    t = dict(
        x=rnd(batch, seqlen, nheads, headdim),
        dt=rnd(batch, seqlen, nheads, scale=0.5),
        A=-(torch.rand(nheads, generator=g, device=device) + 0.5),
        B=rnd(batch, seqlen, ngroups, dstate, scale=0.5),
        C=rnd(batch, seqlen, ngroups, dstate, scale=0.5),
        D=rnd(nheads, dtype=torch.float32),
        z=rnd(batch, seqlen, nheads, headdim),
        dt_bias=rnd(nheads, scale=0.3, dtype=torch.float32),
    )
    if requires_grad:
        for v in t.values():
            v.requires_grad_()
    return t


def call(fn, t, chunk_size):
    return fn(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size, D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
              dt_softplus=True)


def impls():
    from mamba_compile.ops import ssd_chunk_scan

    out = {"ours": ssd_chunk_scan}
    ref = load_reference()
    if ref is not None:
        out["reference"] = ref
    return out


def fwd_bwd(fn, t, chunk_size, dout) -> None:
    """One forward+backward of ``fn`` on the inputs ``t`` (leaves requiring grad), gradients into .grad: what the
    benchmarks time (CUDA-graph capturable, unlike torch.autograd.grad)."""
    for v in t.values():
        v.grad = None
    call(fn, t, chunk_size).backward(dout)


def time_impl(fn, shape):
    """Median ms of the forward (no grad) and of forward+backward, bf16 inputs as in REFERENCE_TIMINGS.md:
    (fwd eager, fwd+bwd eager, fwd CUDA graph, fwd+bwd CUDA graph)."""
    batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size = shape
    t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate)
    tg = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, requires_grad=True)
    dout = torch.randn_like(t["x"])
    with torch.no_grad():
        fwd = bench_ms(lambda: call(fn, t, chunk_size))
        fwd_graph = graph_ms(lambda: call(fn, t, chunk_size))

    def step():
        fwd_bwd(fn, tg, chunk_size, dout)

    return fwd, bench_ms(step), fwd_graph, graph_ms(step)



def floor_for(shape) -> float:
    batch, seqlen, nheads, headdim, ngroups, dstate, _ = shape
    t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate)
    return floor_ms(nbytes(*t.values()) + nbytes(t["x"]))  # inputs read once, out written once


def first_call(name: str, shape) -> None:
    """Run in a fresh process: prints the seconds to the first forward and to the first forward+backward."""
    batch, seqlen, nheads, headdim, ngroups, dstate, chunk_size = shape
    fn = impls()[name]
    t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, requires_grad=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = call(fn, t, chunk_size)
    torch.cuda.synchronize()
    t1 = time.perf_counter()
    out.backward(torch.randn_like(out))
    torch.cuda.synchronize()
    t2 = time.perf_counter()
    print(f"FIRST_CALL {t1 - t0:.3f} {t2 - t0:.3f}")


def first_call_subprocess(name: str, shape) -> tuple[float, float]:
    cmd = [sys.executable, "-m", "benchmarks.bench_ssd", "--first-call", name, "--shape", ",".join(map(str, shape))]
    env = dict(os.environ)
    # A fresh Triton cache, so compilation is included (a warm cache would hide it).
    env["TRITON_CACHE_DIR"] = os.path.join("/tmp", f"triton_cache_first_{name}_{os.getpid()}_{time.time_ns()}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for line in proc.stdout.splitlines():
        if line.startswith("FIRST_CALL"):
            _, f, fb = line.split()
            return float(f), float(fb)
    print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
    return float("nan"), float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--first-call", default=None, help="internal: time the first call of one impl")
    parser.add_argument("--shape", default=None)
    parser.add_argument("--reference-first-call", action="store_true",
                        help="also time the reference's first call (about 70 s of Triton autotuning)")
    args = parser.parse_args()
    if args.first_call:
        first_call(args.first_call, tuple(int(v) for v in args.shape.split(",")))
        return

    first_shape = next(iter(SHAPES))
    # First calls before anything compiles in this process; each in a fresh process and Triton cache.
    firsts = {"ours": first_call_subprocess("ours", first_shape)}
    print(f"first call, ours: fwd {firsts['ours'][0]:.2f} s, fwd+bwd {firsts['ours'][1]:.2f} s", flush=True)
    if args.reference_first_call:
        firsts["reference"] = first_call_subprocess("reference", first_shape)
        print(f"first call, reference: fwd {firsts['reference'][0]:.2f} s, fwd+bwd {firsts['reference'][1]:.2f} s",
              flush=True)
    fns = impls()
    rows = []
    for shape, (ref_fwd, ref_fb) in SHAPES.items():
        floor = floor_for(shape)
        res = {}
        for name, fn in fns.items():
            res[name] = time_impl(fn, shape)
            print(f"{name} {shape}: fwd {res[name][0]:.3f} ms (CUDA graph {res[name][2]:.3f}), "
                  f"fwd+bwd {res[name][1]:.3f} ms (CUDA graph {res[name][3]:.3f})", flush=True)
        b, l, h, p, g, n, cs = shape
        label = f"b{b} l{l} h{h} p{p} g{g} n{n} chunk{cs}"
        for case, i, floor_case, recorded in (("fwd", 0, floor, ref_fwd), ("fwd+bwd", 1, 3 * floor, ref_fb),
                                              ("fwd, CUDA graph", 2, floor, ref_fwd),
                                              ("fwd+bwd, CUDA graph", 3, 3 * floor, ref_fb)):
            ours = res["ours"][i]
            ref = res["reference"][i] if "reference" in res else float("nan")
            rows.append(dict(shape=label, case=case, ms=ours, floor_ms=floor_case, ratio_to_floor=ours / floor_case,
                             reference_ms=ref, speedup=ref / ours, reference_recorded_ms=recorded,
                             speedup_vs_recorded=recorded / ours))
    print()
    write_results(rows, args.out)
    print()
    first_rows = [dict(impl=name, shape=str(first_shape), fwd_s=f, fwd_bwd_s=fb) for name, (f, fb) in firsts.items()]
    first_rows.append(dict(impl="reference (recorded, REFERENCE_TIMINGS.md)", shape=str(first_shape), fwd_s=42.4,
                           fwd_bwd_s=68.5))
    write_results(first_rows, args.out.replace(".json", "_first_call.json") if args.out else None)

if __name__ == "__main__":
    main()
