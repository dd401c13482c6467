"""SSD kernels on the GPU: per-kernel times and correctness of variants, the op's times, compile times.

    python3 -m benchmarks.probes.ssd_sweep                 # state-passing variants, a few chunk_scan ones,
                                                           # the backward's kernels, the op (both shapes)
    python3 -m benchmarks.probes.ssd_sweep --scan-grid     # + the full grid of chunk_scan variants
    python3 -m benchmarks.probes.ssd_sweep --mode all      # + compile times in fresh processes and caches

Every forward variant's output is checked against the chunked torch path (``ssd._ssd_torch``, float32, run on
the GPU) and timed with do_bench; the op's gradients are checked against the same path at the first shape.
The kernels of all variants are compiled up front, concurrently (ssd_triton.compile_async). ``--mode
compile`` / ``concurrent`` time the op's twelve kernels compiled one after another / all at once.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import os
import subprocess
import sys
import time

import torch

from benchmarks._common import bench_ms, graph_ms
from benchmarks.bench_ssd import make_inputs

ssd = importlib.import_module("mamba_compile.ops.ssd")

SHAPES = {"b8 l2048 h24": (8, 2048, 24, 64, 1, 128), "b2 l8192 h80": (2, 8192, 80, 64, 1, 128)}
# The chunk the op's CUDA kernels run the benchmarks' chunk_size 256 at (ssd.CUDA_CHUNK_MAX caps it); the
# environment's SSD_PROBE_CHUNK overrides it.
CHUNK = int(os.environ.get("SSD_PROBE_CHUNK", min(256, ssd.CUDA_CHUNK_MAX)))


def args_of(t):
    return (t["x"], t["dt"], t["A"], t["B"], t["C"], CHUNK, t["D"], t["z"], t["dt_bias"], None, None, None, True,
            0.0, ssd._OPEN_BOUND)


def shape_inputs(shape):
    """Benchmark inputs at ``shape`` (bf16, as bench_ssd makes them) and the forward's chunked dt: (t, x, dt, A,
    B, C, D, z, dt_bias, dt_proc, dA_cumsum), as the kernel probes start from."""
    from benchmarks.bench_ssd import make_inputs
    from mamba_compile.ops import ssd_triton as kt

    t = make_inputs(*shape)
    x, dt, A, B, C = args_of(t)[:5]
    dtp, dA_cs = kt.chunk_cumsum_fwd(dt, A, t["dt_bias"], CHUNK, True, 0.0, ssd._OPEN_BOUND, False, wrap=False)
    return t, x, dt, A, B, C, t["D"], t["z"], t["dt_bias"], dtp, dA_cs


def chunk_states(x, B, C, dtp, dA_cs):
    """What the chunk kernels' probes feed them beside shape_inputs: the forward's states entering each chunk (in C's
    dtype, as the op stores them), a random dy, and the backward's state gradients from it: (prev, dy, dend)."""
    from mamba_compile.ops import ssd_triton as kt

    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    dy = torch.randn_like(x)
    dend, _, _ = kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, None, None, False, dend_dtype=C.dtype, wrap=False)
    return prev, dy, dend


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def on_off_rows(name: str, kernels: dict, label: str) -> list[dict]:
    """The kernel rows of a probe of a switch: for each of ``kernels`` (name -> run(value), returning a tensor or a
    sequence of them), the largest difference of its outputs with the switch on and off, relative to the largest value
    (expected 0), then CUDA-graph medians off, on, off, on; rows (shape, what: "{name}, {label}: {value}", ms, diff),
    printed as they come."""
    rows = []
    for kname, run in kernels.items():
        on, off = (o if isinstance(o, (list, tuple)) else [o] for o in (run(True), run(False)))
        diff = max(rel_err(a, b) for a, b in zip(on, off))
        for value in (False, True, False, True):
            rows.append(dict(shape=name, what=f"{kname}, {label}: {value}", ms=graph_ms(lambda: run(value)), diff=diff))
            print(rows[-1], flush=True)
    return rows


