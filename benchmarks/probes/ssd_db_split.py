"""The SSD backward's dB kernel with its programs splitting dstate's columns (ssd_triton.DB_SPLITS_DSTATE, no
partial sums) against splitting each group's heads (float32 partial sums, then one elementwise add): CUDA-graph
medians of dB (the add included) at both benchmark shapes with the largest difference relative to the largest
value, then the op's graphed forward+backward with either, alternating.

    python -m benchmarks.probes.ssd_db_split [--out results.json]
"""

from __future__ import annotations

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import chunk_states, rel_err, setting_probe, shape_inputs
from mamba_compile.ops import ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, dy, dend = chunk_states(x, B, C, dtp, dA_cs)
    dcb = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, B.shape[2], None, wrap=False)

    def db():
        return kt.chunk_scan_bwd_dB(x, B, C, dcb, dtp, dA_cs, dy, dend, None, wrap=False)

    outs, rows = {}, []
    for flag in (True, False, True, False):
        kt.DB_SPLITS_DSTATE = flag
        outs[flag] = db()
        rows.append(dict(shape=name, what=f"dB, dstate split: {flag}", ms=graph_ms(db)))
        print(rows[-1], flush=True)
    rows[-1]["diff"] = rel_err(outs[True], outs[False])
    print("diff", rows[-1]["diff"], flush=True)
    return rows


def main() -> None:
    setting_probe(kernel_rows, kt, "DB_SPLITS_DSTATE", (True, False), "dB dstate split", forward=False)


if __name__ == "__main__":
    main()
