"""Does the fused decode (mixers.FUSED_DECODE) make a 130M Mamba-1 / Mamba-2 decode step faster? One step of
model.decode_step per row of the table, bf16 weights, fp32 states, on CUDA:

- "eager graph": the step's eager ops captured once in a torch.cuda.CUDAGraph and replayed (the GPU time of
  the launches without Python); the host-side input check of decode_step is skipped (it syncs), otherwise the
  same code.
- "compiled": generation.decode_fn(model, True), i.e. torch.compile(mode="reduce-overhead", fullgraph=True),
  called back to back (CUDA-graph trees). Compiled for Mamba-1 at batch 1 only by default (about 40-60 s per
  flag); Mamba-2 is not compiled by default (``--mamba2-compile-batches 1`` adds it), to keep the probe
  under ~5 minutes.

Also: CUDA kernels per eager step (torch.profiler), the fused logits against the unfused ones from the
same cache state (max |diff| / max |logit|, and whether the greedy tokens agree), and first (``sweep``) each
fused kernel alone over a few block sizes beside what it replaces (written to ``*_kernels.json``).

    python -m benchmarks.probes.decode_fused --out $OUT/decode_fused.json [--batches 1 64] [--compile-batches 1]
        [--models mamba1 mamba2] [--mamba2-compile-batches]
"""

from __future__ import annotations

import argparse
import time

import torch

import mamba_compile.models.mixers as mixers
from benchmarks._common import device_name, write_results
from benchmarks.bench_model import config_130m
from mamba_compile.models import MambaLM
from mamba_compile.models.generation import decode_fn

PROMPT = 16
REPLAYS = 200


def _eager_step(model, ids, cache):
    """decode_step without its input-range check (a host sync, which a CUDA-graph capture rejects)."""
    return model._step(ids, cache)


def _prefilled(model, batch: int):
    """(ids (batch,), cache after a PROMPT-token prefill, its _Snapshot): one row of the probes' tables."""
    gen = torch.Generator(device="cuda").manual_seed(batch)
    prompt = torch.randint(0, model.config.vocab_size, (batch, PROMPT), device="cuda", generator=gen)
    ids = torch.randint(0, model.config.vocab_size, (batch,), device="cuda", generator=gen)
    cache = model.allocate_cache(batch, PROMPT + 4096).mark_static()
    model(prompt, cache=cache)
    return ids, cache, _Snapshot(cache)


def _events_ms(fn, n: int) -> float:
    """Mean ms per call of ``n`` back-to-back calls, between two CUDA events."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def _graph_ms(fn) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):  # warm-up: compiles the Triton kernels, picks cuBLAS algorithms
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(20):
        graph.replay()
    return _events_ms(graph.replay, REPLAYS)


def _kernels_per_step(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(e.count for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA)


class _Snapshot:
    """The cache's tensors after the prompt, restored before each measured configuration."""

    def __init__(self, cache):
        self.cache, self.saved = cache, [t.clone() for t in cache.tensors()]

    def restore(self):
        for t, s in zip(self.cache.tensors(), self.saved):
            t.copy_(s)


def _agreement(got: torch.Tensor, want: torch.Tensor) -> dict:
    got, want = got.float(), want.float()
    return dict(max_rel_diff=((got - want).abs().max() / want.abs().max()).item(),
                greedy_agree=(got.argmax(-1) == want.argmax(-1)).float().mean().item())


@torch.inference_mode()
def run(arch, batches, compile_batches) -> list[dict]:
    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    fused_default, block_default = mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH  # restored at the end
    mixers.FUSED_BLOCK_MAX_BATCH = 0  # the five-launch step (the block step: probes/decode_block.py)
    rows = []
    for batch in batches:
        ids, cache, snap = _prefilled(model, batch)
        logits = {}
        for fused in (False, True):
            mixers.FUSED_DECODE = fused
            snap.restore()
            logits[fused] = _eager_step(model, ids, cache).clone()
            snap.restore()
            launches = _kernels_per_step(lambda: _eager_step(model, ids, cache))
            snap.restore()
            ms = _graph_ms(lambda: _eager_step(model, ids, cache))
            rows.append(dict(model=arch, batch=batch, fused=fused, mode="eager graph", ms=ms, kernels=launches,
                             **(_agreement(logits[True], logits[False]) if fused else {})))
            print(rows[-1], flush=True)
        if batch not in compile_batches:
            continue
        for fused in (False, True):
            mixers.FUSED_DECODE = fused
            step = decode_fn(model, True)  # one compiled function; the flag is a guard, so each value compiles
            snap.restore()
            t = time.perf_counter()
            for _ in range(3):  # compile, record the CUDA graph, replay
                step(ids, cache)
            torch.cuda.synchronize()
            compile_s = time.perf_counter() - t
            snap.restore()
            out = step(ids, cache).clone()
            for _ in range(20):
                step(ids, cache)
            ms = _events_ms(lambda: step(ids, cache), REPLAYS)
            rows.append(dict(model=arch, batch=batch, fused=fused, mode="compiled reduce-overhead", ms=ms, compile_s=compile_s,
                             **_agreement(out, logits[False])))
            print(rows[-1], flush=True)
    mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH = fused_default, block_default
    for r in rows:  # speed-up of each fused row over its unfused twin
        if r["fused"]:
            base = next(b for b in rows if b["model"] == r["model"] and b["batch"] == r["batch"]
                        and b["mode"] == r["mode"] and not b["fused"])
            r["speedup_vs_unfused"] = base["ms"] / r["ms"]
    return rows


