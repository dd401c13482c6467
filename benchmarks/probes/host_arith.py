"""Host time of eager model calls with the kernels' launch arithmetic in plain Python (``_triton.cdiv`` /
``next_pow2``, the default) against Triton's ``triton.cdiv`` / ``triton.next_power_of_2`` (constexpr functions that
convert their arguments when called from host code): a tiny Mamba-1 and Mamba-2 model (d_model 256, 4 layers,
bf16, batch 1, 64 tokens), whose GPU work is far below their host time, eager forward (no grad) and forward+backward,
microseconds per call, alternating over three rounds.

    python -m benchmarks.probes.host_arith [--out results.json]
"""

from __future__ import annotations

import argparse
import importlib
import statistics

import torch

MODULES = ("causal_conv1d_triton", "norms_triton", "mamba1_decode_triton", "mamba2_decode_triton",
           "selective_scan_triton", "cross_entropy_triton", "selective_state_update_triton", "ssd_triton")


def _set(variant: str) -> None:
    import triton

    from mamba_compile.ops import _triton

    for name in MODULES:
        m = importlib.import_module(f"mamba_compile.ops.{name}")
        for plain, theirs, attr in ((_triton.cdiv, triton.cdiv, "cdiv"), (_triton.next_pow2, triton.next_power_of_2,
                                                                          "next_pow2")):
            for a in (attr, "_" + attr):
                if hasattr(m, a):
                    setattr(m, a, plain if variant == "plain" else theirs)


def main() -> None:
    from benchmarks._common import device_name, host_us, tiny_model, write_results

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), flush=True)
    rows = []
    for arch in ("mamba1", "mamba2"):
        model, ids = tiny_model(arch)

        @torch.no_grad()
        def fwd():
            model(ids)

        def fwd_bwd():
            model(ids).logits.float().sum().backward()

        for what, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            got: dict[str, list[float]] = {"plain": [], "triton": []}
            for _ in range(3):
                for variant in got:
                    _set(variant)
                    got[variant].append(host_us(fn, n=60, warmup=5))
            for variant, us in got.items():
                rows.append(dict(arch=arch, what=what, arith=variant, us=statistics.median(us),
                                 rounds=" ".join(f"{u:.0f}" for u in us)))
                print(rows[-1], flush=True)
        _set("plain")
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
