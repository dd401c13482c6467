"""The SSD backward's dB kernel with its programs splitting dstate's columns (ssd_triton.DB_SPLITS_DSTATE, no
partial sums) against splitting each group's heads (float32 partial sums, then one elementwise add): CUDA-graph
medians of dB (the add included) at both benchmark shapes with the largest difference relative to the largest
value, then the op's graphed forward+backward with either, alternating.

    python -m benchmarks.probes.ssd_db_split [--out results.json]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.probes.ssd_sweep import CHUNK, SHAPES, op_variant_rows, rel_err, shape_inputs


def main() -> None:
    from mamba_compile.ops import ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), f"chunk {CHUNK}", flush=True)
    rows = []
    default = kt.DB_SPLITS_DSTATE
    for name, shape in SHAPES.items():
        t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
        prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
        dy = torch.randn_like(x)
        dend, _, _ = kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, None, None, False, dend_dtype=C.dtype, wrap=False)
        dcb = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, B.shape[2], None, wrap=False)

        def db():
            return kt.chunk_scan_bwd_dB(x, B, C, dcb, dtp, dA_cs, dy, dend, None, wrap=False)

        outs = {}
        for flag in (True, False, True, False):
            kt.DB_SPLITS_DSTATE = flag
            outs[flag] = db()
            rows.append(dict(shape=name, what=f"dB, dstate split: {flag}", ms=graph_ms(db)))
            print(rows[-1], flush=True)
        rows[-1]["diff"] = rel_err(outs[True], outs[False])
        print("diff", rows[-1]["diff"], flush=True)
        del t, x, dt, B, C, dtp, dA_cs, prev, dy, dend, dcb, outs
        variants = {flag: lambda flag=flag: setattr(kt, "DB_SPLITS_DSTATE", flag) for flag in (True, False)}
        rows += op_variant_rows(name, shape, variants, "dB dstate split", forward=False)
        kt.DB_SPLITS_DSTATE = default
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
