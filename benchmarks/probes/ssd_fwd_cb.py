"""The SSD forward's C B^T: read by chunk_scan from bmm_cb_fwd (computed once per chunk and group, float32) against
computed by each chunk_scan program for its own tiles (16-bit dots, once per head): CUDA-graph medians of
chunk_scan each way (and of bmm_cb_fwd) at both benchmark shapes with the largest difference of the outputs
relative to the largest value, then the op's graphed forward and forward+backward each way (ssd.FWD_BMM_CB),
alternating.

    python -m benchmarks.probes.ssd_fwd_cb [--out results.json]
"""

from __future__ import annotations

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import CHUNK, rel_err, setting_probe, shape_inputs
from mamba_compile.ops import ssd, ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)

    def scan(with_cb):
        return kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb if with_cb else None, wrap=False)

    diff = rel_err(scan(False), scan(True))
    rows = [dict(shape=name, what="bmm_cb_fwd", ms=graph_ms(lambda: kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)))]
    print(rows[-1], flush=True)
    for with_cb in (True, False, True, False):
        rows.append(dict(shape=name, what=f"chunk_scan, C B^T read: {with_cb}", ms=graph_ms(lambda: scan(with_cb)),
                         diff=diff))
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    setting_probe(kernel_rows, ssd, "FWD_BMM_CB", (True, False), "C B^T read")


if __name__ == "__main__":
    main()
