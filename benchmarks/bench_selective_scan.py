"""Mamba-1 selective scan on CUDA: forward and forward+backward against the reference's recorded times.

    python -m benchmarks.bench_selective_scan --out $OUT/selective_scan.json [--sweep]

Inputs as in REFERENCE_TIMINGS.md: bf16 u/delta/z/B/C (B, C input-dependent), fp32 A/D/delta_bias,
with D, z, delta_bias and softplus. The floor is the bytes that must cross device memory (inputs read
once, outputs written once; x3 for forward+backward) at the measured copy bandwidth. ``--sweep`` also
times the kernels directly over a few block-size configurations (how the heuristic's values were chosen).
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import bench_ms, floor_ms, nbytes, write_results
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
    for case, fn, floor, ref in (("fwd", fwd, floor_ms(io), ref_fwd), ("fwd+bwd", fwd_bwd, 3 * floor_ms(io), ref_fb)):
        fn()
        torch.cuda.synchronize()
        ms = bench_ms(fn)
        rows.append(dict(op="selective_scan", case=case, shape=shape, ms=ms, floor_ms=floor, ratio=ms / floor,
                         reference_ms=ref, speedup=ref / ms))  # fmt: skip
    return rows


def sweep(batch, dim, seqlen, dstate) -> list[dict]:
    """Times the kernels directly for a few (BLOCK_D, BLOCK_L, num_warps); checks each against the default."""
    t = make_inputs(batch, dim, seqlen, dstate)
    args = (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None)
    ref_out, _, _ = kern.selective_scan_fwd(*args, False, wrap=False)
    rows = []
    fwd_cfgs = [(cfg, pf) for pf in (False, True) for cfg in ((16, 8, 1), (8, 8, 1), (32, 8, 1))]
    for cfg, pf in fwd_cfgs:
        name = f"{cfg}{' prefetch' if pf else ''}"
        try:
            fn = lambda: kern.selective_scan_fwd(*args, False, wrap=False, config=cfg, prefetch=pf)  # noqa: E731
            err = (fn()[0].float() - ref_out.float()).abs().max().item()
            rows.append(dict(kernel="fwd", config=name, ms=bench_ms(fn), max_err_vs_default=err))
        except Exception as e:  # a config that does not compile (registers, shared memory) is skipped
            rows.append(dict(kernel="fwd", config=name, ms=float("nan"), max_err_vs_default=float("nan")))
            print(f"fwd {name}: {type(e).__name__}: {str(e)[:200]}")
    go = torch.randn_like(t["u"])
    gl = torch.zeros(batch, dim, dstate, device="cuda")
    ref_grads = None
    for cfg, pf in [(cfg, pf) for pf in (False, True) for cfg in ((16, 8, 1), (8, 8, 1), (16, 4, 1))]:
        name = f"{cfg}{' prefetch' if pf else ''}"
        try:
            _, _, states = kern.selective_scan_fwd(*args, True, wrap=False, state_chunk=cfg[1])
            fn = lambda: kern.selective_scan_bwd(go, gl, *args[:9], None, states, wrap=False, config=cfg, prefetch=pf)  # noqa: E731
            grads = fn()
            if ref_grads is None:
                ref_grads = grads
            err = max((a.float() - b.float()).abs().max().item() / (b.float().abs().max().item() + 1e-9)
                      for a, b in zip(grads[:8], ref_grads[:8]) if b.numel())  # fmt: skip
            rows.append(dict(kernel="bwd", config=name, ms=bench_ms(fn), max_err_vs_default=err))
        except Exception as e:
            rows.append(dict(kernel="bwd", config=name, ms=float("nan"), max_err_vs_default=float("nan")))
            print(f"bwd {name}: {type(e).__name__}: {str(e)[:200]}")
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    rows = []
    for shape in REFERENCE_MS:
        rows += bench_shape(*shape)
        write_results(rows[-2:], None)
    write_results(rows, args.out)
    if args.sweep:
        sweep_rows = sweep(8, 1536, 2048, 16)
        write_results(sweep_rows, args.out.replace(".json", "_sweep.json") if args.out else None)


if __name__ == "__main__":
    main()
