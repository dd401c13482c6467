"""Which of a Mamba-1 130M training layer's GEMMs come with a cuBLAS memset, and what each costs, per BLAS library.

The profiled graphed step has about 190 `Memset (Device)` launches, nearly all inside cuBLAS GEMM calls (4 a layer in
the forward's mm, 2 in the backward's, 1 in add_matmul_'s addmm_): each a launch in the step's graph. This runs every
GEMM of one layer (the shapes and operand layouts of mixers._InProjXZ, _XDtProj and _Linear at b8 x 2048, bf16, weight
gradients written in fp32 as ops.matmul_into_ does) once under torch.profiler, counting the memsets each issues and
naming the kernels, and times each as a CUDA-graph replay; once with torch's default BLAS library and once with
cuBLASLt (torch.backends.cuda.preferred_blas_library).

    python -m benchmarks.probes.gemm_memsets --out $OUT/gemm_memsets.json
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import graph_ms, write_results


def _gemms(bl: int = 16384, dm: int = 768, d: int = 1536, r: int = 48, n: int = 16) -> dict:
    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape, device="cuda", generator=g).to(dtype)

    hT = rnd(bl, dm).T  # (d_model, b l), a transposed view as the mixer makes it
    w_in, w_x, w_dt, w_out = rnd(2 * d, dm), rnd(r + 2 * n, d), rnd(d, r), rnd(dm, d)
    x, x_dbl, y = rnd(d, bl), rnd(r + 2 * n, bl), rnd(bl, d)
    dx, dz, ddt, dout = rnd(d, bl), rnd(d, bl), rnd(d, bl), rnd(bl, dm)
    dh = torch.empty(bl, dm, device="cuda", dtype=torch.bfloat16)
    dw_in = torch.empty(2 * d, dm, device="cuda")
    dw_x, dw_dt, dw_out = (torch.empty(s, device="cuda") for s in (w_x.shape, w_dt.shape, w_out.shape))
    dt_low = x_dbl[:r]
    return {
        "fwd in_proj half": lambda: w_in[:d] @ hT,
        "fwd x_proj": lambda: w_x @ x,
        "fwd dt_proj": lambda: w_dt @ dt_low,
        "fwd out_proj": lambda: y @ w_out.T,
        "bwd out_proj dx": lambda: dout @ w_out,
        "bwd out_proj dW fp32": lambda: torch.mm(dout.T, y, out_dtype=torch.float32, out=dw_out),
        "bwd dt_proj dx": lambda: w_dt.T @ ddt,
        "bwd x_proj dW fp32": lambda: torch.mm(x_dbl, x.T, out_dtype=torch.float32, out=dw_x),
        "bwd dt_proj dW fp32": lambda: torch.mm(ddt, dt_low.T, out_dtype=torch.float32, out=dw_dt),
        "bwd in_proj dh": lambda: torch.mm(dz.T, w_in[d:], out=dh),
        "bwd in_proj dh addmm_": lambda: dh.addmm_(dx.T, w_in[:d]),
        "bwd in_proj dW half fp32": lambda: torch.mm(dx, hT.T, out_dtype=torch.float32, out=dw_in[:d]),
    }


def _kernels(fn) -> list[str]:
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    events = sorted((e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA),
                    key=lambda e: e.time_range.start)
    return [e.name for e in events]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    args = p.parse_args()
    rows = []
    default = torch.backends.cuda.preferred_blas_library()
    for lib in ("default", "cublaslt"):
        torch.backends.cuda.preferred_blas_library(default if lib == "default" else "cublaslt")
        for name, fn in _gemms().items():
            names = _kernels(fn)
            memsets = sum("memset" in k.lower() for k in names)
            others = [k[:60] for k in names if "memset" not in k.lower()]
            rows.append(dict(blas=lib, gemm=name, memsets=memsets, graph_us=graph_ms(fn) * 1e3,
                             kernels=" + ".join(others)))
            print(rows[-1], flush=True)
    torch.backends.cuda.preferred_blas_library(default)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
