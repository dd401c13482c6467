"""Whole-model benchmark: 130M Mamba-1 / Mamba-2 (d_model 768, 24 layers, vocab 50277, random weights).

GPU (default): compiled training step (AdamW, bf16 autocast, b8 x 2048) tokens/s and peak memory;
generation of 100 tokens after a 100-token prompt at batch 1 and 64 (bf16, compiled decode step with
CUDA graphs); each beside the reference's numbers from REFERENCE_TIMINGS.md. Compile / capture time is
kept out of the timed region and reported separately.
CPU (--cpu): our eager forward against transformers' pure-torch MambaForCausalLM / Mamba2ForCausalLM.

    python -m benchmarks.bench_model --out $OUT/model.json [--cpu] [--arch mamba1 mamba2] [--cases generate train]
"""

from __future__ import annotations

import argparse
import statistics
import time
import traceback

import torch
import torch.nn.functional as F

from mamba_compile.models import GraphedTrainStep, MambaConfig, MambaLM
from mamba_compile.ops import linear_cross_entropy

from ._common import floor_ms, nbytes, write_results

# REFERENCE_TIMINGS.md, whole models (reference implementation, eager, H100)
REF_TRAIN = {"mamba1": (109.2, 150.0e3, 18.0), "mamba2": (126.5, 129.5e3, 18.5)}  # ms, tok/s, GiB
REF_GENERATE = {("mamba1", 1): 95.0, ("mamba1", 64): 117.8, ("mamba2", 1): 80.8, ("mamba2", 64): 159.9}  # ms


def config_130m(arch: str, **kw) -> MambaConfig:
    ssm = {"layer": "Mamba2" if arch == "mamba2" else "Mamba1"}
    return MambaConfig(**{**dict(d_model=768, n_layer=24, vocab_size=50277, ssm_cfg=ssm), **kw})


def _cuda_ms(fn, iters: int) -> list[float]:
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def bench_train(arch: str, batch: int = 8, seqlen: int = 2048, iters: int = 30, regional: bool = False,
                fused: bool = True, graph: bool = False) -> dict:
    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda").train()
    if graph:  # a capturable step; the lr a tensor, as a schedule would need
        opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-4, device="cuda"), fused=True,
                                capturable=True)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (batch, seqlen + 1), device="cuda")

    def head_loss(hidden, ids):
        if fused:  # what model(ids, labels=ids) computes: no logits materialised
            return linear_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, ids[:, 1:].flatten())
        return F.cross_entropy(model.lm_head(hidden).flatten(0, 1).float(), ids[:, 1:].flatten())

    def loss_fn(ids):
        # backbone + loss: model() would also range-check the ids in eager mode (a host sync)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return head_loss(model.backbone(ids[:, :-1]), ids)

    if regional:  # one compiled graph serves every block (their code and shapes are the same)
        for layer in model.backbone.layers:
            layer.compile(fullgraph=True)
        head_loss = torch.compile(head_loss, fullgraph=True)
        compiled = loss_fn
    else:
        compiled = torch.compile(loss_fn, fullgraph=True)

    def step():
        loss = compiled(ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if graph:  # two eager steps, then the step captured once and replayed (GraphedTrainStep)
        graphed = GraphedTrainStep(compiled, opt, warmup=2)

        def step():
            graphed(ids)

    t = time.perf_counter()
    step()
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    step()
    # The peak of an eager step, or (graph) of the capture, whose allocations the replays reuse: a replay
    # allocates nothing, so a peak taken over replays alone would leave out the activations.
    torch.cuda.reset_peak_memory_stats()
    step()
    # 10 steps moved by up to 10 ms between runs of the same code (session 4): 30, with the quartiles
    times = _cuda_ms(step, iters)
    ms = statistics.median(times)
    q1, _, q3 = statistics.quantiles(times, n=4)
    peak = torch.cuda.max_memory_allocated() / 2**30
    reserved = torch.cuda.max_memory_reserved() / 2**30
    ref_ms, ref_tps, ref_gib = REF_TRAIN[arch]
    tps = batch * seqlen / (ms * 1e-3)
    how = (("regional compile" if regional else "whole-model compile") + (", fused linear+CE" if fused else "")
           + (", one CUDA graph per step (GraphedTrainStep)" if graph else ""))
    return dict(model=arch, case=f"train b{batch}x{seqlen} bf16 autocast AdamW, {how}", ms=ms, ref_ms=ref_ms,
                speedup=ref_ms / ms, tok_per_s=tps, ref_tok_per_s=ref_tps, peak_gib=peak, ref_peak_gib=ref_gib,
                reserved_gib=reserved, compile_s=compile_s, step_ms_q1_q3=f"{q1:.1f}-{q3:.1f}")


def bench_generate(arch: str, batch: int, prompt: int = 100, new: int = 100, iters: int = 5, model=None,
                   state_dtype=torch.float32) -> dict:
    if model is None:
        torch.manual_seed(0)
        model = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device="cuda")
    cache = model.allocate_cache(batch, prompt + new, state_dtype=state_dtype).mark_static()
    t = time.perf_counter()
    model.generate(ids, new, compile=True, compile_prefill=True, cache=cache)  # compile + CUDA-graph capture
    torch.cuda.synchronize()
    compile_s = time.perf_counter() - t
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        out = model.generate(ids, new, compile=True, compile_prefill=True, cache=cache)
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t) * 1e3)
    assert out.sequences.shape == (batch, new)
    ms, ref = statistics.median(times), REF_GENERATE[(arch, batch)]
    # floor: every step reads all weights once and reads + writes every recurrent state
    step_bytes = nbytes(*model.parameters()) + 2 * nbytes(*cache.tensors())
    floor = new * floor_ms(step_bytes)
    states = str(state_dtype).replace("torch.", "").replace("bfloat16", "bf16").replace("float32", "fp32")
    return dict(model=arch, case=f"generate {new} after {prompt}, batch {batch}, bf16, {states} states, CUDA graphs", ms=ms,
                floor_ms=floor, ratio=ms / floor, ref_ms=ref, speedup=ref / ms, tok_per_s=batch * new / (ms * 1e-3),
                prefill_ms=out.prefill_s * 1e3, compile_s=compile_s)


