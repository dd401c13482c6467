"""The grids of the SSD's two largest kernels, chunk_scan_fwd and chunk_scan_bwd_dx: chunk-major (batch * nchunks,
nheads, row tiles) against tile-major (row tiles, nheads, batch * nchunks), where a chunk's heads and row tiles,
which read the same C B^T, C, B and (per head) state and x / dy tiles, run in neighbouring programs. CUDA-graph
medians of each kernel with the largest difference of the outputs relative to the largest value, then the op's
graphed forward and forward+backward with each setting (ssd_triton.SCAN_FWD_CONFIG["tile_major"],
ssd_triton.DX_TILE_MAJOR), alternating.

    python -m benchmarks.probes.ssd_grid_order [--out results.json]
"""

from __future__ import annotations

from benchmarks.probes.ssd_sweep import CHUNK, ab_probe, chunk_states, on_off_rows, shape_inputs
from mamba_compile.ops import ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, dy, dend = chunk_states(x, B, C, dtp, dA_cs)
    cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)
    kernels = {
        "chunk_scan_fwd": lambda tm: kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb,
                                                       config=dict(tile_major=tm), wrap=False),
        "chunk_scan_bwd_dx": lambda tm: kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, tile_major=tm,
                                                             wrap=False)[0],
    }
    return on_off_rows(name, kernels, "tile-major")


def _use(fwd_tm, dx_tm):
    kt.SCAN_FWD_CONFIG["tile_major"], kt.DX_TILE_MAJOR = fwd_tm, dx_tm


def main() -> None:
    defaults = kt.SCAN_FWD_CONFIG["tile_major"], kt.DX_TILE_MAJOR
    variants = {f"chunk_scan {f}, dx {d}": lambda f=f, d=d: _use(f, d)
                for f, d in ((False, False), (True, False), (False, True), (True, True))}
    ab_probe(kernel_rows, variants, lambda: _use(*defaults), "tile-major")


if __name__ == "__main__":
    main()