def sweep(batches) -> list[dict]:
    """Each fused kernel alone at the 130M shapes (bf16 weights, fp32 states), CUDA-graph timed, over a few block
    sizes (the first row of each is the heuristic's), beside what it replaces: cuBLAS's in_proj alone and
    the unfused dt_proj + selective_state_update."""
    import torch.nn.functional as F

    from benchmarks._common import graph_ms
    from mamba_compile.ops import mamba1_decode_triton as kernels
    from mamba_compile.ops import selective_state_update

    torch.manual_seed(0)
    m, d, n, r, w = 768, 1536, 16, 48, 4
    bf = dict(device="cuda", dtype=torch.bfloat16)
    W_in, W_dt = torch.randn(2 * d, m, **bf) * m**-0.5, torch.randn(d, r, **bf) * r**-0.5
    conv_w, conv_b, dt_b, D = torch.randn(d, w, **bf), torch.randn(d, **bf), torch.randn(d, **bf) - 3, torch.randn(d, **bf)
    A_log = torch.rand(d, n, device="cuda")
    rows = []
    for b in batches:
        h = torch.randn(b, m, **bf)
        conv_state = torch.randn(b, d, w - 1, device="cuda")
        ssm_state = torch.randn(b, d, n, device="cuda")
        x, z, x_dbl = torch.randn(b, d, **bf), torch.randn(b, d, **bf), torch.randn(b, r + 2 * n, **bf)
        rows.append(dict(batch=b, kernel="cuBLAS in_proj alone (F.linear)", config="", us=1e3 * graph_ms(
            lambda: F.linear(h, W_in))))
        in_configs = [(None, None, None)] + ([(8, 256, 4), (8, 1024, 4), (32, 128, 4), (16, 128, 2), (64, 64, 4)] if b == 1 else
                                             [(64, 64, 4), (16, 128, 4), (64, 128, 8)])
        for bn, bk, nw in in_configs:
            us = 1e3 * graph_ms(lambda: kernels.mamba1_decode_in_fwd(
                h, W_in, None, conv_state, conv_w, conv_b, wrap=False, block_n=bn, block_k=bk, num_warps=nw))
            rows.append(dict(batch=b, kernel="mamba1_decode_in", config=f"n{bn} k{bk} w{nw}", us=us))

        def unfused_ssm():
            dt, B, C = x_dbl.split([r, n, n], dim=-1)
            selective_state_update(ssm_state, x, F.linear(dt, W_dt), -torch.exp(A_log.float()), B, C, D.float(),
                                   z=z, dt_bias=dt_b.float(), dt_softplus=True)

        rows.append(dict(batch=b, kernel="unfused dt_proj + glue + selective_state_update", config="",
                         us=1e3 * graph_ms(unfused_ssm)))
        for bd, nw in [(None, None), (8, 4), (16, 4), (32, 4), (64, 4)]:
            us = 1e3 * graph_ms(lambda: kernels.mamba1_decode_ssm_fwd(
                ssm_state, x, x_dbl, W_dt, dt_b, A_log, D, z, wrap=False, block_d=bd, num_warps=nw))
            rows.append(dict(batch=b, kernel="mamba1_decode_ssm", config=f"d{bd} w{nw}", us=us))
    return rows


