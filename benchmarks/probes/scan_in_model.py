"""Probe (GPU): the Mamba-1 scan forward inside the 130M training step against the same launch on its own.

The profiled training step put the forward kernel at 0.316 ms a layer, where the launcher alone takes 0.283 on random
inputs in the same layout (scan_variants --layouts). This asks whether the difference follows the data or the
surroundings:

1. an eager training step under autocast records the forward launcher's arguments at one layer (the model's own
   activations: dt from dt_proj and its bias, A from A_log, x from the conv);
2. the forward launcher (states saved) as a CUDA graph on those tensors, and on random tensors of the same shapes,
   dtypes and strides (scan_bwd_probe's distributions), alternating for a few rounds;
3. the regional compiled step under torch.profiler (as profile_model's train): the forward kernel's time per call.

4. the forward kernel's launch on the model's tensors run by the eager JIT's binary and by the binary Inductor built
   for the compiled step (its CachingAutotuner), each as a CUDA graph;
5. both binaries' registers, spills and specialisation (the eager one's TTGIR / PTX into $OUT).

    python3 -m benchmarks.probes.scan_in_model --out $OUT/scan_in_model.json

Session 16 (H100, torch 2.11, triton 3.6; layer 5 of the 130M model, b8 l2048): the launcher took 0.283 ms on the
model's tensors, on random ones in the same layout, and on the model's u/B/C/z with random A/delta/bias alike; in the
compiled step the forward kernel took 0.316-0.323 ms (24 calls, three runs) and the backward 1.296-1.307 (1.344-1.348
eagerly launched). On the model's tensors the eager JIT's binary took 0.282 ms and Inductor's 0.323: the difference
travels with the binary. Inductor's forward has 255 registers, the eager one 254 (backward: 255 and 12 B of spills in
both). Offline (triton 3.6 and its ptxas 12.8 on CPU), the eager binary's specialisation reproduces its PTX exactly,
with Inductor's options (debug on, overflow sanitising off) too, and so do the source and triton_meta that Inductor
emitted for one block in block_code.py (254 registers with the flags Triton gives ptxas). The conclusion drawn then,
that the training step's build was specialised differently, was wrong.

Session 17: the triton_meta (step 5's lines) matched the eager specialisation exactly, and Inductor's copy of the
source was identical. The builds differ in their ptxas. Inductor runs torch 2.11's CUDA 13.0 ptxas (torch/bin/ptxas),
Triton's JIT its own 12.8: the PTX headers say 9.0 and 8.7 (the cache files; run with a fresh TRITON_CACHE_DIR and
read them there, since step 5 dumps no Inductor binary: its launchers keep none). Eagerly with TRITON_PTXAS_PATH set
to torch's ptxas, the launcher took 0.321 ms. The forward's configuration now follows the ptxas
(selective_scan_triton.fwd_prefetch).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks._common import graph_ms, write_results
from benchmarks.bench_model import config_130m
from benchmarks.probes.profile_model import train_step
from mamba_compile.models import MambaLM
from mamba_compile.ops import selective_scan_triton as kern


def _record(step, layer: int) -> tuple:
    """The forward launcher's positional arguments at ``layer`` during one eager step."""
    calls = []
    orig = kern.selective_scan_fwd

    def recording(*args, **kwargs):
        calls.append(args)
        return orig(*args, **kwargs)

    kern.selective_scan_fwd = recording
    try:
        step()
    finally:
        kern.selective_scan_fwd = orig
    torch.cuda.synchronize()
    return calls[layer]


