"""The gate's backward (gate_bwd: dy = dout silu(z), dz from the kept pre-gate output, 250 MB at b8 l2048 h24)
over flat arrays against a program per head and block of rows (ssd_triton.GATE_FLAT): CUDA-graph medians of the
kernel both ways, the largest difference of their outputs (expected 0), then the op's graphed forward+backward with
each, alternating.

    python -m benchmarks.probes.ssd_gate_flat [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import rel_err, setting_probe, shape_inputs
from mamba_compile.ops import ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, *_ = shape_inputs(shape)
    dout, pre = torch.randn_like(x), torch.randn_like(x)
    run = lambda flat: kt.gate_bwd(dout, t["z"], pre, flat=flat, wrap=False)  # noqa: E731
    diff = max(rel_err(a, b) for a, b in zip(run(True), run(False)))
    rows = []
    for flat in (False, True, False, True):
        rows.append(dict(shape=name, what=f"gate_bwd, flat: {flat}", ms=graph_ms(lambda: run(flat)), diff=diff))
        print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    setting_probe(kernel_rows, kt, "GATE_FLAT", (False, True), "flat gate", forward=False)