def ab_probe(kernel_rows, variants: dict, restore, label: str, forward: bool = True) -> None:
    """The main of the A/B probes (ssd_grid_order; setting_probe's): ``--out``; for each
    benchmark shape, ``kernel_rows(name, shape)`` (the kernels' own rows), then op_variant_rows over ``variants``,
    after which ``restore()`` puts the default back; the table written at the end."""
    from benchmarks._common import device_name, write_results

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), f"chunk {CHUNK}", flush=True)
    rows = []
    for name, shape in SHAPES.items():
        rows += kernel_rows(name, shape)
        try:
            rows += op_variant_rows(name, shape, variants, label, forward)
        finally:
            restore()
    write_results(rows, args.out)


def setting_probe(kernel_rows, module, attr: str, values, label: str, forward: bool = True) -> None:
    """ab_probe over the values of one module-level setting (``module.attr``), put back to its default afterwards:
    the main of ssd_fused_cumsum, ssd_fwd_cb, ssd_db_split and ssd_dcb_split."""
    default = getattr(module, attr)
    ab_probe(kernel_rows, {v: lambda v=v: setattr(module, attr, v) for v in values},
             lambda: setattr(module, attr, default), label, forward)


def op_variant_rows(name, shape, variants: dict, label: str, forward: bool = True) -> list[dict]:
    """The op's graphed forward (no grad, if ``forward``) and forward+backward at ``shape`` for each of ``variants``
    (value -> a function that switches to it; the caller restores the default), alternating: rows (shape, what:
    "op fwd, {label}: {value}", ms), printed as they come."""
    from benchmarks._common import alternating_graph_ms
    from benchmarks.bench_ssd import call, fwd_bwd, impls

    fn = impls()["ours"]
    ti = make_inputs(*shape)
    tg = make_inputs(*shape, requires_grad=True)
    dout = torch.randn_like(tg["x"])
    steps = {"op fwd": torch.no_grad()(lambda: call(fn, ti, 256))} if forward else {}
    steps["op fwd+bwd"] = lambda: fwd_bwd(fn, tg, 256, dout)
    rows = []
    for what, step in steps.items():
        for value, ms in alternating_graph_ms(step, variants):
            rows.append(dict(shape=name, what=f"{what}, {label}: {value}", ms=ms))
            print(rows[-1], flush=True)
    del ti, tg
    torch.cuda.empty_cache()
    return rows


