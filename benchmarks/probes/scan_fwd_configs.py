"""Probe (GPU): Mamba-1 scan forward block configurations, timed as CUDA graphs in alternating rounds.

    python3 -m benchmarks.probes.scan_fwd_configs --out $OUT/scan_fwd_configs.json [--configs "[(16, 16, 2), ...]"]
    TRITON_PTXAS_PATH=/path/to/ptxas python3 -m benchmarks.probes.scan_fwd_configs ...   # built by another ptxas

For each (BLOCK_D, BLOCK_L, num_warps[, prefetch[, rows_ahead[, lanes[, lane_y]]]]) (prefetch: the L1 prefetch of B/C
rows on or off; rows_ahead: how many steps ahead B/C rows are loaded, 4 or 8; lanes: step columns by lane shuffles
where they apply, on or off; lane_y: with them, y summed across lanes once a block; left out, the library's choices) at b8 d1536 l2048 n16 and b2 d5120 l8192 n16 (bf16 u/delta/z, B/C (b, 1, 16,
l) bf16, fp32 A/D/delta_bias, softplus): the forward launcher without and with saving states for the backward,
medians of three rounds, each round timing every configuration in turn, and the largest difference of its output
and last state from the default configuration's (the same fp32 math in another order: rounding-level).
"""

from __future__ import annotations

import argparse
import statistics

import torch

from benchmarks._common import device_name, graph_ms, ptxas_versions, write_results
from benchmarks.probes.scan_bwd_probe import _args, make_inputs
from mamba_compile.ops import selective_scan_triton as kern
from mamba_compile.ops._triton import ptxas_major

CONFIGS = [(32, 16, 2, False), (32, 16, 2, True), (16, 16, 1, False), (16, 16, 1, True), (16, 16, 2), (32, 16, 4),
           (8, 16, 1), (16, 8, 1)]


def _rel(a, b) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def probe(batch, dim, seqlen, dstate, configs) -> list[dict]:
    shape = f"b{batch} d{dim} l{seqlen} n{dstate}"
    t = make_inputs(batch, dim, seqlen, dstate)
    args = _args(t)
    ref_out, ref_last, ref_states = kern.selective_scan_fwd(*args, True, wrap=False)
    ptxas = ptxas_major(args[0])
    errs, timers = {}, {}
    for cfg in configs:
        cfg = tuple(cfg) + (None,) * (7 - len(cfg))
        try:
            out, last, states = kern.selective_scan_fwd(*args, True, wrap=False, config=cfg[:3], prefetch=cfg[3],
                                                        rows_ahead=cfg[4], lanes=cfg[5], lane_y=cfg[6])
            torch.cuda.synchronize()
        except Exception as e:  # a configuration that does not compile is reported, not fatal
            print(f"{shape} {cfg}: {type(e).__name__}: {str(e)[:300]}", flush=True)
            continue
        errs[cfg] = (_rel(out, ref_out), _rel(last, ref_last), _rel(states, ref_states))
        for save in (False, True):
            timers[cfg, save] = lambda c=cfg, s=save: graph_ms(
                lambda: kern.selective_scan_fwd(*args, s, wrap=False, config=c[:3], prefetch=c[3], rows_ahead=c[4],
                                                  lanes=c[5], lane_y=c[6]))
    times = {k: [] for k in timers}
    for _ in range(3):
        for k, timer in timers.items():
            times[k].append(timer())
    rows = []
    for (cfg, save), ts in times.items():
        e = errs[cfg]
        rows.append(dict(shape=shape, config=str(cfg), ptxas=ptxas, states_saved=save,
                         ms=statistics.median(ts), runs=" ".join(f"{x:.4f}" for x in ts), out_diff=f"{e[0]:.1e}",
                         last_diff=f"{e[1]:.1e}", states_diff=f"{e[2]:.1e}"))
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--configs", default=None, help="Python list of (BLOCK_D, BLOCK_L, num_warps[, prefetch[, rows_ahead[, lanes[, lane_y]]]])")
    parser.add_argument("--small-only", action="store_true")
    args = parser.parse_args()
    configs = eval(args.configs) if args.configs else CONFIGS
    print(f"device: {device_name()}, torch {torch.__version__}, ptxas {ptxas_versions()}", flush=True)
    rows = probe(8, 1536, 2048, 16, configs)
    if not args.small_only:
        rows += probe(2, 5120, 8192, 16, configs)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
