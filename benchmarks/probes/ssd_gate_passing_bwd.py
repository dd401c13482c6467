"""The SSD backward's gate gradients formed inside the reverse pass over the chunks (ssd_triton.gate_state_passing_bwd,
one launch) against gate_bwd followed by chunk_state_passing_bwd (two launches): CUDA-graph medians at both
benchmark shapes, the one launch over a few of its launch configurations, each with the largest difference of its
outputs from the two launches' relative to the largest value; then the op's graphed forward+backward with either
(ssd.GATE_IN_PASSING_BWD), alternating.

    python -m benchmarks.probes.ssd_gate_passing_bwd [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import ab_probe, rel_err, shape_inputs
from mamba_compile.ops import ssd, ssd_triton as kt

CONFIGS = [{}, dict(block_n=128), dict(num_stages=2), dict(num_stages=3), dict(block_k=64, num_stages=2),
           dict(block_k=16)]


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    g = torch.Generator(device="cuda").manual_seed(3)
    dout = torch.randn(x.shape, generator=g, device="cuda").to(x.dtype)
    pre = torch.randn(x.shape, generator=g, device="cuda").to(x.dtype)

    def two():
        dy, dz = kt.gate_bwd(dout, z, pre, wrap=False)
        return (dy, dz, *kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, None, None, False, dend_dtype=C.dtype,
                                                    wrap=False))

    want = two()
    rows = []

    def row(label, fn, diff):
        rows.append(dict(shape=name, what=label, ms=graph_ms(fn), diff=diff))
        print(rows[-1], flush=True)

    for rnd in range(2):
        row("gate_bwd + passing_bwd, two launches", two, 0.0)
        for cfg in CONFIGS if rnd == 0 else CONFIGS[:1]:
            fn = lambda cfg=cfg: kt.gate_state_passing_bwd(dout, z, pre, C, dA_cs, prev, None, None, False,  # noqa: E731
                                                           dend_dtype=C.dtype, config=cfg, wrap=False)
            try:
                got = fn()  # dinit (index 3) is not written without initial states
                diff = max(rel_err(got[i], want[i]) for i in (0, 1, 2, 4))
                row(f"one launch {cfg or 'default'}", fn, diff)
            except Exception as e:  # noqa: BLE001 (a configuration that fails loses its row, not the run)
                print(f"{cfg}: {type(e).__name__}: {str(e)[:300]}", flush=True)
    return rows


def main() -> None:
    default = ssd.GATE_IN_PASSING_BWD
    ab_probe(kernel_rows, {flag: lambda flag=flag: setattr(ssd, "GATE_IN_PASSING_BWD", flag) for flag in (True, False)},
             lambda: setattr(ssd, "GATE_IN_PASSING_BWD", default), "gate in passing_bwd", forward=False)


if __name__ == "__main__":
    main()