def sweep(quick: bool, budget_s: float, scan_grid: bool):
    from mamba_compile.ops import ssd_triton as kt

    t_start = time.perf_counter()
    best_scans = None
    for name, shape in SHAPES.items():
        t = make_inputs(*shape)
        args = args_of(t)
        x, dt, A, B, C = args[:5]
        D, z, bias = t["D"], t["z"], t["dt_bias"]
        with torch.no_grad():
            want = ssd._ssd_torch(*[a.float() if isinstance(a, torch.Tensor) else a for a in args])[0]
        dtp, dA_cs = kt.chunk_cumsum_fwd(dt, A, bias, CHUNK, True, 0.0, ssd._OPEN_BOUND, False, wrap=False)
        print(f"\n## {name}")
        print(f"cumsum {bench_ms(lambda: kt.chunk_cumsum_fwd(dt, A, bias, CHUNK, True, 0.0, ssd._OPEN_BOUND, False, wrap=False)):.4f} ms")
        print(f"chunk_state (separate, old) {bench_ms(lambda: kt.chunk_state_fwd(x, B, dtp, dA_cs, None, wrap=False)):.4f} ms")
        # fused chunk state + passing (one flat loop over tiles of block_k positions)
        sp_variants = [dict(prev_dtype=pd, block_n=bn, block_k=bk, num_stages=ns)
                       for pd in (torch.bfloat16, torch.float32) for bn in (64, 128) for bk in (32, 64, 128)
                       for ns in (2, 3)]
        if quick:
            sp_variants = sp_variants[:2]
        ref_prev, ref_final = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, wrap=False)
        with torch.no_grad():
            want_final = ssd._ssd_torch(*[a.float() if isinstance(a, torch.Tensor) else a for a in args])[1]
        print(f"default state+passing: final rel err vs fp32 torch {rel_err(ref_final, want_final):.2e}")
        jobs = []
        for v in sp_variants:
            jobs += kt.record_launches(kt.chunk_state_passing_fwd, x, B, dtp, dA_cs, None, None, wrap=False, **v)
        for cbd in (torch.bfloat16, torch.float32):
            for bt in (64, 128):
                jobs += kt.record_launches(kt.bmm_cb_fwd, C, B, CHUNK, dtype=cbd, block_t=bt, wrap=False)
        scan_variants = best_scans or (list(itertools.product(
            (None, torch.bfloat16, torch.float32), ((64, 64), (128, 64), (128, 32), (64, 32)), (4, 8), (1, 2),
            (torch.bfloat16, torch.float32))) if scan_grid else [
            (torch.float32, (64, 64), 4, 1, torch.bfloat16), (torch.bfloat16, (64, 64), 4, 1, torch.bfloat16),
            (torch.float32, (64, 64), 4, 2, torch.bfloat16), (None, (64, 64), 4, 2, torch.float32)])
        if quick:
            scan_variants = scan_variants[:3]
        prevs = {pd: ref_prev.to(pd) for pd in (torch.bfloat16, torch.float32)}
        cbs = {cbd: kt.bmm_cb_fwd(C, B, CHUNK, dtype=cbd, wrap=False) for cbd in (torch.bfloat16, torch.float32)}
        cbs[None] = None

        def scan(v):
            cbd, (bt, bs), nw, ns, pd = v
            return lambda: kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prevs[pd], D, z, None, cb=cbs[cbd],
                                             config=dict(block_t=bt, block_s=bs, num_warps=nw, num_stages=ns),
                                             wrap=False)

        for v in scan_variants:
            jobs += kt.record_launches(scan(v))
        t0 = time.perf_counter()
        kt.wait(kt.compile_async(jobs, x.device, set()))
        print(f"compiled {len(jobs)} variant kernels concurrently in {time.perf_counter() - t0:.1f} s")

        print("| state+passing variant | ms | prev rel err vs default | final rel err vs fp32 torch |\n|---|---|---|---|")
        for v in sp_variants:
            f = lambda: kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, wrap=False, **v)  # noqa: E731
            prev, final = f()
            ms = bench_ms(f)
            print(f"| {str(v['prev_dtype'])[6:]} n{v['block_n']} k{v['block_k']} s{v['num_stages']} | {ms:.4f} | "
                  f"{rel_err(prev, ref_prev):.2e} | {rel_err(final, want_final):.2e} |")
        for cbd in (torch.bfloat16, torch.float32):
            for bt in (64, 128):
                ms = bench_ms(lambda: kt.bmm_cb_fwd(C, B, CHUNK, dtype=cbd, block_t=bt, wrap=False))
                print(f"bmm_cb {str(cbd)[6:]} tile{bt}: {ms:.4f} ms")
        rows = []
        for v in scan_variants:
            if time.perf_counter() - t_start > budget_s:
                print("(time budget reached: remaining scan variants not timed)")
                break
            f = scan(v)
            try:
                kernel, grid, kargs, kw = kt.record_launches(f)[0]
                ck = kernel.warmup(*kargs, grid=grid, **kw)
                ck._init_handles()
                res = f"regs {ck.n_regs} spills {ck.n_spills} smem {ck.metadata.shared}"
                err = rel_err(f(), want)
                rows.append((bench_ms(f), err, v, res))
            except Exception as e:  # noqa: BLE001
                rows.append((float("inf"), float("nan"), v, f"{type(e).__name__}: {str(e)[:80]}"))
        rows.sort(key=lambda r: r[0])
        best_scans = [r[2] for r in rows[:6]]
        print("| chunk_scan: cb, (block_t, block_s), warps, stages, prev | ms | out rel err vs fp32 torch | kernel |")
        print("|---|---|---|---|")
        for ms, err, (cbd, tiles, nw, ns, pd), res in rows:
            print(f"| {str(cbd)[6:] if cbd else 'recompute'} {tiles} w{nw} s{ns} prev {str(pd)[6:]} | {ms:.4f} | "
                  f"{err:.2e} | {res} |")
        # The op as it stands (defaults), and how much of it is CPU-side launch work.
        with torch.no_grad():
            out = ssd.ssd_chunk_scan(x, dt, A, B, C, CHUNK, D=D, z=z, dt_bias=bias, dt_softplus=True)
            print(f"op default: out rel err {rel_err(out, want):.2e}")
            fwd_ms = bench_ms(lambda: ssd.ssd_chunk_scan(x, dt, A, B, C, CHUNK, D=D, z=z, dt_bias=bias,
                                                         dt_softplus=True))
            torch.cuda.synchronize()
            n = 200
            t0 = time.perf_counter()
            for _ in range(n):
                ssd.ssd_chunk_scan(x, dt, A, B, C, CHUNK, D=D, z=z, dt_bias=bias, dt_softplus=True)
            cpu_ms = (time.perf_counter() - t0) / n * 1e3
            torch.cuda.synchronize()
        print(f"op default fwd: {fwd_ms:.4f} ms (device), host submit {cpu_ms:.4f} ms per call")
        # backward, with grads checked against the torch path
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])

        def step():
            for v in tg.values():
                v.grad = None
            ssd.ssd_chunk_scan(tg["x"], tg["dt"], tg["A"], tg["B"], tg["C"], CHUNK, D=tg["D"], z=tg["z"],
                               dt_bias=tg["dt_bias"], dt_softplus=True).backward(dout)

        print(f"op default fwd+bwd: {bench_ms(step):.4f} ms")
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        print(f"op default fwd+bwd host submit {(time.perf_counter() - t0) / 20 * 1e3:.4f} ms per step")
        torch.cuda.synchronize()
        backward_kernels(kt, x, dt, A, B, C, D, z, bias, dtp, dA_cs)
        if name.startswith("b8"):
            step()
            print("grad rel err vs fp32 torch: " + grad_errors(tg, dout))
        del t, tg
        torch.cuda.empty_cache()


