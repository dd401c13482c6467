"""The SSD forward's dt_proc and within-chunk cumsum computed inside the state-passing kernel
(ssd_triton.chunk_cumsum_state_passing_fwd, one launch) against chunk_cumsum_fwd followed by chunk_state_passing_fwd
(two launches): CUDA-graph medians of each at both benchmark shapes with the largest difference of their outputs
relative to the largest value, then the op's graphed forward and forward+backward with either (ssd.FUSED_CUMSUM),
alternating.

    python -m benchmarks.probes.ssd_fused_cumsum [--out results.json]
"""

from __future__ import annotations

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import CHUNK, rel_err, setting_probe, shape_inputs
from mamba_compile.ops import ssd, ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, _, _ = shape_inputs(shape)
    dt_args = (dt, A, bias, CHUNK, True, 0.0, ssd._OPEN_BOUND, False)

    def two():
        dtp, dA_cs = kt.chunk_cumsum_fwd(*dt_args, wrap=False)
        return (dtp, dA_cs, *kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype,
                                                        wrap=False))

    def one():
        return kt.chunk_cumsum_state_passing_fwd(x, B, *dt_args, None, None, prev_dtype=C.dtype, wrap=False)

    diff = max(rel_err(g, w) for g, w in zip(one(), two()))
    rows = []
    for label, fn in (("cumsum + passing, two launches", two), ("one launch", one)) * 2:
        rows.append(dict(shape=name, what=label, ms=graph_ms(fn), diff=diff))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    setting_probe(kernel_rows, ssd, "FUSED_CUMSUM", (True, False), "one launch")


if __name__ == "__main__":
    main()
