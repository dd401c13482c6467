"""chunk_scan_bwd_dx with a loop over heads (ssd_triton.DX_HEADS: _chunk_scan_bwd_dx_heads_kernel, C_t . B_s formed
once per group and row tile) against one head a program (the default), at both benchmark shapes: first the kernel
alone over heads per program and launch settings (do_bench medians, and the largest difference of any output from
the default's, relative to its largest value), then the op's graphed forward+backward with the fastest setting
against the default, alternating.

    python -m benchmarks.probes.ssd_dx_heads [--out results.json]
"""

from __future__ import annotations

import torch

from benchmarks._common import bench_ms
from benchmarks.probes.ssd_sweep import ab_probe, rel_err, shape_inputs

HEADS = (2, 4, 6, 8, 12, 24)
CONFIGS = [dict(block_t=32, num_warps=8, num_stages=2), dict(block_t=32, num_warps=8, num_stages=3),
           dict(block_t=64, num_warps=8, num_stages=2), dict(block_t=32, num_warps=4, num_stages=2),
           dict(block_t=64, num_warps=4, num_stages=2), dict(block_t=16, num_warps=4, num_stages=2)]
_best: dict = {}


def _outputs(res, block_t, chunk):
    """dx, dL/d dt, col, colstate, dD and the row sums (row's partial sums added where written: row tile k from
    position k * block_t on, as dt_bwd reads them)."""
    dx, ddt, col, colstate, row, dD = res
    written = torch.zeros(row.shape[3], chunk, dtype=torch.bool, device=row.device)
    for k in range(row.shape[3]):
        written[k, k * block_t:] = True
    return [dx, ddt, col, colstate, dD, torch.where(written, row, 0.0).sum(3)]


def kernel_rows(name, shape):
    from mamba_compile.ops import ssd_triton as kt

    t, x, dt, A, B, C, D, z, bias, dtp, dA_cs = shape_inputs(shape)
    chunk = dtp.shape[-1]
    prev, _ = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=C.dtype, wrap=False)
    dy = torch.randn_like(x)
    dprev = kt.chunk_state_fwd(dy, C, dtp, dA_cs, None, from_start=True, wrap=False)
    dend = kt.state_passing_bwd(dprev, dA_cs, prev, None, None, x.shape[1], False, dend_dtype=C.dtype, wrap=False)[0]

    def run(**kw):
        return kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False, **kw)

    want = _outputs(run(heads=0), kt.BLOCK_T_MAX, chunk)
    rows = [dict(shape=name, what="dx, one head a program", ms=bench_ms(lambda: run(heads=0)), diff=0.0)]
    print(rows[-1], flush=True)
    for cfg in CONFIGS:
        for heads in HEADS:
            try:
                got = _outputs(run(heads=heads, **cfg), cfg["block_t"], chunk)
                diff = max(rel_err(a, b) for a, b in zip(got, want))
                ms = bench_ms(lambda: run(heads=heads, **cfg))
            except Exception as e:  # noqa: BLE001
                print(f"{name} heads {heads} {cfg}: failed {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            rows.append(dict(shape=name, what=f"dx, {heads} heads a program, {cfg}", ms=ms, diff=diff))
            print(rows[-1], flush=True)
            if diff < 1e-2 and (name not in _best or ms < _best[name][0]):
                _best[name] = (ms, heads, cfg)
    del t
    torch.cuda.empty_cache()
    print(f"{name}: fastest {_best.get(name)}", flush=True)
    return rows


def _use(variant):
    from mamba_compile.ops import ssd_triton as kt

    if variant == "one head a program":
        kt.DX_HEADS = None
        return
    first = next(iter(_best.values()))
    kt.DX_HEADS = first[1]
    kt.DX_HEADS_CONFIG.update(first[2])


def main() -> None:
    from mamba_compile.ops import ssd_triton as kt

    default = (kt.DX_HEADS, dict(kt.DX_HEADS_CONFIG))

    def restore():
        kt.DX_HEADS = default[0]
        kt.DX_HEADS_CONFIG.clear()
        kt.DX_HEADS_CONFIG.update(default[1])

    ab_probe(kernel_rows, {v: lambda v=v: _use(v) for v in ("one head a program", "fastest heads setting")},
             restore, "dx", forward=False)


if __name__ == "__main__":
    main()
