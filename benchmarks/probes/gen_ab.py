"""A/B of the greedy generation path (eager prefill, compiled decode step with CUDA graphs), one variant at a
time in one process: the time of model.generate(100 new tokens after 100) and its decode part per step, beside
the eager step replayed from one CUDA graph. Variants undo themselves after their row.

    python -m benchmarks.probes.gen_ab --out $OUT/gen_ab.json [--models mamba2] [--variants current gemv_off]
        [--batch 64]

At batch 64 (left open in the fifth session): Mamba-2 generated in 167.3 ms with the eight-step graphs against
155.7 with one reduce-overhead call a step, while Mamba-1 went from 110.5 to 92.0. ``--batch 64 --variants
current graphed_all graphed_all_plain_argmax`` separates the graphs from the two-stage argmax.

Ninth session (H100, Mamba-2 b1): eager_graph_step_ms 0.360, eager_graph_step_pdl_ms (the same step's graph with
dependent launches) 0.260; ``pdl_off`` graphed step 0.365 ms. ``--watchdog S`` prints every thread's stack each S
seconds (it found Inductor's compile of the 24-layer step with opaque decode ops stuck in IR printing).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch

import mamba_compile.models.mixers as mixers
from benchmarks._common import device_name, fresh_compiles, write_results
from benchmarks.bench_model import config_130m
from benchmarks.probes.decode_fused import _eager_step, _events_ms, _graph_ms
from mamba_compile.models import MambaLM, generation
from mamba_compile.models import model as model_module
from mamba_compile.models.cache import InferenceCache
from mamba_compile.ops import mamba1_decode_triton
from mamba_compile.ops._triton import dependent_launches


def _set(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    return lambda: setattr(obj, name, old)


def _per_tensor_reset(self):
    for t in self.tensors():
        t.zero_()
    return self


VARIANTS = {
    "current": lambda: (lambda: None),
    "gemv_off": lambda: _set(mixers, "DECODE_GEMV", False),
    "norm_in_8_warps": lambda: _set(mamba1_decode_triton, "decode_norm_in_fwd", functools.partial(
        mamba1_decode_triton.decode_norm_in_fwd, num_warps=8)),
    "per_tensor_reset": lambda: _set(InferenceCache, "reset", _per_tensor_reset),
    "five_launch_step": lambda: _set(mixers, "FUSED_BLOCK_MAX_BATCH", 0),
    "per_step_calls": lambda: _set(generation, "GRAPH_STEPS", 0),
    "graphed_all": lambda: _set(generation, "GRAPH_MAX_BATCH", 1 << 20),
    "graphed_all_plain_argmax": lambda: _chain(_set(generation, "GRAPH_MAX_BATCH", 1 << 20),
                                               _set(model_module, "FIRST_ARGMAX_MAX_BATCH", 0)),
    "first_argmax_all": lambda: _set(model_module, "FIRST_ARGMAX_MAX_BATCH", 1 << 20),
    "pdl_off": lambda: _set(generation, "DEPENDENT_LAUNCH", False),
}


def _chain(*undos):
    return lambda: [undo() for undo in reversed(undos)]


@torch.inference_mode()
def run(arch: str, variants: list[str], iters: int = 5, batch: int = 1) -> list[dict]:
    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, 100), device="cuda")
    rows, first = [], None
    for name in variants:
        undo = VARIANTS[name]()
        try:
            torch._dynamo.reset()
            model._compiled_steps.clear()
            model.__dict__.pop("_graphed_greedy", None)
            model._generation_cache = None
            cache = model.allocate_cache(batch, 300).mark_static()
            model(ids, cache=cache)
            step_ms = _graph_ms(lambda: _eager_step(model, ids[:, -1], cache))
            print(f"  {name}: eager step graph {step_ms:.3f} ms", flush=True)
            with dependent_launches():  # the same step's graph, its decode kernels launched dependent
                step_pdl_ms = _graph_ms(lambda: _eager_step(model, ids[:, -1], cache))
            t = time.perf_counter()
            print(f"  {name}: eager step graph, dependent launches {step_pdl_ms:.3f} ms", flush=True)
            model.generate(ids, 100)  # compiles the step, records its graph
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t
            print(f"  {name}: first generate {compile_s:.1f} s", flush=True)
            totals, decodes = [], []
            for _ in range(iters):
                t = time.perf_counter()
                out = model.generate(ids, 100)
                torch.cuda.synchronize()
                totals.append((time.perf_counter() - t) * 1e3)
                decodes.append(out.decode_s * 1e3)
            runner = next(iter(model.__dict__.get("_graphed_greedy", {}).values()), None)
            graphed_ms = None
            if runner is not None:  # the GRAPH_STEPS-step graph alone (its tokens past the cache's end unused)
                graphed_ms = _events_ms(lambda: runner.replay(runner.steps), 20) / runner.steps
            first = out.sequences if first is None else first
            rows.append(dict(model=arch, batch=batch, variant=name, eager_graph_step_ms=step_ms,
                             eager_graph_step_pdl_ms=step_pdl_ms, graphed_step_ms=graphed_ms,
                             dependent=getattr(runner, "dependent", None), generate_ms=statistics.median(totals),
                             decode_ms_per_step=statistics.median(decodes) / 99, compile_s=compile_s,
                             same_tokens_as_first=bool(torch.equal(out.sequences, first))))
        except Exception as e:  # noqa: BLE001
            rows.append(dict(model=arch, variant=name, error=f"{type(e).__name__}: {e}"[:200]))
        finally:
            undo()
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--models", nargs="+", default=["mamba2", "mamba1"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--watchdog", type=float, default=0,
                        help="seconds: print every thread's stack at that interval (to find a hang)")
    args = parser.parse_args()
    fresh_compiles()  # variants such as norm_in_8_warps change kernels inside custom ops
    if args.watchdog:
        import faulthandler

        faulthandler.dump_traceback_later(args.watchdog, repeat=True)
    print(f"device: {device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for arch in args.models:
        rows += run(arch, args.variants, batch=args.batch)
    print(f"\nbatch-{args.batch} generation, eager prefill, compiled decode step (CUDA graphs), bf16, fp32 states")
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
