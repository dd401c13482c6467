"""The SSD one-kernel forward (ssd_triton.ssd_fused_fwd) against the multi-kernel pipeline and the reference, at both
benchmark shapes, bf16 with D, z, dt_bias, softplus, chunk 256: CUDA-graph medians of the launcher per tile
configuration, the op's forward and forward+backward with the fused forward on and off, and the reference's; each
configuration's largest difference from the multi-kernel output (relative to its largest value), and whether
twenty repeated launches give bit-identical outputs (a race in the state passing would show there).

    python -m benchmarks.probes.ssd_fused_probe [--out results.json] [--configs "[dict(...), ...]"]
"""

from __future__ import annotations

import argparse
import ast

import torch

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.bench_ssd import SHAPES, call, impls, make_inputs

# Kernel configs; "cb": C B^T read from bmm_cb_fwd (its time included) instead of computed per head; "chunk": the
# kernel's own chunk length (the math is the same, the rounding not quite).
CONFIGS = [dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, cb=True),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, cb=True, maxnreg=168),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, cb=True, maxnreg=144),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=4, cb=True, maxnreg=168),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, cb=True, maxnreg=168, wait_first=True),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, cb=True, maxnreg=144, wait_first=True),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, cb=True, maxnreg=128, wait_first=True),
           dict(block_t=64, block_s=32, block_k=64, num_warps=4, num_stages=3, maxnreg=168, wait_first=True),
           dict(block_t=64, block_s=32, block_k=32, num_warps=4, num_stages=3, cb=True, maxnreg=168, wait_first=True),
           dict(block_t=64, block_s=64, block_k=64, num_warps=4, num_stages=3, cb=True, maxnreg=168, wait_first=True)]


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def main() -> None:
    from mamba_compile.ops import ssd_triton as kt

    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--configs", default=None, help="a Python list of ssd_fused_fwd configs")
    args = p.parse_args()
    configs = ast.literal_eval(args.configs) if args.configs else CONFIGS
    fns = impls()
    rows = []
    print(device_name(), flush=True)
    for shape in SHAPES:
        b, l, h, pd, g, n, cs = shape
        label = f"b{b} l{l} h{h}"
        t = make_inputs(b, l, h, pd, g, n)
        tg = make_inputs(b, l, h, pd, g, n, requires_grad=True)
        dout = torch.randn_like(t["x"])

        def step(fn):
            for v in tg.values():
                v.grad = None
            call(fn, tg, cs).backward(dout)

        with torch.no_grad():
            kt.FUSED_FWD = False
            want = fns["ours"](t["x"], t["dt"], t["A"], t["B"], t["C"], cs, D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                               dt_softplus=True, return_final_states=True)
            for fused in (False, True):
                kt.FUSED_FWD = fused
                rows.append(dict(shape=label, what=f"op fwd, fused {fused}",
                                 ms=graph_ms(lambda: call(fns["ours"], t, cs))))
                print(rows[-1], flush=True)
            if "reference" in fns:
                rows.append(dict(shape=label, what="reference fwd", ms=graph_ms(lambda: call(fns["reference"], t, cs))))
                print(rows[-1], flush=True)
            for cfg in configs:
                kcfg = {k: v for k, v in cfg.items() if k not in ("cb", "chunk")}
                chunk = cfg.get("chunk", cs)

                def f(kcfg=kcfg, chunk=chunk, with_cb=cfg.get("cb", False)):
                    cb = kt.bmm_cb_fwd(t["C"], t["B"], chunk, wrap=False) if with_cb else None
                    return kt.ssd_fused_fwd(t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, t["D"], t["z"],
                                            t["dt_bias"], None, True, 0.0, float("inf"), False, cb=cb, config=kcfg,
                                            wrap=False)

                try:
                    out, final, _ = f()
                    same = all(torch.equal(out, o) and torch.equal(final, s) for o, s, _ in (f() for _ in range(20)))
                    rows.append(dict(shape=label, what=f"fused {cfg}", ms=graph_ms(f),
                                     out_diff=rel_err(out, want[0]), final_diff=rel_err(final, want[1]),
                                     repeat_identical=same))
                except Exception as e:  # noqa: BLE001
                    rows.append(dict(shape=label, what=f"fused {cfg}", error=f"{type(e).__name__}: {str(e)[:200]}"))
                print(rows[-1], flush=True)
        for fused in (False, True):
            kt.FUSED_FWD = fused
            rows.append(dict(shape=label, what=f"op fwd+bwd, fused {fused}", ms=graph_ms(lambda: step(fns["ours"]))))
            print(rows[-1], flush=True)
        if "reference" in fns:
            rows.append(dict(shape=label, what="reference fwd+bwd", ms=graph_ms(lambda: step(fns["reference"]))))
            print(rows[-1], flush=True)
        kt.FUSED_FWD = True
        del t, tg
        torch.cuda.empty_cache()
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
