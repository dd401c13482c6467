"""Benchmark of selective_state_update (one decode token) on CUDA, beside the reference's Triton kernel.

    python -m benchmarks.bench_selective_state_update --out $OUT/bench_selective_state_update.json

Rows: Mamba-1 (dim 1536, dstate 16) and Mamba-2 (nheads 24, headdim 64, dstate 128, ngroups 1, dt / A /
D / dt_bias expanded with stride 0 as the Mamba-2 block passes them) at batch 1 and 64, bf16
activations, fp32 state, D, z, dt_bias, softplus. ``ms`` is do_bench on the public function (eager,
Python overhead included: the state update is launch-bound at batch 1), ``graph_ms`` the same call
replayed from a CUDA graph (how decode runs). The floor is the state read and written once plus the
activations over the copy bandwidth. REFERENCE_TIMINGS.md records no state-update time; when the
reference source is unpacked under .ref/ (see TORCH_NOTES.md) its kernel is timed in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import torch

from benchmarks._common import bench_ms, floor_ms, graph_ms, nbytes, write_results
from mamba_compile.ops import selective_state_update

REF_ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".ref")


def reference_module(name: str):
    """Imports mamba_ssm.<name> from .ref/ without running mamba_ssm's __init__ (which needs its CUDA extensions)."""
    if not os.path.isdir(os.path.join(REF_ROOT, "mamba_ssm")):
        return None
    import importlib

    for pkg in ("mamba_ssm", "mamba_ssm.ops", "mamba_ssm.ops.triton", "mamba_ssm.utils"):
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg)
            mod.__path__ = [os.path.join(REF_ROOT, *pkg.split("."))]
            sys.modules[pkg] = mod
    try:
        return importlib.import_module(f"mamba_ssm.{name}")
    except Exception as e:  # the comparison is optional: report and go on
        print(f"reference mamba_ssm.{name} not importable: {e!r}")
        return None


def _inputs(layout, batch, dim=1536, nheads=24, headdim=64, dstate=16, ngroups=1):
    g = torch.Generator(device="cuda").manual_seed(0)
    rnd = lambda *s, dtype=torch.bfloat16: torch.randn(*s, device="cuda", generator=g, dtype=dtype)  # noqa: E731
    if layout == "mamba1":
        return dict(
            state=rnd(batch, dim, dstate, dtype=torch.float32), x=rnd(batch, dim), dt=rnd(batch, dim),
            A=-torch.rand(dim, dstate, device="cuda", generator=g), B=rnd(batch, dstate), C=rnd(batch, dstate),
            D=rnd(dim, dtype=torch.float32), z=rnd(batch, dim), dt_bias=rnd(dim, dtype=torch.float32),
        )
    return dict(
        state=rnd(batch, nheads, headdim, dstate, dtype=torch.float32),
        x=rnd(batch, nheads, headdim),
        dt=rnd(batch, nheads)[:, :, None].expand(batch, nheads, headdim),
        A=-torch.rand(nheads, device="cuda", generator=g)[:, None, None].expand(nheads, headdim, dstate),
        B=rnd(batch, ngroups, dstate), C=rnd(batch, ngroups, dstate),
        D=rnd(nheads, dtype=torch.float32)[:, None].expand(nheads, headdim),
        z=rnd(batch, nheads, headdim),
        dt_bias=rnd(nheads, dtype=torch.float32)[:, None].expand(nheads, headdim),
    )


def bench(rows, ref, layout, batch, **shape):
    inp = _inputs(layout, batch, **shape)
    label = (f"mamba1 b{batch} d{shape.get('dim', 1536)} n{shape.get('dstate', 16)}" if layout == "mamba1" else
             f"mamba2 b{batch} h{shape['nheads']} p{shape['headdim']} n{shape['dstate']} g{shape['ngroups']}")
    # state read + written; x, z, B, C read; out written (stride-0 params are negligible)
    floor = floor_ms(2 * nbytes(inp["state"]) + 2 * nbytes(inp["x"]) + nbytes(inp["z"], inp["B"], inp["C"]))

    def ours():
        return selective_state_update(**inp, dt_softplus=True)

    ours()
    ms, graph = bench_ms(ours), graph_ms(ours)
    ref_graph = "n/a"
    if ref is not None:
        state_ref = inp["state"].clone()

        def theirs():
            return ref.selective_state_update(**dict(inp, state=state_ref), dt_softplus=True)

        theirs()
        ref_graph = graph_ms(theirs)
    rows.append(dict(op="selective_state_update", shape=label + " bf16", ms=ms, graph_ms=graph, floor_ms=floor,
                     ratio=graph / floor, ref_graph_ms=ref_graph,
                     speedup=ref_graph / graph if ref is not None else "n/a"))


def sweep_blocks(rows, layout, batch, **shape):
    """Direct kernel launches over (BLOCK_M, num_warps), to check the heuristic in selective_state_update_triton."""
    from mamba_compile.ops import selective_state_update_triton as kernels
    from mamba_compile.ops.selective_state_update import _as_mamba2

    inp = _inputs(layout, batch, **shape)
    args = _as_mamba2(*(inp[k] for k in ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")))
    floor = floor_ms(2 * nbytes(inp["state"]) + 2 * nbytes(inp["x"]) + nbytes(inp["z"], inp["B"], inp["C"]))
    default_m, _, default_w = kernels._block_sizes(args[0].shape[-1])
    for block_m, warps in ((1, 1), (2, 2), (4, 4), (8, 4), (16, 4), (16, 8), (32, 4), (32, 8), (64, 8)):
        def fn():
            return kernels.selective_state_update_fwd(*args, True, None, wrap=False, block_m=block_m,
                                                      num_warps=warps)

        fn()
        ms = graph_ms(fn)
        rows.append(dict(case=f"{layout} b{batch}", blocks=f"BLOCK_M={block_m} warps={warps}",
                         default=(block_m, warps) == (default_m, default_w), graph_ms=ms, ratio=ms / floor))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="JSON file for the results")
    args = parser.parse_args()
    ref = reference_module("ops.triton.selective_state_update")
    rows = []
    for batch in (1, 64):
        bench(rows, ref, "mamba1", batch, dim=1536, dstate=16)
        bench(rows, ref, "mamba2", batch, nheads=24, headdim=64, dstate=128, ngroups=1)
    sweep = []
    sweep_blocks(sweep, "mamba1", 64, dim=1536, dstate=16)
    sweep_blocks(sweep, "mamba2", 64, nheads=24, headdim=64, dstate=128, ngroups=1)
    write_results(rows, args.out)
    print()
    write_results(sweep, args.out.replace(".json", "_sweep.json") if args.out else None)


if __name__ == "__main__":
    main()
