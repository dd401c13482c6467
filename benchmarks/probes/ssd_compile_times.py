"""Where the SSD's first call goes: each Triton kernel of the eager forward and backward at the benchmark's shape
(b8 l2048 h24 p64 g1 n128, bf16, D, z, dt_bias, softplus), compiled one after another in a fresh Triton cache, with
the seconds each takes; then the first call itself (bench_ssd --first-call, a fresh process and cache) three times.

    python3 -m benchmarks.probes.ssd_compile_times [--out FILE]

The first call compiles a pass's kernels concurrently (ssd_triton.compile_async), so it takes about its longest
kernel's compile, not the sum, when the host has the cores; the sequential times say which kernel sets it. Each
row is ssd_triton._warmup's time: since session 36 that includes loading the binary and building its launcher
(Triton 3.6 compiles a C launcher per kernel signature), which the first launch used to do on the caller's thread.
Session 36, H100 (calls 6 and 7): before that change the rows summed to 6.6 s and the first forward+backward took
6.4-6.9 s, the launchers built one after another; after it the rows sum to 12.1 s and the first call takes
3.2-3.5 s (forward 3.0-3.1).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time


def sequential() -> list[tuple[str, float]]:
    import torch

    from benchmarks.bench_ssd import make_inputs
    from mamba_compile.ops import ssd, ssd_triton as kt

    t = make_inputs(8, 2048, 24, 64, 1, 128, requires_grad=True)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 128, t["D"], t["z"], t["dt_bias"], None, None, None, True,
            0.0, ssd._OPEN_BOUND, True)
    fwd, bwd = ssd._recorded_launches(args, with_backward=True)
    rows, seen = [], set()
    for part, jobs in (("fwd", fwd), ("bwd", bwd)):
        for job in jobs:
            key = kt._spec_key(job)
            if key in seen:
                continue
            seen.add(key)
            kernel, grid, a, kw = job
            t0 = time.perf_counter()
            kt._warmup(torch.device("cuda"), kernel, grid, a, kw)
            torch.cuda.synchronize()
            rows.append((f"{part} {kernel.fn.__name__}", time.perf_counter() - t0))
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--child", action="store_true")
    a = p.parse_args()
    if a.child:
        for name, s in sequential():
            print(f"COMPILE {name} {s:.3f}")
        return
    env = dict(os.environ, TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="ssd_compile_times_"))
    out = subprocess.run([sys.executable, "-m", "benchmarks.probes.ssd_compile_times", "--child"], env=env,
                         capture_output=True, text=True, timeout=400)
    rows = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("COMPILE")]
    if not rows:
        print(out.stdout[-3000:], out.stderr[-3000:])
    print("| pass | kernel | s |\n|---|---|---|")
    for part, name, s in rows:
        print(f"| {part} | {name} | {s} |")
    print(f"sum {sum(float(r[2]) for r in rows):.2f} s over {len(rows)} compiles")
    from benchmarks.bench_ssd import first_call_subprocess

    firsts = [first_call_subprocess("ours", (8, 2048, 24, 64, 1, 128, 256)) for _ in range(3)]
    for f, fb in firsts:
        print(f"first call: fwd {f:.2f} s, fwd+bwd {fb:.2f} s")
    if a.out:
        import json

        with open(a.out, "w") as fh:
            json.dump(dict(sequential=rows, first_calls=firsts, cpus=os.cpu_count()), fh, indent=1)


if __name__ == "__main__":
    main()
