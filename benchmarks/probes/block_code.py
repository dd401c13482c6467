"""Writes the Inductor code of one compiled 130M block past the first (forward and backward, bf16 autocast,
b8 x 2048) to $OUT/block_code_<arch>.py, with each generated kernel's source nodes: where a training step's layout
copies come from.

    python -m benchmarks.probes.block_code --out $OUT [--arch mamba1]
"""

from __future__ import annotations

import argparse
import logging
import os

import torch

from benchmarks.bench_model import config_130m
from mamba_compile.models import MambaLM


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--arch", nargs="+", default=["mamba1"])
    args = p.parse_args()
    for arch in args.arch:
        path = os.path.join(args.out, f"block_code_{arch}.py")
        handler = logging.FileHandler(path, mode="w")
        torch._logging.set_logs(output_code=True)
        for name in ("torch._inductor.codecache", "torch._inductor.graph", "torch._inductor.output_code"):
            logging.getLogger(name).addHandler(handler)
        torch.manual_seed(0)
        model = MambaLM(config_130m(arch), device="cuda").train()
        # A block past the first, as the training step calls it: the previous mixer's bf16 output and the fp32
        # residual (the first block alone takes the fp32 embedding and no residual, a graph of its own).
        block = model.backbone.layers[1]
        block.compile(fullgraph=True)
        h = torch.randn(8, 2048, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        residual = torch.randn(8, 2048, 768, device="cuda", requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out, residual = block(h, residual)
        (out.float().sum() + residual.sum()).backward()
        torch.cuda.synchronize()
        for name in ("torch._inductor.codecache", "torch._inductor.graph", "torch._inductor.output_code"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()
        print(arch, os.path.getsize(path), "bytes", flush=True)


if __name__ == "__main__":
    main()
