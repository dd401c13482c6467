"""Mamba-1 selective scan on CUDA: forward and forward+backward against the reference's recorded times.

    python -m benchmarks.bench_selective_scan --out $OUT/selective_scan.json [--sweep]

Inputs as in REFERENCE_TIMINGS.md: bf16 u/delta/z/B/C (B, C input-dependent), fp32 A/D/delta_bias,
with D, z, delta_bias and softplus. The floor is the bytes that must cross device memory (inputs read
once, outputs written once; x3 for forward+backward) at the measured copy bandwidth. ``--sweep`` first
times the kernels directly over a few block-size configurations, each checked against the fp32 CPU path
at a smaller shape (how the heuristic's values were chosen).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import bench_ms, floor_ms, graph_ms, nbytes, write_results
from mamba_compile.ops import selective_scan
from mamba_compile.ops import selective_scan_triton as kern

# (batch, dim, seqlen, dstate) -> reference ms (forward, forward+backward), REFERENCE_TIMINGS.md, H100.
REFERENCE_MS = {
    (8, 1536, 2048, 16): (0.452, 2.463),
    (2, 5120, 8192, 16): (1.861, 8.472),
}


def make_inputs(batch, dim, seqlen, dstate, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    return dict(
        u=randn(batch, dim, seqlen),
        delta=randn(batch, dim, seqlen, scale=0.5),
        A=-(torch.rand(dim, dstate, generator=g, device="cuda") + 0.5),
        B=randn(batch, dstate, seqlen),
        C=randn(batch, dstate, seqlen),
        D=randn(dim, dtype=torch.float32),
        z=randn(batch, dim, seqlen),
        delta_bias=randn(dim, dtype=torch.float32, scale=0.5),
    )


def bench_shape(batch, dim, seqlen, dstate) -> list[dict]:
    t = make_inputs(batch, dim, seqlen, dstate)
    out = torch.empty_like(t["u"])
    io = nbytes(*t.values(), out)
    ref_fwd, ref_fb = REFERENCE_MS.get((batch, dim, seqlen, dstate), (float("nan"), float("nan")))
    shape = f"b{batch} d{dim} l{seqlen} n{dstate}"

    def fwd():
        with torch.no_grad():
            return selective_scan(**t, delta_softplus=True)

    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
    go = torch.randn_like(t["u"])

    def fwd_bwd():
        o = selective_scan(**leaves, delta_softplus=True)
        return torch.autograd.grad(o, list(leaves.values()), go)

    rows = []
    # The eager forward costs about 0.2-0.4 ms of host time per call on the GPU machine, as much as its GPU time:
    # the "CUDA graph" rows are the GPU's own time (the reference's number is eager do_bench).
    cases = (("fwd", fwd, bench_ms, floor_ms(io), ref_fwd), ("fwd, CUDA graph", fwd, graph_ms, floor_ms(io), ref_fwd),
             ("fwd+bwd", fwd_bwd, bench_ms, 3 * floor_ms(io), ref_fb),
             ("fwd+bwd, CUDA graph", fwd_bwd, graph_ms, 3 * floor_ms(io), ref_fb))  # fmt: skip
    for case, fn, timer, floor, ref in cases:
        fn()
        torch.cuda.synchronize()
        ms = timer(fn)
        rows.append(dict(op="selective_scan", case=case, shape=shape, ms=ms, floor_ms=floor, ratio=ms / floor,
                         reference_ms=ref, speedup=ref / ms))  # fmt: skip
    return rows


# Block sizes timed by --sweep (BLOCK_D, BLOCK_L, num_warps); None is the heuristic's choice. The
# forward saves states at each backward config's BLOCK_L.
FWD_CONFIGS = [None, (8, 8, 1), (4, 8, 1), (16, 8, 2), (8, 8, 2), (32, 8, 2), (8, 16, 1)]
BWD_CONFIGS = [None, (1, 256, 1), (2, 128, 1), (4, 128, 1), (4, 256, 2), (8, 256, 4), (2, 512, 2), (1, 512, 1)]


def _cpu_reference(t, go, gl):
    """out, last_state and gradients of the fp32 CPU path (the op on CPU) for the check of each variant."""
    leaves = {k: v.detach().float().cpu().requires_grad_() for k, v in t.items()}
    out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True)
    grads = torch.autograd.grad((out * go.cpu()).sum() + (last * gl.cpu()).sum(), list(leaves.values()))
    return [out, last], list(grads)


def _rel_err(got, ref) -> float:
    return max((a.float().cpu() - b.float()).abs().max().item() / (b.float().abs().max().item() + 1e-12)
               for a, b in zip(got, ref) if b.numel())  # fmt: skip


def _launch_args(t):
    return (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None)


def sweep(batch, dim, seqlen, dstate) -> list[dict]:
    """Times the kernels directly for each variant at the benchmark shape (bf16); checks each against the
    fp32 CPU path at a smaller shape (fp32 inputs, several time tiles, a partial last tile)."""
    t = make_inputs(batch, dim, seqlen, dstate)
    args = _launch_args(t)
    tc = {k: v.float() for k, v in make_inputs(2, 128, 2000, dstate, seed=1).items()}
    cargs = _launch_args(tc)
    gen = torch.Generator(device="cuda").manual_seed(2)
    go_c = torch.randn(tc["u"].shape, device="cuda", generator=gen)
    gl_c = torch.randn(2, 128, dstate, device="cuda", generator=gen)
    ref_out, ref_grads = _cpu_reference(tc, go_c, gl_c)
    rows = []
    lanes = kern._FWD_LANES and kern.lane_layout_fits(t["u"], t["delta"], t["z"])
    for cfg in FWD_CONFIGS:
        name = "default " + str(kern.fwd_block_sizes(dim, dstate, dim, lanes)) if cfg is None else str(cfg)
        try:
            def fn(a=args):
                return kern.selective_scan_fwd(*a, False, wrap=False, config=cfg)

            err = _rel_err(fn(cargs)[:2], ref_out)
            rows.append(dict(kernel="fwd", config=name, ms=bench_ms(fn), max_rel_err_vs_cpu=f"{err:.2e}"))
        except Exception as e:  # a config that does not compile (registers, shared memory) is skipped
            rows.append(dict(kernel="fwd", config=name, ms=float("nan"), max_rel_err_vs_cpu="nan"))
            print(f"fwd {name}: {type(e).__name__}: {str(e)[:300]}")
        print(rows[-1], flush=True)
    go = torch.randn_like(t["u"])
    gl = torch.zeros(batch, dim, dstate, device="cuda")
    for cfg in BWD_CONFIGS:
        name = "default " + str(kern.bwd_block_sizes(dim, dstate, dim)) if cfg is None else str(cfg)
        chunk = None if cfg is None else cfg[1]
        try:
            def fn(a=args, o=go, s_l=gl):
                _, _, states = kern.selective_scan_fwd(*a, True, wrap=False, state_chunk=chunk)
                return kern.selective_scan_bwd(o, s_l, *a[:9], None, states, wrap=False, config=cfg)

            _, _, states = kern.selective_scan_fwd(*args, True, wrap=False, state_chunk=chunk)
            bwd_only = lambda: kern.selective_scan_bwd(go, gl, *args[:9], None, states, wrap=False, config=cfg)  # noqa: E731
            err = _rel_err(fn(cargs, go_c, gl_c)[:8], ref_grads[:8])
            rows.append(dict(kernel="bwd", config=name, ms=bench_ms(bwd_only), max_rel_err_vs_cpu=f"{err:.2e}"))
        except Exception as e:
            rows.append(dict(kernel="bwd", config=name, ms=float("nan"), max_rel_err_vs_cpu="nan"))
            print(f"bwd {name}: {type(e).__name__}: {str(e)[:300]}")
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    if args.sweep:  # first: the variants decide the default
        sweep_rows = sweep(8, 1536, 2048, 16)
        write_results(sweep_rows, args.out.replace(".json", "_sweep.json") if args.out else None)
    rows = []
    for shape in REFERENCE_MS:
        rows += bench_shape(*shape)
        write_results(rows[-3:], None)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
