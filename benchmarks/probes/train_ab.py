"""A/B of a training step (bench_model.bench_train, regional compile), one process, variants in turn:
"new" = the session-4 conv changes on (the 16-bit pair forward, channel-last blocks 128x16 fwd / 32x64 bwd),
"old" = off (general forward, 64x32 channel-last blocks in both directions). Session 4 also A/B'd the
selective-scan backward kernels this way (the old one is gone since).

    python -m benchmarks.probes.train_ab --out $OUT/train_ab.json [--arch mamba1 mamba2]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import write_results
from benchmarks.bench_model import bench_train
from mamba_compile.ops import causal_conv1d_triton as kernels

NEW_BLOCKS = kernels._fwd_blocks


def _old_blocks(x, backward=False):
    blocks = NEW_BLOCKS(x, backward)
    return blocks if (x.stride(2) == 1 or x.stride(1) != 1) else (64, 32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--arch", nargs="+", default=["mamba1", "mamba2"])
    p.add_argument("--mamba1", nargs="+", default=["new", "old", "new", "old"])
    p.add_argument("--mamba2", nargs="+", default=["new", "old", "new", "old"])
    args = p.parse_args()
    rows = []
    for arch in args.arch:
        for variant in getattr(args, arch):
            old = variant == "old"
            kernels._FWD_PAIRS = not old
            kernels._fwd_blocks = _old_blocks if old else NEW_BLOCKS
            r = bench_train(arch, regional=True)
            rows.append(dict(arch=arch, variant=variant, ms=r["ms"], peak_gib=r["peak_gib"]))
            print(rows[-1], flush=True)
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