def grad_errors(tg, dout) -> str:
    """The gradients in tg's .grad (the op's, after a backward of dout) against the float32 torch path's, each as
    max abs error / max abs value."""
    got = {k: v.grad.clone() for k, v in tg.items()}
    leaves = {k: v.detach().float().requires_grad_() for k, v in tg.items()}
    o = ssd._ssd_torch(leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], CHUNK, leaves["D"],
                       leaves["z"], leaves["dt_bias"], None, None, None, True, 0.0, ssd._OPEN_BOUND)[0]
    o.backward(dout.float())
    return ", ".join(f"{k} {rel_err(got[k], leaves[k].grad):.1e}" for k in got)


def backward_kernels(kt, x, dt, A, B, C, D, z, bias, dtp, dA_cs):
    """Each launch function of the backward, timed alone on realistic tensors; the chunk-boundary states and
    their gradients in C's dtype (as the op stores them for 16-bit inputs) and, for comparison, in float32."""
    dout = torch.randn_like(x)
    prev32, final = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, wrap=False)
    prev = prev32.to(C.dtype)
    dy, dz = kt.chunk_scan_bwd_dz(dout, x, B, C, dtp, dA_cs, prev32, D, z, None, wrap=False)
    pre_gate = torch.randn_like(x)  # stands in for a kept pre-gate output (timing only)
    dprev = kt.chunk_state_fwd(dy, C, dtp, dA_cs, None, from_start=True, wrap=False)
    dend32, dinit, dchunk = kt.state_passing_bwd(dprev, dA_cs, prev32, None, None, x.shape[1], False, wrap=False)
    dend = dend32.to(C.dtype)
    dcb = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, B.shape[2], None, wrap=False)
    ddt_x, col, colstate = (torch.randn_like(dtp) for _ in range(3))
    row = torch.randn(*dtp.shape[:3], dtp.shape[3] // min(kt.BLOCK_T_MAX, dtp.shape[3]), dtp.shape[3],
                      device=dtp.device)
    da = torch.randn_like(dtp)
    parts = {
        "bwd_dz (z, y recomputed)": lambda ns: kt.chunk_scan_bwd_dz(dout, x, B, C, dtp, dA_cs, prev32, D, z, None,
                                                                    wrap=False),
        "gate_bwd (z, kept pre-gate output)": lambda ns: kt.gate_bwd(dout, z, pre_gate, wrap=False),
        "state_passing_fwd 16-bit prev (bwd recompute)": lambda ns: kt.chunk_state_passing_fwd(
            x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False),
        "state_passing_fwd fp32 prev": lambda ns: kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None,
                                                                               wrap=False),
        "chunk_state from_start (dprev)": lambda ns: kt.chunk_state_fwd(dy, C, dtp, dA_cs, None, from_start=True,
                                                                        wrap=False),
        "state_passing_bwd 16-bit": lambda ns: kt.state_passing_bwd(dprev, dA_cs, prev, None, None, x.shape[1],
                                                                    False, dend_dtype=C.dtype, wrap=False),
        "state_passing_bwd fp32": lambda ns: kt.state_passing_bwd(dprev, dA_cs, prev32, None, None, x.shape[1],
                                                                  False, wrap=False),
        "bwd_dx": lambda ns: kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, num_stages=ns,
                                                  wrap=False),
        "bwd_dx fp32 dend": lambda ns: kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend32, D, None, num_stages=ns,
                                                            wrap=False),
        "bwd_dcb": lambda ns: kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, B.shape[2], None, wrap=False),
        "bwd_dB": lambda ns: kt.chunk_scan_bwd_dB(x, B, C, dcb, dtp, dA_cs, dy, dend, None, num_stages=ns, wrap=False),
        "bwd_dB fp32 dend": lambda ns: kt.chunk_scan_bwd_dB(x, B, C, dcb, dtp, dA_cs, dy, dend32, None, num_stages=ns,
                                                            wrap=False),
        "bwd_dC (+ dy . y_state)": lambda ns: kt.chunk_scan_bwd_dC(x, B, C, dcb, dtp, dA_cs, dy, prev, None,
                                                                   num_stages=ns, wrap=False),
        "bwd_dC fp32 prev": lambda ns: kt.chunk_scan_bwd_dC(x, B, C, dcb, dtp, dA_cs, dy, prev32, None,
                                                            num_stages=ns, wrap=False),
        "dt_bwd": lambda ns: kt.dt_bwd(dt, bias, A, dtp, ddt_x, None, da, col, colstate, row, dchunk, True, 0.0,
                                       ssd._OPEN_BOUND, False, wrap=False),
    }
    for name, f in parts.items():
        stages = (1, 2) if name.startswith(("bwd_dx", "bwd_dB", "bwd_dC")) else (2,)
        print(f"bwd kernel {name}: " + ", ".join(f"stages {ns} {bench_ms(lambda: f(ns)):.4f} ms" for ns in stages))


