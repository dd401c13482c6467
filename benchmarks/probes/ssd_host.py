"""Host (Python and launch) time of one eager SSD forward, ours and the reference's, at a shape whose GPU work is
tiny (b1 l256 h4), broken down by layer (public wrapper, op dispatch, argument checks, the bare Triton pipeline,
each launch, an empty Triton launch), and a cProfile of ours: where an eager call's time goes when the GPU is not
the limit.

    python3 -m benchmarks.probes.ssd_host [--profile] [--profile-bwd]

``--profile-bwd``: the host time of an eager forward+backward, ours and the reference's, and a cProfile of ours.
``--pieces``: at the tiny shape and the benchmark's (b8 l2048 h24), the wall time per eager call (host or GPU,
whichever is longer) of ours through the eager shortcut (ssd._EagerScan) and through the custom ops, alternating,
and of the reference; then the bare pipelines and an empty autograd.Function (the autograd engine's own cost).
``--streams``: at both shapes, our eager forward+backward with the backward's second stream (ssd.SIDE_STREAM) on,
off and "auto", alternating over twelve rounds, medians (commit 6e51539's version also ran ssd._Fork as it was
before session 30): wall time per call (host_us) and do_bench's median (bench_ssd's eager row):
what the second stream costs the host where the step is host-bound.
``--split [--out FILE]``: where our eager forward+backward's host time goes, at both shapes: the step, the forward
with grad alone, the step with the backward pipeline replaced by gradients computed once (the engine, the Function,
the wrapper); the bare pipelines with every Triton launch skipped (their glue: wrappers, allocations, streams); the
backward pipeline timed inside the step (on the autograd engine's device thread) and looped on another Python
thread; and each kernel's launches timed where the pipelines make them (launch_overhead.py times them one by one).
"""
import argparse
import collections
import contextlib
import cProfile
import pstats
import threading
import time

import torch
import triton
import triton.language as tl

from benchmarks._common import host_us, write_results
from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs


@triton.jit
def _empty(p0, p1, p2, p3, p4, p5, p6, p7, n0, n1, n2, n3, n4, n5, n6, n7, n8, n9, n10, n11, n12, n13, n14, n15, n16,
           n17, n18, n19, K: tl.constexpr):
    """An empty kernel with as many arguments as an SSD launch: the Triton launch path's own cost (a kernel
    defined in a function cannot see ``tl``, which the jit resolves among the module's globals)."""
    pass


def layers(t):
    """Per-layer host costs of our forward (no grad)."""
    from mamba_compile.ops import ssd, ssd_triton as kt

    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 256, t["D"], t["z"], t["dt_bias"], None, None, None, True,
            0.0, ssd._OPEN_BOUND)
    x, dt, A, B, C, cs, D, z, dt_bias = args[:9]
    dtp, dA_cs = kt.chunk_cumsum_fwd(dt, A, dt_bias, cs, True, 0.0, ssd._OPEN_BOUND, False, wrap=False)
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    cb = kt.bmm_cb_fwd(C, B, cs, wrap=False)

    ints = list(range(1, 21))
    rows = {
        "public wrapper (ssd_chunk_scan)": lambda: call(ssd.ssd_chunk_scan, t, 256),
        "torch.ops...ssd_chunk_scan_fwd": lambda: torch.ops.mamba_compile.ssd_chunk_scan_fwd(*args),
        "op body (the triton_op's function)": lambda: ssd.ssd_chunk_scan_fwd._init_fn(*args),
        "_check_args": lambda: ssd._check_args(*args[:12]),
        "_config_key": lambda: ssd._config_key(args),
        "_fwd_triton(wrap=False)": lambda: ssd._fwd_triton(*args, wrap=False),
        "chunk_cumsum_fwd": lambda: kt.chunk_cumsum_fwd(dt, A, dt_bias, cs, True, 0.0, ssd._OPEN_BOUND, False,
                                                        wrap=False),
        "chunk_state_passing_fwd": lambda: kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None,
                                                                      prev_dtype=C.dtype, wrap=False),
        "bmm_cb_fwd": lambda: kt.bmm_cb_fwd(C, B, cs, wrap=False),
        "chunk_scan_fwd": lambda: kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb, wrap=False),
        "empty triton kernel, 8 ptr + 20 int args": lambda: _empty[(1,)](x, x, x, x, x, x, x, x, *ints, K=1),
        "torch.empty x4": lambda: [torch.empty(1, 4, 1, 256, device="cuda") for _ in range(4)],
    }
    for name, fn in rows.items():
        try:
            print(f"  {name}: {host_us(fn):.1f} us", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"  {name}: failed {type(e).__name__}: {e}", flush=True)


