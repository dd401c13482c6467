"""The SSD forward's C B^T: read by chunk_scan from bmm_cb_fwd (computed once per chunk and group, float32) against
computed by each chunk_scan program for its own tiles (16-bit dots, once per head): CUDA-graph medians of
chunk_scan each way (and of bmm_cb_fwd) at both benchmark shapes with the largest difference of the outputs
relative to the largest value, then the op's graphed forward and forward+backward each way (ssd.FWD_BMM_CB),
alternating.

    python -m benchmarks.probes.ssd_fwd_cb [--out results.json]
"""

from __future__ import annotations

import argparse

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, op_variant_rows, rel_err, shape_inputs


def main() -> None:
    from mamba_compile.ops import ssd, ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), f"chunk {CHUNK}", flush=True)
    rows = []
    default = ssd.FWD_BMM_CB
    for name, shape in SHAPES.items():
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
        cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)

        def scan(with_cb):
            return kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb if with_cb else None, wrap=False)

        diff = rel_err(scan(False), scan(True))
        rows.append(dict(shape=name, what="bmm_cb_fwd", ms=graph_ms(lambda: kt.bmm_cb_fwd(C, B, CHUNK, wrap=False))))
        print(rows[-1], flush=True)
        for with_cb in (True, False, True, False):
            rows.append(dict(shape=name, what=f"chunk_scan, C B^T read: {with_cb}", ms=graph_ms(lambda: scan(with_cb)),
                             diff=diff))
            print(rows[-1], flush=True)
        del t, x, dt, B, C, dtp, dA_cs, prev, cb
        variants = {flag: lambda flag=flag: setattr(ssd, "FWD_BMM_CB", flag) for flag in (True, False)}
        rows += op_variant_rows(name, shape, variants, "C B^T read")
        ssd.FWD_BMM_CB = default
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
