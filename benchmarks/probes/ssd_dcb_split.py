"""The SSD backward's dL/d(C B^T) with a group's heads split over several programs (ssd_triton.chunk_scan_bwd_dcb's
hsplit parts, which dB and dC add as they read them) against one program walking all of them: CUDA-graph medians of
dcb and of dcb + dB + dC at both benchmark shapes for each split, with the largest difference of dB and dC from the
unsplit ones relative to the largest value; then the op's graphed forward+backward with ssd_triton.DCB_HEAD_SPLIT at
1, 2 and 4, alternating.

    python -m benchmarks.probes.ssd_dcb_split [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import rel_err, setting_probe, shape_inputs
from mamba_compile.ops import ssd_triton as kt

SPLITS = (1, 2, 3, 4, 6, 8)


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    g = torch.Generator(device="cuda").manual_seed(3)
    dy = torch.randn(x.shape, generator=g, device="cuda").to(x.dtype)
    dend = torch.randn(prev.shape, generator=g, device="cuda").to(prev.dtype)
    ngroups = B.shape[2]

    def dbc(hsplit):
        dcb = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, ngroups, None, hsplit=hsplit, wrap=False)
        return (kt.chunk_scan_bwd_dB(x, B, C, dcb, dtp, dA_cs, dy, dend, None, wrap=False),
                *kt.chunk_scan_bwd_dC(x, B, C, dcb, dtp, dA_cs, dy, prev, None, wrap=False))

    want = dbc(1)
    rows = []
    for hsplit in SPLITS:
        got = dbc(hsplit)
        diff = max(rel_err(got[0], want[0]), rel_err(got[1], want[1]))
        for what, fn in (("dcb", lambda: kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, ngroups, None, hsplit=hsplit,
                                                                 wrap=False)),
                         ("dcb + dB + dC", lambda: dbc(hsplit))):
            rows.append(dict(shape=name, what=f"{what}, hsplit {hsplit}", ms=graph_ms(fn), diff=diff))
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    setting_probe(kernel_rows, kt, "DCB_HEAD_SPLIT", (1, 2, 4), "dcb head split", forward=False)


if __name__ == "__main__":
    main()
