"""Where a 130M model's time goes on the GPU: torch.profiler tables of generation and of a training step.

    python -m benchmarks.probes.profile_model --out $OUT [--arch mamba1 mamba2] [--cases generate train] [--sources]
        [--kernels]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_model import config_130m
from mamba_compile.models import MambaLM


def _table(prof, path: str, title: str, rows: int = 35) -> None:
    events = prof.key_averages()
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total_us = sum(e.self_device_time_total for e in kernels)
    count = sum(e.count for e in kernels)
    text = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=rows, max_name_column_width=90)
    with open(path, "a") as f:
        f.write(f"\n\n## {title}\nGPU kernel time {total_us / 1e3:.2f} ms in {count} kernel launches\n{text}\n")
    print(f"{title}: GPU kernel time {total_us / 1e3:.2f} ms, {count} launches", flush=True)


def generate(arch: str, out: str, state_dtype=None) -> None:
    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    for batch in (1, 64):
        ids = torch.randint(0, model.config.vocab_size, (batch, 100), device="cuda")
        kw = {} if state_dtype is None else {"state_dtype": state_dtype}
        cache = model.allocate_cache(batch, 200, **kw).mark_static()
        t = time.perf_counter()
        model.generate(ids, 100, compile=True, cache=cache)
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t
        walls, prefills = [], []
        for _ in range(5):
            t = time.perf_counter()
            o = model.generate(ids, 100, compile=True, cache=cache)
            torch.cuda.synchronize()
            walls.append((time.perf_counter() - t) * 1e3)
            prefills.append(o.prefill_s * 1e3)
        print(f"{arch} b{batch} state {state_dtype}: generate {statistics.median(walls):.1f} ms "
              f"(prefill {statistics.median(prefills):.1f} ms), first call {compile_s:.1f} s", flush=True)
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            model.generate(ids, 100, compile=True, cache=cache)
            torch.cuda.synchronize()
        _table(prof, out, f"{arch} generate b{batch} state {state_dtype} (100 tokens after 100)")


def _gaps(prof, path: str, title: str) -> None:
    """GPU busy time (the union of kernel and copy intervals) against the span from the first to the last, and
    the largest idle gaps with the kernels on either side: how much of a step the host leaves the GPU idle."""
    iv = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                if e.device_type == torch.autograd.DeviceType.CUDA)
    if not iv:
        return
    busy, gaps, cur_s, cur_e, prev = 0.0, [], iv[0][0], iv[0][1], iv[0][2]
    for s0, e0, name in iv[1:]:
        if s0 > cur_e:
            busy += cur_e - cur_s
            gaps.append((s0 - cur_e, prev, name))
            cur_s = s0
        if e0 > cur_e:
            cur_e, prev = e0, name
    busy += cur_e - cur_s
    span = iv[-1][1] - iv[0][0]
    gaps.sort(reverse=True)
    lines = [f"\n\n## {title}: GPU busy {busy / 1e3:.2f} ms of a {span / 1e3:.2f} ms span "
             f"(idle {(span - busy) / 1e3:.2f} ms in {len(gaps)} gaps)"]
    lines += [f"- {g / 1e3:.3f} ms after {a[:80]} before {b[:80]}" for g, a, b in gaps[:15]]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")
    print(lines[0].strip(), flush=True)


def _enclosing(event, depth: int, width: int) -> list[str]:
    """The names (cut to ``width``) of up to ``depth`` host events enclosing ``event``, innermost first: the autograd
    nodes, compiled graphs and modules it ran in."""
    names, p = [], event.cpu_parent
    while p is not None and len(names) < depth:
        names.append(p.name[:width])
        p = p.cpu_parent
    return names


def _op_sources(prof, path: str, title: str, min_us: float = 20.0) -> None:
    """The aten ops whose kernels took at least ``min_us`` each, grouped by name, input shapes and the innermost
    Python frames that called them (needs record_shapes and with_stack): where the elementwise kernels outside the
    compiled graphs come from."""
    groups = {}
    for e in prof.events():
        dev_us = e.device_time_total
        if not e.name.startswith("aten::") or dev_us < min_us or (e.cpu_parent is not None
                                                                   and e.cpu_parent.name.startswith("aten::")):
            continue
        callers = _enclosing(e, 3, 60)
        stack = [f for f in (e.stack or []) if "torch/" not in f][:2]
        key = (e.name, str(e.input_shapes)[:120], " <- ".join(callers + stack)[:300])
        n, t = groups.get(key, (0, 0.0))
        groups[key] = (n + 1, t + dev_us)
    lines = [f"\n\n## {title}: aten ops of at least {min_us} us, by shapes and caller"]
    for (name, shapes, stack), (n, t) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:30]:
        lines.append(f"- {t / 1e3:.3f} ms in {n} calls: {name} {shapes} <- {stack}")
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def train_step(model, opt, ids, head_loss):
    """One bf16-autocast training step of ``model`` on ``ids`` (b, l + 1): the backbone, ``head_loss(hidden, ids)``,
    backward and the optimizer."""

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = head_loss(model.backbone(ids[:, :-1]), ids)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _kernel_list(prof, path: str, title: str) -> None:
    """Every GPU kernel of the profile by name, with its launch count and total time, most launches first: what a
    layer launches, and which launches are too short to be worth their place in a CUDA graph."""
    rows = {}
    for e in prof.events():
        if (e.device_type == torch.autograd.DeviceType.CUDA and not getattr(e, "is_user_annotation", False)
                and not e.name.startswith("## ")):
            n, t = rows.get(e.name, (0, 0.0))
            rows[e.name] = (n + 1, t + e.device_time_total)
    lines = [f"\n\n## {title}: all kernels ({sum(n for n, _ in rows.values())} launches, "
             f"{sum(t for _, t in rows.values()) / 1e3:.2f} ms)", "", "| launches | total ms | mean us | kernel |",
             "|---|---|---|---|"]
    for name, (n, t) in sorted(rows.items(), key=lambda kv: (-kv[1][0], -kv[1][1])):
        lines.append(f"| {n} | {t / 1e3:.3f} | {t / n:.1f} | {name[:110]} |")
    # who asks for the memsets: the host events enclosing each cudaMemsetAsync call
    callers = {}
    for e in prof.events():
        if e.name.startswith("cudaMemset"):
            key = " <- ".join(_enclosing(e, 4, 50)) or "(no enclosing event)"
            callers[key] = callers.get(key, 0) + 1
    if callers:
        lines += ["", "| memset calls | called from |", "|---|---|"]
        lines += [f"| {n} | {key} |" for key, n in sorted(callers.items(), key=lambda kv: -kv[1])]
    with open(path, "a") as f:
        f.write("\n".join(lines) + "\n")


def train(arch: str, out: str, fused: bool = True, sources: bool = False, kernels: bool = False) -> None:
    """One training step as bench_model --regional times it (fused linear + cross-entropy head unless not
    fused): the top kernels, then the GPU's idle gaps."""
    from mamba_compile.ops import linear_cross_entropy

    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (8, 2049), device="cuda")
    for layer in model.backbone.layers:
        layer.compile(fullgraph=True)

    def head_loss(hidden, ids):
        if fused:
            return linear_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, ids[:, 1:].flatten())
        return F.cross_entropy(model.lm_head(hidden).flatten(0, 1).float(), ids[:, 1:].flatten())

    step = train_step(model, opt, ids, torch.compile(head_loss, fullgraph=True))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=sources,
                 with_stack=sources) as prof:
        step()
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30
    title = f"{arch} train step b8x2048 (regional compile, {'fused' if fused else 'plain'} CE head), peak {peak:.2f} GiB"
    _table(prof, out, title, rows=45)
    _gaps(prof, out, title)
    if sources:
        _op_sources(prof, out, title)
    if kernels:
        _kernel_list(prof, out, title)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=".")
    p.add_argument("--arch", nargs="+", default=["mamba1", "mamba2"])
    p.add_argument("--cases", nargs="+", default=["generate", "train"])
    p.add_argument("--state-dtype", default=None, choices=[None, "bfloat16"])
    p.add_argument("--sources", action="store_true", help="train: also the aten ops by shapes and Python caller")
    p.add_argument("--kernels", action="store_true", help="train: also every kernel with its launch count")
    args = p.parse_args()
    path = os.path.join(args.out, "profile_model.md")
    sd = getattr(torch, args.state_dtype) if args.state_dtype else None
    for arch in args.arch:
        for case in args.cases:
            try:
                if case == "generate":
                    generate(arch, path, sd)
                else:
                    train(arch, path, sources=args.sources, kernels=args.kernels)
            except Exception as e:  # noqa: BLE001
                import traceback

                traceback.print_exc()
                print(f"FAILED {arch} {case}: {e}", flush=True)
            torch._dynamo.reset()
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