def profile_bwd():
    tg = make_inputs(1, 256, 4, 64, 1, 128, requires_grad=True)
    dout = torch.randn_like(tg["x"])

    def step(fn):
        fwd_bwd(fn, tg, 256, dout)

    fns = impls()
    for name, fn in fns.items():
        print(f"{name}: {host_us(lambda: step(fn), n=200):.0f} us per eager forward+backward", flush=True)
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(200):
        step(fns["ours"])
    torch.cuda.synchronize()
    prof.disable()
    st = pstats.Stats(prof)
    st.sort_stats("tottime").print_stats(45)
    st.sort_stats("cumulative").print_stats(60)


class _Empty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, *a):
        return a[0].new_empty(a[0].shape)

    @staticmethod
    def backward(ctx, g):
        return (g,) + (None,) * 7


def pieces(rounds=2):
    from mamba_compile.ops import ssd

    fns = impls()
    plain = ssd._plain_eager
    paths = {"ours, eager shortcut": plain, "ours, custom ops": lambda *t: False}
    for shape in ((1, 256, 4, 64, 1, 128), (8, 2048, 24, 64, 1, 128)):
        t = make_inputs(*shape)
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(t["x"])
        cases = {
            "fwd, no grad": lambda fn: torch.no_grad()(lambda: call(fn, t, 256))(),
            "fwd, inputs require grad": lambda fn: call(fn, tg, 256),
            "fwd+bwd": lambda fn: fwd_bwd(fn, tg, 256, dout),
        }
        print(shape, flush=True)
        for case, run in cases.items():
            for r in range(rounds):
                for label, pred in paths.items():
                    ssd._plain_eager = pred
                    print(f"  {case}, {label}: {host_us(lambda: run(fns['ours']), n=100):.0f} us", flush=True)
                ssd._plain_eager = plain
                if "reference" in fns:
                    print(f"  {case}, reference: {host_us(lambda: run(fns['reference']), n=100):.0f} us", flush=True)
        args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 128, t["D"], t["z"], t["dt_bias"], None, None, None, True,
                0.0, ssd._OPEN_BOUND)
        with torch.no_grad():
            kept = ssd._kept(ssd._fwd_triton(*args, wrap=False, keep=True), args[7])

        def empty_step():
            for v in tg.values():
                v.grad = None
            _Empty.apply(*(tg[k] for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias"))).backward(dout)

        rows = {
            "_fwd_triton, no dispatch": lambda: ssd._fwd_triton(*args, wrap=False, keep=True),
            "_bwd_triton, no dispatch": lambda: ssd._bwd_triton(dout, None, None, *args, wrap=False, **kept),
            "backward op through torch.ops": lambda: torch.ops.mamba_compile.ssd_chunk_scan_bwd(
                dout, None, None, *args, kept["pre_gate"], *kept["states"]),
            "empty autograd.Function, 8 inputs, fwd+bwd": empty_step,
        }
        for name, fn in rows.items():
            print(f"  {name}: {host_us(fn, n=100):.0f} us", flush=True)


@contextlib.contextmanager
def _launches_skipped():
    """Every FastLauncher launch returns at once (the outputs stay unwritten): what remains is the glue."""
    from mamba_compile.ops import _triton

    real = _triton.fast_run
    _triton.fast_run = lambda kernel, grid, *a, **k: None
    try:
        yield
    finally:
        _triton.fast_run = real


@contextlib.contextmanager
def _launches_timed(acc: dict):
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


def split(out=None):
    """See --split in the module docstring."""
    from mamba_compile.ops import ssd

    ours = impls()["ours"]
    rows = []

    def row(label, rnd, case, us):
        rows.append(dict(shape=label, round=rnd, case=case, us=us))
        print(f"{label} r{rnd} {case}: {us:.0f} us", flush=True)

    for shape in ((1, 256, 4, 64, 1, 128), (8, 2048, 24, 64, 1, 128)):
        label = "b{} l{} h{} p{} g{} n{}".format(*shape)
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])
        args = (tg["x"], tg["dt"], tg["A"], tg["B"], tg["C"], 128, tg["D"], tg["z"], tg["dt_bias"], None, None, None,
                True, 0.0, ssd._OPEN_BOUND)
        d = [v.detach() if isinstance(v, torch.Tensor) else v for v in args]
        with torch.no_grad():
            kept = ssd._kept(ssd._fwd_triton(*d, wrap=False, keep=True), d[7])
            grads = ssd._bwd_triton(dout, None, None, *d, wrap=False, **kept)
        real_bwd = ssd._eager_backward

        def step():
            fwd_bwd(ours, tg, 256, dout)

        def step_cached_grads():
            ssd._eager_backward = lambda *a: grads
            try:
                step()
            finally:
                ssd._eager_backward = real_bwd

        fwd_bare = lambda: ssd._fwd_triton(*d, wrap=False, keep=True)  # noqa: E731
        bwd_bare = lambda: ssd._bwd_triton(dout, None, None, *d, wrap=False, **kept)  # noqa: E731
        cases = {
            "fwd+bwd step (bench_ssd)": step,
            "fwd with grad (graph discarded)": lambda: call(ours, tg, 256),
            "fwd+bwd step, backward pipeline replaced by cached grads": step_cached_grads,
            "_fwd_triton": fwd_bare,
            "_bwd_triton": bwd_bare,
        }
        for rnd in range(2):
            for case, fn in cases.items():
                row(label, rnd, case, host_us(fn, n=200))
            with _launches_skipped():
                row(label, rnd, "_fwd_triton, launches skipped", host_us(fwd_bare, n=200))
                row(label, rnd, "_bwd_triton, launches skipped", host_us(bwd_bare, n=200))
        inside = [0.0, 0]

        def timed_bwd(*a):
            t0 = time.perf_counter()
            res = real_bwd(*a)
            inside[0] += time.perf_counter() - t0
            inside[1] += 1
            return res

        ssd._eager_backward = timed_bwd
        try:
            host_us(step, n=200)
        finally:
            ssd._eager_backward = real_bwd
        row(label, 0, "backward pipeline inside the step (engine thread)", inside[0] / inside[1] * 1e6)
        res = []
        th = threading.Thread(target=lambda: res.append(host_us(bwd_bare, n=200)))
        th.start()
        th.join()
        row(label, 0, "_bwd_triton on another thread", res[0])
        for name, fn in (("_fwd_triton", fwd_bare), ("_bwd_triton", bwd_bare)):
            acc = collections.defaultdict(lambda: [0.0, 0])
            n = 200
            with _launches_timed(acc):
                host_us(fn, n=n, warmup=0)
            print(f"{label} launches in {name}: {sum(v[0] for v in acc.values()) / n * 1e6:.0f} us per call", flush=True)
            for kname, (sec, cnt) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
                rows.append(dict(shape=label, round=0, case=f"launch {kname} (in {name}, x{cnt // n})",
                                 us=sec / cnt * 1e6))
                print(f"    {kname}: {sec / cnt * 1e6:.1f} us per launch, {cnt // n} per call", flush=True)
    print()
    write_results(rows, out)


