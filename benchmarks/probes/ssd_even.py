"""The chunk-scan kernels without bounds checks where none can fail (ssd_triton.DX_EVEN, SCAN_EVEN: every chunk
whole, headdim and dstate equal to their blocks). ncu (session 30) found dx issue-bound: 251 registers, two programs
an SM, one instruction every 2.8 cycles a scheduler, the integer ALU the busiest pipe. Without the masks the sm_90
SASS has 14% fewer instructions for dx (2056 against 2384) and 10% for chunk_scan_fwd (1752 against 1936). CUDA-graph
medians of each kernel with the masks and without, the largest difference of its outputs relative to the largest
value (expected 0), then the op's graphed forward and forward+backward with both off, dx's on, and both on,
alternating.

    python -m benchmarks.probes.ssd_even [--out results.json]
"""

from __future__ import annotations

from benchmarks.probes.ssd_sweep import CHUNK, ab_probe, chunk_states, on_off_rows, shape_inputs
from mamba_compile.ops import ssd_triton as kt


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    prev, dy, dend = chunk_states(x, B, C, dtp, dA_cs)
    cb = kt.bmm_cb_fwd(C, B, CHUNK, wrap=False)
    kernels = {
        "chunk_scan_fwd": lambda even: [kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, None, cb=cb,
                                                          config=dict(even=even), wrap=False)],
        # row's partial sums leave positions unwritten (dt_bwd never reads them): compared on the others
        "chunk_scan_bwd_dx": lambda even: [o for i, o in enumerate(kt.chunk_scan_bwd_dx(
            x, B, C, dtp, dA_cs, dy, dend, D, None, even=even, wrap=False)) if i != 4],
    }
    return on_off_rows(name, kernels, "even")


def _use(dx: bool, scan: bool) -> None:
    kt.DX_EVEN, kt.SCAN_EVEN = dx, scan


def main() -> None:
    defaults = kt.DX_EVEN, kt.SCAN_EVEN
    variants = {"off": lambda: _use(False, False), "dx": lambda: _use(True, False), "both": lambda: _use(True, True)}
    ab_probe(kernel_rows, variants, lambda: _use(*defaults), "even")


if __name__ == "__main__":
    main()
