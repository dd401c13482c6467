"""dx (chunk_scan_bwd_dx) at higher occupancy. With two pipeline stages it runs two programs an SM whatever its
registers: 91 KB of shared memory each (and 246-251 registers); it is issue-bound (session 30's ncu). At one stage it
takes 41 KB, and with registers capped at 168 (ptxas maxnreg, 80 B of spills) three programs fit. CUDA-graph medians of
dx with each setting over three alternating rounds, the largest difference of its outputs from the default's (two
stages, no cap) relative to the largest value, then the op's graphed forward+backward (eager launches, which take the
cap) with dx's launch set to each candidate.

Session 31 (H100): one stage capped at 168 is 15% faster and bit for bit the same at the benchmark shapes, but Triton
3.6 miscompiles dx at one stage at other shapes (see ssd_triton's comment at DX_EVEN): not kept. The session first ran
this probe with a kernel variant that reloaded x after the loop; that comment keeps its numbers too.

    python -m benchmarks.probes.ssd_dx_occupancy [--out results.json]
"""

from __future__ import annotations

import functools

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import ab_probe, chunk_states, rel_err, shape_inputs
from mamba_compile.ops import ssd_triton as kt

SETTINGS = {
    "2 stages (the default)": dict(num_stages=2),
    "1 stage": dict(num_stages=1),
    "1 stage, cap 168": dict(num_stages=1, maxnreg=168),
    "1 stage, cap 152": dict(num_stages=1, maxnreg=152),
    "1 stage, cap 128": dict(num_stages=1, maxnreg=128),
    "2 stages, cap 168": dict(num_stages=2, maxnreg=168),
}
OP_SETTINGS = ("2 stages (the default)", "1 stage, cap 168", "1 stage, cap 152")


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, dy, dend = chunk_states(x, B, C, dtp, dA_cs)

    def run(cfg):  # row's partial sums leave positions unwritten (dt_bwd never reads them): left out
        outs = kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False, **cfg)
        return [o for i, o in enumerate(outs) if i != 4]

    want = run(SETTINGS["2 stages (the default)"])
    diffs = {label: max(rel_err(a, b) for a, b in zip(run(cfg), want)) for label, cfg in SETTINGS.items()}
    times = {label: [] for label in SETTINGS}
    for _ in range(3):
        for label, cfg in SETTINGS.items():
            times[label].append(graph_ms(lambda: run(cfg)))
    rows = []
    for label, ms in times.items():
        rows.append(dict(shape=name, what=f"chunk_scan_bwd_dx, {label}", ms=sorted(ms)[1],
                         all=" ".join(f"{m:.4f}" for m in ms), diff=diffs[label]))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    original = kt.chunk_scan_bwd_dx

    def use(label):
        kt.chunk_scan_bwd_dx = functools.partial(original, **SETTINGS[label])

    try:
        ab_probe(kernel_rows, {label: lambda label=label: use(label) for label in OP_SETTINGS},
                 lambda: setattr(kt, "chunk_scan_bwd_dx", original), "dx", forward=False)
    finally:
        kt.chunk_scan_bwd_dx = original


if __name__ == "__main__":
    main()