def streams(rounds=12):
    from benchmarks._common import bench_ms
    from mamba_compile.ops import ssd

    ours = impls()["ours"]
    default = ssd.SIDE_STREAM
    variants = {"two streams": True, "one stream": False, "auto": "auto"}
    try:
        for shape in ((1, 256, 4, 64, 1, 128), (8, 2048, 24, 64, 1, 128)):
            tg = make_inputs(*shape, requires_grad=True)
            dout = torch.randn_like(tg["x"])
            step = lambda: fwd_bwd(ours, tg, 256, dout)  # noqa: E731
            res = collections.defaultdict(lambda: ([], []))
            for _ in range(rounds):
                for name, side in variants.items():
                    ssd.SIDE_STREAM = side
                    step()
                    res[name][0].append(host_us(step, n=100))
                    res[name][1].append(bench_ms(step))
            for name, (us, ms) in res.items():
                print(f"{shape} {name}: median {sorted(us)[len(us) // 2]:.0f} us a call (range {min(us):.0f}-"
                      f"{max(us):.0f}), do_bench median {sorted(ms)[len(ms) // 2]:.3f} ms (range {min(ms):.3f}-"
                      f"{max(ms):.3f}), {rounds} rounds", flush=True)
    finally:
        ssd.SIDE_STREAM = default


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-bwd", action="store_true")
    ap.add_argument("--pieces", action="store_true")
    ap.add_argument("--split", action="store_true")
    ap.add_argument("--streams", action="store_true")
    ap.add_argument("--out", default=None, help="with --split: the rows as JSON")
    a = ap.parse_args()
    if a.split:
        return split(a.out)
    if a.streams:
        return streams()
    if a.pieces:
        return pieces()
    if a.profile_bwd:
        return profile_bwd()
    t = make_inputs(1, 256, 4, 64, 1, 128)
    fns = impls()
    with torch.no_grad():
        for name, fn in fns.items():
            print(f"{name}: {host_us(lambda: call(fn, t, 256)):.0f} us per eager forward (no grad)", flush=True)
        tg = make_inputs(1, 256, 4, 64, 1, 128, requires_grad=True)
        for name, fn in fns.items():
            with torch.enable_grad():
                print(f"{name}: {host_us(lambda: call(fn, tg, 256)):.0f} us per eager forward (inputs require grad)",
                      flush=True)
        print("ours, by layer (no grad):")
        layers(t)
        if a.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(200):
                call(fns["ours"], t, 256)
            torch.cuda.synchronize()
            prof.disable()
            st = pstats.Stats(prof)
            st.sort_stats("tottime").print_stats(30)
            st.sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
