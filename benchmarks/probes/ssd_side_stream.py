"""The SSD's eager backward with kernels on a second stream (ssd.SIDE_STREAM: gate_bwd beside the states'
recompute, dcb beside the reverse pass and dx; ssd.SIDE_DBC: dB and dC too, beside dx) against one stream: the
op's graphed forward+backward at both benchmark shapes, alternating.

    python -m benchmarks.probes.ssd_side_stream [--out results.json]
"""

from __future__ import annotations

from benchmarks.probes.ssd_sweep import ab_probe
from mamba_compile.ops import ssd


VARIANTS = {"dcb, dB, dC on the side": (True, True), "dcb on the side": (True, False), "one stream": (False, False)}


def _use(variant):
    ssd.SIDE_STREAM, ssd.SIDE_DBC = VARIANTS[variant]


def main() -> None:
    default = (ssd.SIDE_STREAM, ssd.SIDE_DBC)

    def restore():
        ssd.SIDE_STREAM, ssd.SIDE_DBC = default

    ab_probe(lambda name, shape: [], {v: lambda v=v: _use(v) for v in VARIANTS}, restore, "streams", forward=False)


if __name__ == "__main__":
    main()
