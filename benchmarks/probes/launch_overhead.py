"""Host cost of one Triton launch, through Triton's JITFunction.run and through _triton.FastLauncher, for every
kernel of the SSD's eager forward and backward (launches recorded at a tiny shape, so the GPU keeps up with the
host); then, with FAST_LAUNCH on and off, alternating: eager SSD calls at the tiny shape and the benchmark's, and a
tiny Mamba-1 and Mamba-2 model (d_model 256, 4 layers, bf16, batch 1) called eagerly: forward and forward+backward on
64 tokens, and generate(compile=False) of 32 tokens (the decode ops' eager launches).

    python3 -m benchmarks.probes.launch_overhead

Per kernel, in us per launch: Triton's path; FastLauncher; its binder alone (the specialisation, Triton's native
code); the compiled kernel's launcher alone (the floor of any Python launch path). Op rows: host_us of an eager
call (host or GPU time, whichever is longer), and do_bench medians, the method of the README's eager rows. Model
rows: host_us medians over three rounds (generate: ms per call).
"""
import argparse

import torch

from benchmarks._common import bench_ms, host_us, tiny_model
from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs


def _launch_rows(n=500):
    from mamba_compile.ops import _triton, ssd, ssd_triton as kt

    t = make_inputs(1, 256, 4, 64, 1, 128)
    dout = torch.randn_like(t["x"])
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 128, t["D"], t["z"], t["dt_bias"], None, None, None, True,
            0.0, ssd._OPEN_BOUND)
    with torch.no_grad():
        kept = ssd._kept(ssd._fwd_triton(*args, wrap=False, keep=True), args[7])
        ssd._bwd_triton(dout, None, None, *args, wrap=False, **kept)
    jobs = kt.record_launches(ssd._fwd_triton, *args, wrap=False, keep=True)
    jobs += kt.record_launches(ssd._bwd_triton, dout, None, None, *args, wrap=False, **kept)
    device = torch.cuda.current_device()
    print("kernel (args): triton / fast / binder / launcher alone, us per launch", flush=True)
    for kernel, grid, a, kw in jobs:
        fast = _triton.FastLauncher(kernel)[grid]
        compiled = fast(*a, **dict(kw))
        binder = kernel.device_caches[device][4]
        full = dict(kw, debug=False, instrumentation_mode="")
        bound = binder(*a, **full)[0]
        vals = tuple(bound.values())
        g = tuple(grid) + (1,) * (3 - len(grid))
        stream = torch._C._cuda_getCurrentRawStream(device)

        def raw():
            compiled.run(*g, stream, compiled.function, compiled.packed_metadata, None, None, None, *vals)

        rows = {
            "triton": lambda: kernel[grid](*a, **dict(kw)),
            "fast": lambda: fast(*a, **dict(kw)),
            "binder": lambda: binder(*a, **full),
            "launcher": raw,
        }
        us = {k: host_us(f, n=n) for k, f in rows.items()}
        print(f"  {kernel.fn.__name__} ({len(a) + len(kw)}): " + " / ".join(f"{v:.1f}" for v in us.values()),
              flush=True)


def _op_rows(rounds=2):
    from mamba_compile.ops import _triton

    ours = impls()["ours"]
    for shape in ((1, 256, 4, 64, 1, 128), (8, 2048, 24, 64, 1, 128)):
        t = make_inputs(*shape)
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(t["x"])
        cases = {
            "fwd, no grad": torch.no_grad()(lambda: call(ours, t, 256)),
            "fwd+bwd": lambda: fwd_bwd(ours, tg, 256, dout),
        }
        print(shape, flush=True)
        for case, fn in cases.items():
            for _ in range(rounds):
                for fast in (True, False):
                    _triton.FAST_LAUNCH = fast
                    fn()
                    print(f"  {case}, fast launch {'on' if fast else 'off'}: host_us {host_us(fn, n=100):.0f} us, "
                          f"do_bench {bench_ms(fn):.3f} ms", flush=True)
        _triton.FAST_LAUNCH = True


def _model_rows(rounds=3):
    import statistics

    from mamba_compile.ops import _triton

    for arch in ("mamba1", "mamba2"):
        model, ids = tiny_model(arch)
        cases = {
            "fwd": torch.no_grad()(lambda: model(ids)),
            "fwd+bwd": lambda: model(ids).logits.float().sum().backward(),
            "generate 32": lambda: model.generate(ids[:, :8], 32, compile=False),
        }
        for what, fn in cases.items():
            got = {True: [], False: []}
            for _ in range(rounds):
                for fast in got:
                    _triton.FAST_LAUNCH = fast
                    got[fast].append(host_us(fn, n=5 if what.startswith("generate") else 60, warmup=3))
            _triton.FAST_LAUNCH = True
            print(f"  {arch} {what}: fast launch on {statistics.median(got[True]):.0f} us "
                  f"({' '.join(f'{u:.0f}' for u in got[True])}), off {statistics.median(got[False]):.0f} us "
                  f"({' '.join(f'{u:.0f}' for u in got[False])})", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip-kernels", action="store_true")
    a = ap.parse_args()
    if not a.skip_kernels:
        _launch_rows()
    _op_rows()
    _model_rows()


if __name__ == "__main__":
    main()