_MODELS = {}


def _generation_model(arch: str) -> MambaLM:
    """One bf16 model per architecture, shared by the batch sizes (its compiled decode step too)."""
    if arch not in _MODELS:
        _MODELS.clear()
        torch.manual_seed(0)
        _MODELS[arch] = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    return _MODELS[arch]


def bench_cpu(arch: str, batch: int = 2, seqlen: int = 256, iters: int = 5, size: str = "small") -> dict:
    """Eager forward on CPU beside transformers' pure-torch model; ``size`` "130m" is the GPU tables' config."""
    import transformers

    torch.manual_seed(0)
    big = size == "130m"
    d, layers, vocab = (768, 24, 50280) if big else (256, 4, 1024)
    if arch == "mamba1":
        hf = transformers.MambaForCausalLM(transformers.MambaConfig(
            vocab_size=vocab, hidden_size=d, state_size=16, num_hidden_layers=layers))
    else:
        heads = 2 * d // 64
        hf = transformers.Mamba2ForCausalLM(transformers.Mamba2Config(
            vocab_size=vocab, hidden_size=d, state_size=128 if big else 64, num_hidden_layers=layers,
            num_heads=heads, head_dim=64, n_groups=1, chunk_size=256 if big else 64))
    hf = hf.eval()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        hf.save_pretrained(tmp)
        ours = MambaLM.from_pretrained(tmp)
    ids = torch.randint(0, vocab, (batch, seqlen))

    # The two models alternate, call by call, so that drift in the machine's speed (other processes, clocks)
    # falls on both: timed in two separate blocks, their ratio moved by 10% between runs.
    times = {"ours": [], "hf": []}
    with torch.no_grad():
        ours(ids), hf(ids)
        for _ in range(iters):
            for name, model in (("ours", ours), ("hf", hf)):
                t = time.perf_counter()
                model(ids)
                times[name].append((time.perf_counter() - t) * 1e3)
    ours_ms, hf_ms = statistics.median(times["ours"]), statistics.median(times["hf"])
    with torch.no_grad():
        want = hf(ids).logits
        err = ((ours(ids).logits - want).abs().max() / want.abs().max()).item()
    return dict(model=arch, case=f"cpu forward b{batch}x{seqlen} d{d} {layers} layers fp32", ms=ours_ms,
                ref_ms=hf_ms, speedup=hf_ms / ours_ms, max_rel_diff=f"{err:.1e}", ref="transformers (pure torch)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out")
    p.add_argument("--cpu", action="store_true")
    p.add_argument("--cpu-size", default="small", choices=["small", "130m"],
                   help="CPU: d256 4 layers b2x256 (small), or the 130M config at b1x256")
    p.add_argument("--arch", nargs="+", default=["mamba1", "mamba2"], choices=["mamba1", "mamba2"])
    p.add_argument("--cases", nargs="+", default=["generate", "train"], choices=["generate", "train"],
                   help="GPU cases to run (training first: with --regional it compiles in about 25 s, a generation "
                        "case with its compiled prefill in 2 to 3 minutes on an H100)")
    p.add_argument("--gen", nargs="+", default=["1:fp32", "64:fp32", "64:bf16"],
                   help="generation cases as batch:state-dtype (each compiles in 2-3 minutes)")
    p.add_argument("--regional", action="store_true",
                   help="training: compile each block instead of the whole model (much shorter compile)")
    p.add_argument("--train-graph", nargs="+", default=["off"], choices=["off", "on"],
                   help="training: without and/or with the step replayed from one CUDA graph (GraphedTrainStep)")
    args = p.parse_args(argv)
    cases = []  # (name, shared model key or None, fn): consecutive generate cases of one arch share its model
    if not args.cpu and "train" in args.cases:
        cases += [(f"{arch} train{' graph' if g == 'on' else ''}", None,
                   lambda a=arch, g=g: bench_train(a, regional=args.regional, graph=g == "on"))
                  for arch in args.arch for g in args.train_graph]
    for arch in args.arch:
        if args.cpu:
            kw = dict(batch=1, iters=3, size="130m") if args.cpu_size == "130m" else {}
            cases.append((f"{arch} cpu", None, lambda a=arch, kw=kw: bench_cpu(a, **kw)))
            continue
        if "generate" in args.cases:
            dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
            for batch, sd in ((int(c.split(":")[0]), dtypes[c.split(":")[1]]) for c in args.gen):
                cases.append((f"{arch} generate b{batch} {sd}", arch,
                              lambda a=arch, b=batch, sd=sd: bench_generate(a, b, model=_generation_model(a), state_dtype=sd)))
    rows = []
    # one failing case must not lose the others; results are written after each
    for i, (name, key, fn) in enumerate(cases):
        try:
            rows.append(fn())
            print(f"done: {name}: {rows[-1]}", flush=True)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append(dict(model=name, case="FAILED", error=f"{type(e).__name__}: {e}"[:300]))
        if key is None or i + 1 == len(cases) or cases[i + 1][1] != key:
            _MODELS.clear()
            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if args.out:
            _write(rows, args.out, quiet=True)
    _write(rows, args.out)


def _write(rows: list[dict], path: str | None, quiet: bool = False) -> None:
    if quiet:
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):
            write_results(rows, path)
    else:
        write_results(rows, path)


if __name__ == "__main__":
    main()