def sweep_mamba2(batches) -> list[dict]:
    """The Mamba-2 kernels alone at the 130M shapes (d_model 768, d_ssm 1536, 24 heads of 64, d_state 128, one
    group; bf16 weights, fp32 states), as ``sweep``: decode_in over the 3352 in_proj rows (conv on the 1792 xBC
    rows) beside cuBLAS's in_proj + the unfused conv update, and mamba2_decode_ssm beside the unfused glue +
    selective_state_update."""
    import torch.nn.functional as F

    from benchmarks._common import graph_ms
    from mamba_compile.ops import causal_conv1d_update, selective_state_update
    from mamba_compile.ops import mamba1_decode_triton as in_kernels
    from mamba_compile.ops import mamba2_decode_triton as ssm_kernels

    torch.manual_seed(0)
    m, h, p, n, g, w = 768, 24, 64, 128, 1, 4
    d_ssm, conv_dim = h * p, h * p + 2 * g * n
    n_rows = d_ssm + conv_dim + h
    bf = dict(device="cuda", dtype=torch.bfloat16)
    W_in = torch.randn(n_rows, m, **bf) * m**-0.5
    conv_w, conv_b = torch.randn(conv_dim, w, **bf), torch.randn(conv_dim, **bf)
    A_log, dt_b, D = torch.rand(h, device="cuda"), torch.randn(h, device="cuda") - 3, torch.randn(h, device="cuda")
    rows = []
    for b in batches:
        hid = torch.randn(b, m, **bf)
        conv_state = torch.randn(b, conv_dim, w - 1, device="cuda")
        ssm_state = torch.randn(b, h, p, n, device="cuda")
        out = torch.randn(b, n_rows, **bf)
        _, xBC, dt = out.split([d_ssm, conv_dim, h], dim=-1)
        x, B, C = xBC.split([d_ssm, g * n, g * n], dim=-1)
        x, B, C = x.unflatten(-1, (h, p)), B.unflatten(-1, (g, n)), C.unflatten(-1, (g, n))

        def unfused_in():
            _, xBC_, _ = F.linear(hid, W_in).split([d_ssm, conv_dim, h], dim=-1)
            causal_conv1d_update(xBC_, conv_state, conv_w, conv_b, activation="silu")

        rows.append(dict(batch=b, kernel="m2 unfused in_proj + causal_conv1d_update", config="",
                         us=1e3 * graph_ms(unfused_in)))
        in_configs = [(None, None, None)] + ([(8, 256, 4), (32, 128, 4)] if b == 1 else [(64, 64, 4), (16, 128, 4)])
        for bn, bk, nw in in_configs:
            us = 1e3 * graph_ms(lambda: in_kernels.decode_in_fwd(
                hid, W_in, None, conv_state, conv_w, conv_b, d_ssm, wrap=False, block_n=bn, block_k=bk, num_warps=nw))
            rows.append(dict(batch=b, kernel="m2 decode_in", config=f"n{bn} k{bk} w{nw}", us=us))

        def unfused_ssm():
            A = (-torch.exp(A_log.float()))[:, None, None].expand(h, p, n)
            selective_state_update(ssm_state, x, dt[..., None].expand(-1, -1, p), A, B, C,
                                   D.float()[:, None].expand(h, p), dt_bias=dt_b.float()[:, None].expand(h, p),
                                   dt_softplus=True)

        rows.append(dict(batch=b, kernel="m2 unfused glue + selective_state_update", config="",
                         us=1e3 * graph_ms(unfused_ssm)))
        for bp, nw in [(None, None), (4, 4), (8, 4), (32, 4), (16, 8)]:
            us = 1e3 * graph_ms(lambda: ssm_kernels.mamba2_decode_ssm_fwd(
                ssm_state, x, B, C, dt, A_log, dt_b, D, None, (0.0, float("inf")), wrap=False, block_p=bp,
                num_warps=nw))
            rows.append(dict(batch=b, kernel="m2 mamba2_decode_ssm", config=f"p{bp} w{nw}", us=us))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--compile-batches", type=int, nargs="*", default=[1])
    parser.add_argument("--mamba2-compile-batches", type=int, nargs="*", default=[])
    parser.add_argument("--models", nargs="+", default=["mamba1", "mamba2"], choices=["mamba1", "mamba2"])
    args = parser.parse_args()
    print(f"device: {device_name()}, torch {torch.__version__}", flush=True)
    kernel_rows = []
    if "mamba1" in args.models:
        kernel_rows += sweep(args.batches)
    if "mamba2" in args.models:
        kernel_rows += sweep_mamba2(args.batches)
    print("\nFused kernels alone, 130M shapes (us per call, CUDA graph); config None = the heuristic")
    write_results(kernel_rows, args.out.replace(".json", "_kernels.json") if args.out else None)
    rows = []
    if "mamba1" in args.models:
        rows += run("mamba1", args.batches, set(args.compile_batches))
    if "mamba2" in args.models:
        rows += run("mamba2", args.batches, set(args.mamba2_compile_batches))
    print("\n130M decode step, bf16 weights, fp32 states; targets at batch 1: Mamba-1 0.41 ms/step (2x the "
          "reference), Mamba-2 about half of the unfused ~0.66 ms")
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
