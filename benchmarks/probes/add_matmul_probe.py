"""x_proj's input gradient added to the scan's du at the 130M training shape ((1536, 16384) bf16, k 80), CUDA-graph
medians: cuBLAS's mm alone, mm then add (what the default training step does), cuBLAS's addmm with du as its input,
and ops.add_matmul's Triton kernel over tile configurations, its product in bf16 or fp32 (tf32); each with its
largest error against float64 (relative to the largest magnitude).

    python -m benchmarks.probes.add_matmul_probe --out $OUT/add_matmul_probe.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import graph_ms, write_results
from mamba_compile.ops import add_matmul_triton


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    args = p.parse_args()
    torch.manual_seed(0)
    m, n, k = 1536, 16384, 80
    du = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(k, m, device="cuda", dtype=torch.bfloat16) * 0.05  # x_proj.weight (k, d_inner)
    g = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)  # d(x_dbl)
    want = du.double() + w.double().T @ g.double()
    cases = {"mm": lambda: w.T @ g, "mm + add": lambda: du + w.T @ g, "addmm": lambda: torch.addmm(du, w.T, g)}
    for cfg in ((64, 128, 4), (128, 128, 8), (64, 64, 4), (32, 128, 4)):
        for fp32 in (False, True):
            cases[f"add_matmul {cfg} dot_fp32={fp32}"] = lambda cfg=cfg, fp32=fp32: add_matmul_triton.add_matmul_fwd(
                du, w, g, wrap=False, config=cfg, dot_fp32=fp32)
    rows = []
    for rnd in range(2):
        for name, fn in cases.items():
            err = "" if name == "mm" else f"{((fn().double() - want).abs().max() / want.abs().max()).item():.1e}"
            rows.append(dict(round=rnd, case=name, us=round(graph_ms(fn) * 1e3, 1), err=err))
            print(rows[-1], flush=True)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
