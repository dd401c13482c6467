"""The gate's backward (gate_bwd: dy = dout silu(z), dz from the kept pre-gate output, 250 MB at b8 l2048 h24)
over flat arrays against a program per head and block of rows (ssd_triton.GATE_FLAT): CUDA-graph medians of the
kernel both ways, the largest difference of their outputs (expected 0), then the op's graphed forward+backward with
each, alternating.

    python -m benchmarks.probes.ssd_gate_flat [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks.probes.ssd_sweep import on_off_rows, setting_probe, shape_inputs
from mamba_compile.ops import ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, *_ = shape_inputs(shape)
    dout, pre = torch.randn_like(x), torch.randn_like(x)
    return on_off_rows(name, {"gate_bwd": lambda flat: kt.gate_bwd(dout, t["z"], pre, flat=flat, wrap=False)}, "flat")


if __name__ == "__main__":
    setting_probe(kernel_rows, kt, "GATE_FLAT", (False, True), "flat gate", forward=False)
