"""Register caps (ptxas maxnreg) for the SSD's kernels that run at low occupancy: chunk_scan_bwd_dx and dC's
_chunk_scan_bwd_dbc_kernel (251-255 registers at 4 warps: 2 programs an SM), chunk_scan_fwd (128: 4). ncu on an H100
(session 30) puts dx at 1.96 active warps a scheduler, 0.44 eligible, DRAM 24% busy. For each kernel and cap: the
op's graphed forward+backward (or forward) at both benchmark shapes, alternating with no cap; the kernels launch
with ``maxnreg`` added to their launch options (eager launches: the op through _EagerScan), and the outputs are
compared with the uncapped ones.

    python -m benchmarks.probes.ssd_caps [--out results.json]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import alternating_graph_ms, device_name, write_results
from benchmarks.bench_ssd import call, fwd_bwd, impls, make_inputs
from benchmarks.probes.ssd_sweep import SHAPES

CAPS = {"_chunk_scan_bwd_dx_kernel": (216, 192, 168, 128), "_chunk_scan_bwd_dbc_kernel": (192, 168, 128),
        "_chunk_scan_fwd_kernel": (112, 96)}


class _Capped:
    def __init__(self, inner, cap):
        self.inner, self.cap = inner, cap

    def __getitem__(self, grid):
        return lambda *a, **k: self.inner[grid](*a, **k, maxnreg=self.cap)


_cap: dict = {}


def _install():
    from mamba_compile.ops import ssd_triton as kt

    real = kt._launch

    def launch(kernel, wrap):
        out = real(kernel, wrap)
        cap = _cap.get(kernel.fn.__name__)
        return _Capped(out, cap) if cap else out

    kt._launch = launch


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    args = p.parse_args()
    print(device_name(), flush=True)
    _install()
    fn = impls()["ours"]
    rows = []
    for name, shape in SHAPES.items():
        tg = make_inputs(*shape, requires_grad=True)
        ti = make_inputs(*shape)
        dout = torch.randn_like(tg["x"])

        def grads():
            fwd_bwd(fn, tg, 256, dout)
            return [v.grad.clone() for v in tg.values()]

        base = grads()
        for kernel, caps in CAPS.items():
            forward = kernel == "_chunk_scan_fwd_kernel"
            step = torch.no_grad()(lambda: call(fn, ti, 256)) if forward else (lambda: fwd_bwd(fn, tg, 256, dout))
            variants = {"none": lambda: _cap.clear()}
            for cap in caps:
                _cap[kernel] = cap
                try:
                    got = grads()
                    diff = max(((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
                               for a, b in zip(got, base))
                except Exception as e:  # noqa: BLE001
                    print(f"{name} {kernel} cap {cap}: failed {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                finally:
                    _cap.clear()
                print(f"{name} {kernel} cap {cap}: largest gradient difference {diff:.1e}", flush=True)
                variants[str(cap)] = lambda cap=cap, kernel=kernel: _cap.update({kernel: cap})
            try:
                for label, ms in alternating_graph_ms(step, variants):
                    rows.append(dict(shape=name, what=f"op {'fwd' if forward else 'fwd+bwd'}, {kernel} maxnreg {label}",
                                     ms=ms))
                    print(rows[-1], flush=True)
            finally:
                _cap.clear()
        del tg, ti
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
