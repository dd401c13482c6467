"""The SSD's eager backward with two kernels on a second stream (ssd.SIDE_STREAM: gate_bwd beside the states'
recompute, dcb beside the reverse pass and dx) against one stream: the op's graphed forward+backward at both
benchmark shapes, alternating.

    python -m benchmarks.probes.ssd_side_stream [--out results.json]
"""

from __future__ import annotations

from benchmarks.probes.ssd_sweep import setting_probe
from mamba_compile.ops import ssd


def main() -> None:
    setting_probe(lambda name, shape: [], ssd, "SIDE_STREAM", (True, False), "side stream", forward=False)


if __name__ == "__main__":
    main()