def compile_times():
    """In this (fresh) process: each kernel of the forward and backward compiled alone, one after another."""
    from mamba_compile.ops import ssd_triton as kt

    args = args_of(make_inputs(*SHAPES["b8 l2048 h24"], requires_grad=True))
    fwd, bwd = ssd._recorded_launches(args, with_backward=True)
    seen, total = set(), 0.0
    for part, jobs in (("fwd", fwd), ("bwd", bwd)):
        for job in jobs:
            if kt._spec_key(job) in seen:
                continue
            seen.add(kt._spec_key(job))
            t0 = time.perf_counter()
            kt._warmup(args[0].device, *job)
            dt_s = time.perf_counter() - t0
            total += dt_s
            print(f"compile {part} {job[0].fn.__name__}: {dt_s:.2f} s")
    print(f"compile sequential total: {total:.2f} s")


def compile_concurrent():
    from mamba_compile.ops import ssd_triton as kt

    args = args_of(make_inputs(*SHAPES["b8 l2048 h24"], requires_grad=True))
    fwd, bwd = ssd._recorded_launches(args, with_backward=True)
    t0 = time.perf_counter()
    kt.wait(kt.compile_async(fwd + bwd, args[0].device, set()))
    print(f"compile concurrent total (all fwd+bwd kernels, {os.cpu_count()} cpus): {time.perf_counter() - t0:.2f} s")


def fresh(mode: str):
    env = dict(os.environ, TRITON_CACHE_DIR=f"/tmp/ssd_sweep_cache_{mode}_{time.time_ns()}")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.probes.ssd_sweep", "--mode", mode], env=env,
                          capture_output=True, text=True, timeout=300)
    print(proc.stdout, proc.stderr[-3000:] if proc.returncode else "", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", default="sweep", choices=("all", "sweep", "compile", "concurrent"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--scan-grid", action="store_true", help="time the full grid of chunk_scan variants")
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for timing chunk_scan variants")
    a = parser.parse_args()
    print(torch.__version__, torch.cuda.get_device_name(), flush=True)
    if a.mode == "compile":
        compile_times()
    elif a.mode == "concurrent":
        compile_concurrent()
    else:
        if a.mode == "all":
            fresh("compile")
            fresh("concurrent")
        sweep(a.quick, a.budget, a.scan_grid)


if __name__ == "__main__":
    main()
