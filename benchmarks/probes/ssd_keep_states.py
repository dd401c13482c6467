"""The SSD backward from the forward's kept chunk states (ssd.KEEP_STATES) against recomputing them as the reference
does: the memory a forward with grad holds for its backward (beyond its output), the gradients' largest difference
(expected 0), then the op's graphed forward+backward with each, alternating. Bench inputs (with z, so y + D x is kept
either way).

    python -m benchmarks.probes.ssd_keep_states [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks.probes.ssd_sweep import rel_err, setting_probe
from mamba_compile.ops import ssd


def kernel_rows(name, shape) -> list[dict]:
    from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs

    fn = impls()["ours"]
    t = make_inputs(*shape, requires_grad=True)
    dout = torch.randn_like(t["x"])
    rows, grads = [], {}
    default = ssd.KEEP_STATES
    try:
        for value in (False, True):
            ssd.KEEP_STATES = value
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            out = call(fn, t, 256)
            held = torch.cuda.memory_allocated() - base - out.numel() * out.element_size()
            del out
            fwd_bwd(fn, t, 256, dout)
            grads[value] = [v.grad.clone() for v in t.values() if v.grad is not None]
            rows.append(dict(shape=name, what=f"held for the backward, keep states: {value}",
                             mib=round(held / 2**20, 1)))
            print(rows[-1], flush=True)
    finally:
        ssd.KEEP_STATES = default
    diff = max(rel_err(a, b) for a, b in zip(grads[True], grads[False]))
    rows.append(dict(shape=name, what="gradients, kept against recomputed states", diff=diff))
    print(rows[-1], flush=True)
    return rows


if __name__ == "__main__":
    setting_probe(kernel_rows, ssd, "KEEP_STATES", (False, True), "keep states", forward=False)
