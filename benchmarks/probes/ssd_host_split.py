"""Where the host time of an eager SSD forward+backward goes (ours, through the plain-eager path), at a shape whose
GPU work is tiny (b1 l256 h4, so every time here is the host's) and at bench_ssd's (b8 l2048 h24):

- the whole step (bench_ssd.fwd_bwd), the forward with grad alone, and the step with the backward pipeline replaced
  by returning gradients computed once (the autograd engine, the Function and the wrapper);
- the bare pipelines (_fwd_triton, _bwd_triton), and the same with every Triton launch skipped (their glue:
  wrappers, allocations, streams); the backward pipeline timed inside the step (where the autograd engine runs it,
  on its device thread), and looped bare on another Python thread;
- inside the launches: microseconds per launch of each kernel (FastLauncher's key and Triton's C launcher), and of
  an empty kernel with 8 and with 76 arguments.

    python3 -m benchmarks.probes.ssd_host_split [--out FILE]
"""
import argparse
import collections
import contextlib
import threading
import time

import torch
import triton
import triton.language as tl

from benchmarks._common import host_us, write_results
from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs


@triton.jit
def _empty(p0, p1, p2, p3, p4, p5, p6, p7, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15, n16,
           n17, n18, n19, n20, n21, n22, n23, n24, n25, n26, n27, n28, n29, n30, n31, n32, n33, n34, n35, n36, n37,
           n38, n39, n40, n41, n42, n43, n44, n45, n46, n47, n48, n49, n50, n51, n52, n53, n54, n55, n56, n57, n58,
           n59, n60, n61, n62, n63, n64, n65, n66, n67, K: tl.constexpr):
    pass


@triton.jit
def _empty8(p0, p1, p2, p3, p4, p5, p6, p7, K: tl.constexpr):
    pass


@contextlib.contextmanager
def launches_skipped():
    """Every FastLauncher launch returns at once (the outputs stay unwritten): what remains is the glue."""
    from mamba_compile.ops import _triton

    real = _triton.fast_run
    _triton.fast_run = lambda kernel, grid, *a, **k: None
    try:
        yield
    finally:
        _triton.fast_run = real


@contextlib.contextmanager
def launches_timed(acc: dict):
    """Adds the host seconds spent in each kernel's launches to acc[kernel name] (with a count)."""
    from mamba_compile.ops import _triton

    real = _triton.fast_run

    def timed(kernel, grid, *a, **k):
        t0 = time.perf_counter()
        out = real(kernel, grid, *a, **k)
        acc[kernel.fn.__name__][0] += time.perf_counter() - t0
        acc[kernel.fn.__name__][1] += 1
        return out

    _triton.fast_run = timed
    try:
        yield
    finally:
        _triton.fast_run = real


def main() -> None:
    from mamba_compile.ops import ssd, _triton

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    ours = impls()["ours"]
    rows = []
    for shape in ((1, 256, 4, 64, 1, 128), (8, 2048, 24, 64, 1, 128)):
        label = "b{} l{} h{} p{} g{} n{}".format(*shape)
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])
        a = (tg["x"], tg["dt"], tg["A"], tg["B"], tg["C"], 128, tg["D"], tg["z"], tg["dt_bias"], None, None, None,
             True, 0.0, ssd._OPEN_BOUND)
        d = [v.detach() if isinstance(v, torch.Tensor) else v for v in a]
        with torch.no_grad():
            pre = ssd._fwd_triton(*d, wrap=False, keep_pre_gate=True)[3]
            grads = ssd._bwd_triton(dout, None, None, *d, wrap=False, pre_gate=pre)
        real_bwd = ssd._eager_backward

        def step():
            fwd_bwd(ours, tg, 256, dout)

        def fwd_only():
            call(ours, tg, 256)

        def step_cached_grads():
            ssd._eager_backward = lambda *args: grads
            try:
                fwd_bwd(ours, tg, 256, dout)
            finally:
                ssd._eager_backward = real_bwd

        fwd_bare = lambda: ssd._fwd_triton(*d, wrap=False, keep_pre_gate=True)  # noqa: E731
        bwd_bare = lambda: ssd._bwd_triton(dout, None, None, *d, wrap=False, pre_gate=pre)  # noqa: E731
        ints = list(range(68))
        x = d[0]
        cases = {
            "fwd+bwd step (bench_ssd)": step,
            "fwd with grad (graph discarded)": fwd_only,
            "fwd+bwd step, backward pipeline replaced by cached grads": step_cached_grads,
            "_fwd_triton": fwd_bare,
            "_bwd_triton": bwd_bare,
            "empty kernel, 8 args": lambda: _triton.launcher(_empty8, False)[(1,)](x, x, x, x, x, x, x, x, K=1),
            "empty kernel, 76 args": lambda: _triton.launcher(_empty, False)[(1,)](x, x, x, x, x, x, x, x, *ints,
                                                                                  K=1),
        }
        for rnd in range(2):
            for name, fn in cases.items():
                us = host_us(fn, n=200)
                rows.append(dict(shape=label, round=rnd, case=name, us=us))
                print(f"{label} r{rnd} {name}: {us:.0f} us", flush=True)
            for name, fn in (("_fwd_triton, launches skipped", fwd_bare), ("_bwd_triton, launches skipped", bwd_bare)):
                with launches_skipped():
                    us = host_us(fn, n=200)
                rows.append(dict(shape=label, round=rnd, case=name, us=us))
                print(f"{label} r{rnd} {name}: {us:.0f} us", flush=True)
        # The backward pipeline's own time inside the step (the autograd engine runs it on its CUDA device thread),
        # and the bare pipeline looped on another Python thread.
        inside = [0.0, 0]

        def timed_bwd(*a):
            t0 = time.perf_counter()
            out = real_bwd(*a)
            inside[0] += time.perf_counter() - t0
            inside[1] += 1
            return out

        ssd._eager_backward = timed_bwd
        try:
            host_us(step, n=200)
        finally:
            ssd._eager_backward = real_bwd
        us = inside[0] / inside[1] * 1e6
        rows.append(dict(shape=label, round=0, case="backward pipeline inside the step (engine thread)", us=us))
        print(f"{label} backward pipeline inside the step: {us:.0f} us", flush=True)
        res = []
        th = threading.Thread(target=lambda: res.append(host_us(bwd_bare, n=200)))
        th.start()
        th.join()
        rows.append(dict(shape=label, round=0, case="_bwd_triton on another thread", us=res[0]))
        print(f"{label} _bwd_triton on another thread: {res[0]:.0f} us", flush=True)
        for name, fn in (("_fwd_triton", fwd_bare), ("_bwd_triton", bwd_bare)):
            acc = collections.defaultdict(lambda: [0.0, 0])
            n = 200
            with launches_timed(acc):
                host_us(fn, n=n, warmup=0)
            total = sum(v[0] for v in acc.values()) / n * 1e6
            print(f"{label} launches in {name}: {total:.0f} us per call", flush=True)
            for kname, (sec, cnt) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
                us = sec / cnt * 1e6
                rows.append(dict(shape=label, round=0, case=f"launch {kname} (in {name}, x{cnt // n})", us=us))
                print(f"    {kname}: {us:.1f} us per launch, {cnt // n} per call", flush=True)
    print()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
