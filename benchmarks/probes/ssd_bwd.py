"""The SSD backward on the GPU: each launch function timed alone on realistic tensors (both benchmark shapes),
the op's fwd+bwd replayed from a CUDA graph, and its gradients against the float32 torch path.

    python3 -m benchmarks.probes.ssd_bwd
"""

from __future__ import annotations

import importlib

import torch

from benchmarks._common import bench_ms, graph_ms
from benchmarks.bench_ssd import make_inputs
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, backward_kernels, grad_errors, shape_inputs

ssd = importlib.import_module("mamba_compile.ops.ssd")


def main() -> None:
    from mamba_compile.ops import ssd_triton as kt

    for name, shape in SHAPES.items():
        print(f"\n## {name}", flush=True)
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        backward_kernels(kt, x, dt, A, B, C, D, z, bias, dtp, dA_cs)
        tg = make_inputs(*shape, requires_grad=True)
        dout = torch.randn_like(tg["x"])

        def step(with_z=True):
            for v in tg.values():
                v.grad = None
            ssd.ssd_chunk_scan(tg["x"], tg["dt"], tg["A"], tg["B"], tg["C"], CHUNK, D=tg["D"],
                               z=tg["z"] if with_z else None, dt_bias=tg["dt_bias"], dt_softplus=True).backward(dout)

        for with_z in (True, False):
            label = "z" if with_z else "no z (a Mamba-2 block)"
            print(f"op fwd+bwd, {label}: eager {bench_ms(lambda: step(with_z)):.4f} "
                  f"ms, CUDA graph {graph_ms(lambda: step(with_z)):.4f} ms", flush=True)
        step()
        print("grad rel err (max abs err / max abs) vs the float32 torch path: " + grad_errors(tg, dout), flush=True)
        del t, tg
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