def _like(t: torch.Tensor, scale: float, gen) -> torch.Tensor:
    """Normal noise with t's shape, dtype and strides."""
    out = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=t.device)
    return out.copy_(torch.randn(t.shape, generator=gen, device=t.device) * scale)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--layer", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    model = MambaLM(config_130m("mamba1"), device="cuda").train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (8, 2049), device="cuda")
    from mamba_compile.ops import linear_cross_entropy

    def head_loss(hidden, ids):
        return linear_cross_entropy(hidden.flatten(0, 1), model.lm_head.weight, ids[:, 1:].flatten())

    real = _record(train_step(model, opt, ids, head_loss), args.layer)
    u, delta, A, B, C, D, z, bias = real[:8]
    print("recorded:", {k: (tuple(t.shape), tuple(t.stride()), str(t.dtype)) for k, t in
                        dict(u=u, delta=delta, A=A, B=B, C=C, z=z).items()}, flush=True)
    dt = torch.nn.functional.softplus(delta.float() + bias[:, None]).flatten()[::97]
    q = dt.quantile(torch.tensor([0.01, 0.5, 0.99], device=dt.device)).tolist()
    print(f"dt quantiles 0.01 / 0.5 / 0.99: {q[0]:.4g} / {q[1]:.4g} / {q[2]:.4g}; "
          f"A from {A.min().item():.3g} to {A.max().item():.3g}", flush=True)
    gen = torch.Generator(device="cuda").manual_seed(1)
    rand = (_like(u, 1.0, gen), _like(delta, 0.5, gen), -(torch.rand(A.shape, generator=gen, device="cuda") + 0.5),
            _like(B, 1.0, gen), _like(C, 1.0, gen), _like(D, 1.0, gen), _like(z, 1.0, gen), _like(bias, 0.5, gen))
    # the model's tensors with the random A and delta/bias, and the reverse: which inputs move the time
    mixed = (u, rand[1], rand[2], B, C, D, z, rand[7])
    cases = {"model's tensors": real[:8], "random, same layout": rand, "model's u/B/C/z, random A/delta/bias": mixed}
    times = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, a in cases.items():
            times[name].append(graph_ms(lambda a=a: kern.selective_scan_fwd(*a, True, None, True, wrap=False)))
    rows = [dict(part=f"fwd launcher, states saved: {k}", ms=statistics.median(v), runs=" ".join(f"{x:.4f}" for x in v))
            for k, v in times.items()]

    # the regional compiled step, profiled
    for layer in model.backbone.layers:
        layer.compile(fullgraph=True)
    step = train_step(model, opt, ids, torch.compile(head_loss, fullgraph=True))
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    kernels = [(e.name, e.time_range.end - e.time_range.start) for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    fwd = [us for name, us in kernels if name.startswith("_selective_scan_fwd_kernel")]
    bwd = [us for name, us in kernels if name.startswith("_selective_scan_bwd_kernel")]
    for name, ts in (("fwd kernel in the compiled step", fwd), ("bwd kernel in the compiled step", bwd)):
        if ts:
            rows.append(dict(part=f"{name} ({len(ts)} calls)", ms=statistics.median(ts) / 1e3,
                             runs=f"min {min(ts) / 1e3:.4f} max {max(ts) / 1e3:.4f}"))
    rows += _binaries_side_by_side(real[:8], args.rounds)
    for r in rows:
        print(r, flush=True)
    _compiled_kernels()
    write_results(rows, args.out)


def _inductor_kernel(name: str):
    """The compiled step's CachingAutotuner for the Triton kernel ``name`` (the first Inductor built)."""
    from torch._inductor.codecache import PyCodeCache

    for mod in list(PyCodeCache.modules):
        for obj in vars(mod).values():
            if getattr(getattr(obj, "fn", None), "__name__", "") == name and getattr(obj, "launchers", None):
                return obj
    return None


def _binaries_side_by_side(inputs, rounds: int) -> list[dict]:
    """The forward kernel's launch on the model's tensors (B/C copies made first), run by the eager launcher's JIT
    binary and by the binary Inductor built for the compiled step, each as a CUDA graph: whether the difference
    travels with the binary."""
    from benchmarks.probes.kernel_regs import capture

    obj = _inductor_kernel("_selective_scan_fwd_kernel")
    if obj is None:
        print("no Inductor-built forward kernel found", flush=True)
        return []
    launches = capture(kern, kern.selective_scan_fwd, *inputs, True, None, True, wrap=False)
    for k, grid, a, kw in launches:  # the B/C copies, then (harmlessly) the forward once
        k[grid](*a, **kw)
    k, grid, a, kw = next(x for x in launches if x[0].fn.__name__ == "_selective_scan_fwd_kernel")

    def eager():
        k[grid](*a, **kw)

    def inductor():
        obj.run(*a, *grid, stream=torch.cuda.current_stream().cuda_stream)

    times = {"eager JIT binary": [], "Inductor binary": []}
    for _ in range(rounds):
        times["eager JIT binary"].append(graph_ms(eager))
        times["Inductor binary"].append(graph_ms(inductor))
    return [dict(part=f"fwd kernel alone on the model's tensors, {k_}", ms=statistics.median(v),
                 runs=" ".join(f"{x:.4f}" for x in v)) for k_, v in times.items()]


def _dump(compiled, tag: str) -> None:
    """The binary's specialisation (its ASTSource's signature, constants and attributes), options and TTGIR / PTX,
    into $OUT (when set) for diffing."""
    import os

    out = os.environ.get("OUT")
    if not out:
        return
    src = getattr(compiled, "src", None)
    with open(os.path.join(out, f"{tag}.txt"), "w") as f:
        for key in ("signature", "constants", "attrs"):
            f.write(f"{key}: {getattr(src, key, None)}\n")
        f.write(f"metadata: {compiled.metadata}\n")
    for ext in ("ttgir", "ptx"):
        with open(os.path.join(out, f"{tag}.{ext}"), "w") as f:
            f.write(compiled.asm.get(ext, ""))


def _compiled_kernels() -> None:
    """Registers, spills, shared memory and launch options of the scan kernels as the eager launcher's Triton JIT
    built them and as Inductor built them for the compiled step (its CachingAutotuner launchers)."""
    from torch._inductor.codecache import PyCodeCache

    for fn in (kern._selective_scan_fwd_kernel, kern._selective_scan_bwd_kernel):
        for cache in fn.device_caches.values():
            for compiled in cache[0].values():
                m = compiled.metadata
                print(f"eager JIT {fn.__name__}: regs {compiled.n_regs} spills {compiled.n_spills} shared {m.shared} "
                      f"warps {m.num_warps} stages {m.num_stages} fp_fusion {getattr(m, 'enable_fp_fusion', None)}",
                      flush=True)
                _dump(compiled, f"eager{fn.__name__}")
                print(f"eager JIT {fn.__name__} divisible by 16: {sorted(i for (i,) in compiled.src.attrs)}", flush=True)
    for mod in list(PyCodeCache.modules):
        for name, obj in vars(mod).items():
            fn = getattr(obj, "fn", None)
            if getattr(fn, "__name__", "") not in ("_selective_scan_fwd_kernel", "_selective_scan_bwd_kernel"):
                continue
            for launcher in getattr(obj, "launchers", []):
                print(f"Inductor {name}: regs {launcher.n_regs} spills {launcher.n_spills} shared {launcher.shared} "
                      f"config {launcher.config}", flush=True)
                if getattr(launcher, "bin", None) is not None:
                    _dump(launcher.bin, f"inductor{fn.__name__}")
            meta = getattr(obj, "triton_meta", {})
            divisible = sorted(i for (i,) in meta.get("configs", [{}])[0])
            print(f"Inductor {name} triton_meta: enable_fp_fusion {meta.get('enable_fp_fusion')} "
                  f"constants {meta.get('constants')} divisible by 16: {divisible}", flush=True)


if __name__ == "__main__":
    main()
