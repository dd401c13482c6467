"""The SSD forward as one kernel sequential over the chunks (ssd_triton.ssd_seq_fwd: the state in registers, no
chunk states in memory) against the pipeline of three launches (passing with the cumsum, bmm_cb, chunk_scan):
CUDA-graph medians of the pipeline and of ssd_seq_fwd's launch configurations at both benchmark shapes, each with
the largest difference of its outputs from the pipeline's relative to the largest value; then, with the fastest
configuration of the first shape, the op's graphed forward and forward+backward each way (ssd.SEQ_FWD),
alternating.

    python -m benchmarks.probes.ssd_seq_fwd [--out results.json] [--quick]
"""

from __future__ import annotations

import itertools
import math
import sys

from benchmarks._common import graph_ms
from benchmarks.probes.ssd_sweep import CHUNK, ab_probe, rel_err, shape_inputs
from mamba_compile.ops import ssd, ssd_triton as kt

CONFIGS = [dict(block_p=bp, num_warps=nw, num_stages=ns, read_cb=True)
           for bp, nw, ns in itertools.product((32, 64), (4, 8), (1, 2, 3))]
CONFIGS += [dict(block_p=16, num_warps=4, num_stages=2, read_cb=True),
            dict(block_p=32, num_warps=4, num_stages=2, read_cb=False),
            dict(block_p=64, num_warps=8, num_stages=2, read_cb=False)]
if "--quick" in sys.argv:
    sys.argv.remove("--quick")
    CONFIGS = CONFIGS[:1]
_best: dict = {}


def kernel_rows(name, shape) -> list[dict]:
    t, x, dt, A, B, C, D, z, bias, _, _ = shape_inputs(shape)
    args = (x, dt, A, B, C, CHUNK, D, z, bias, None, None)
    dt_args = (True, 0.0, ssd._OPEN_BOUND, False)

    def pipeline():
        ssd.SEQ_FWD = False
        return ssd._fwd_triton(*args, None, *dt_args[:3], wrap=False)[:2]

    want = pipeline()
    rows = [dict(shape=name, what="pipeline (three launches)", ms=graph_ms(pipeline), diff=0.0)]
    print(rows[-1], flush=True)
    configs = CONFIGS if not _best else [_best["config"]] + [c for c in CONFIGS if c != _best["config"]][:5]
    for cfg in configs:
        fn = lambda cfg=cfg: kt.ssd_seq_fwd(*args, *dt_args, config=cfg, wrap=False)  # noqa: E731
        try:
            diff = max(rel_err(g, w) for g, w in zip(fn(), want))
            ms = graph_ms(fn)
        except Exception as e:  # noqa: BLE001 (a configuration that does not build loses its row, not the run)
            print(f"{cfg}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            diff, ms = float("nan"), float("nan")
        rows.append(dict(shape=name, what=f"one kernel {cfg}", ms=ms, diff=diff))
        print(rows[-1], flush=True)
        if not _best.get("fixed") and diff < 1e-2 and not math.isnan(ms) and ms < _best.get("ms", math.inf):
            _best.update(config=cfg, ms=ms)
    rows.append(dict(shape=name, what="pipeline (three launches)", ms=graph_ms(pipeline), diff=0.0))
    print(rows[-1], flush=True)
    if _best:
        _best["fixed"] = True
        kt.SEQ_FWD_CONFIG.update(_best["config"])
        print("op rows with", kt.SEQ_FWD_CONFIG, flush=True)
    return rows


def main() -> None:
    default = ssd.SEQ_FWD
    ab_probe(kernel_rows, {flag: lambda flag=flag: setattr(ssd, "SEQ_FWD", flag) for flag in (True, False)},
             lambda: setattr(ssd, "SEQ_FWD", default), "one kernel")


if __name__ == "__main__":
    main()
