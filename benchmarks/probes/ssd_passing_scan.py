"""The SSD forward's state passing and chunk scan in one launch (ssd_triton.passing_scan_fwd: the scan's programs
wait per chunk for the passing's, which run beside them) against the two launches one after the other
(chunk_cumsum_state_passing_fwd then chunk_scan_fwd), C B^T computed beforehand for both: CUDA-graph medians at
both benchmark shapes, the largest difference of their outputs relative to the largest value, and whether twenty
launches of the one kernel give the same bits (a race would show there); then the op's graphed forward and
forward+backward with either (ssd.PASSING_SCAN), alternating.

    python -m benchmarks.probes.ssd_passing_scan [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import CHUNK, ab_probe, rel_err, shape_inputs
from mamba_compile.ops import ssd, ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, _, _ = shape_inputs(shape)
    cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)
    dt_args = (True, 0.0, ssd._OPEN_BOUND, False)

    def two():
        dtp, dA_cs, prev, final = kt.chunk_cumsum_state_passing_fwd(x, B, dt, A, bias, CHUNK, *dt_args, None, None,
                                                                    prev_dtype=C.dtype, wrap=False)
        return dtp, dA_cs, prev, final, kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb, wrap=False)

    def one():
        return kt.passing_scan_fwd(x, B, C, dt, A, bias, CHUNK, *dt_args, None, None, D, z, cb, prev_dtype=C.dtype,
                                   wrap=False)

    want = one()
    diff = max(rel_err(g, w) for g, w in zip(want, two()))
    same = all(all(torch.equal(g, w) for g, w in zip(one(), want)) for _ in range(20))
    rows = []
    for label, fn in (("passing then scan, two launches", two), ("one launch", one)) * 2:
        rows.append(dict(shape=name, what=label, ms=graph_ms(fn), diff=diff, repeat_bits_equal=same))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    default = ssd.PASSING_SCAN
    ab_probe(kernel_rows, {flag: lambda flag=flag: setattr(ssd, "PASSING_SCAN", flag) for flag in (True, False)},
             lambda: setattr(ssd, "PASSING_SCAN", default), "one launch")


if __name__ == "__main__":
    main()
