"""Timing helpers shared by the benchmarks: medians from triton.testing.do_bench, floors from measured bandwidth."""

from __future__ import annotations

import json
import os

import torch

_COPY_TBPS = None


def bench_ms(fn, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median milliseconds of ``fn`` (device events, after warm-up)."""
    import triton

    return triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


def graph_ms(fn) -> float:
    """Median ms of ``fn`` replayed from a CUDA graph: the GPU's time without the host's per-call Python and launch
    overhead, which at a few tenths of a millisecond can hide an eager op's GPU time. NaN, with the error
    printed, if capture fails (a failure should not lose the other rows)."""
    import triton

    torch.cuda.synchronize()
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=100, return_mode="median")
    except Exception as e:  # noqa: BLE001
        print(f"cuda graph timing failed: {type(e).__name__}: {e}")
        return float("nan")


def alternating_graph_ms(step, variants: dict, rounds: int = 2) -> list[tuple[str, float]]:
    """(label, graph_ms(step)) for each variant in turn, ``rounds`` times over (A B A B: drift over the run shows
    up between rounds, not between variants). variants: label -> a function that switches to that variant; the
    caller restores the default afterwards. One eager step after each switch warms the variant up."""
    out = []
    for _ in range(rounds):
        for label, use in variants.items():
            use()
            step()
            out.append((label, graph_ms(step)))
    return out


def no_grad_step(fn):
    """A callable that runs ``fn()`` without grad: the forward rows of the op benchmarks."""
    def run():
        with torch.no_grad():
            return fn()
    return run


def fwd_bwd_step(fn, leaves, douts):
    """A callable that runs ``fn()`` and backpropagates ``douts`` (one per output) into the ``leaves``' .grad, cleared
    first, as a training step does: capturable in a CUDA graph, unlike torch.autograd.grad."""
    def run():
        for t in leaves:
            t.grad = None
        outs = fn()
        outs = outs if isinstance(outs, tuple) else (outs,)
        torch.autograd.backward(outs, douts[: len(outs)])
    return run


def host_us(fn, n: int = 300, warmup: int = 10) -> float:
    """Microseconds per call of ``fn`` over ``n`` calls, the GPU synchronised before and after: the host's time where
    the GPU's work is shorter (eager calls at small shapes), else the GPU's."""
    import time

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def tiny_model(arch: str):
    """A tiny bf16 CUDA model (d_model 256, 4 layers, vocab 1000; Mamba-2 with d_state 64, headdim 32, chunk 64)
    and 64 token ids (batch 1): eager calls whose GPU work is far below their host time."""
    from mamba_compile import MambaConfig, MambaLM

    ssm = dict(layer="Mamba2", d_state=64, headdim=32, chunk_size=64) if arch == "mamba2" else dict(
        layer="Mamba1", d_state=16)
    torch.manual_seed(0)
    model = MambaLM(MambaConfig(d_model=256, n_layer=4, vocab_size=1000, ssm_cfg=ssm)).cuda().bfloat16()
    return model, torch.randint(0, 1000, (1, 64), device="cuda")


def copy_bandwidth_tbps() -> float:
    """Device-to-device copy bandwidth in TB/s, bytes read plus bytes written, measured once per process."""
    global _COPY_TBPS
    if _COPY_TBPS is None:
        src = torch.randn(256 * 1024 * 1024, device="cuda")  # 1 GiB: far past L2
        dst = torch.empty_like(src)
        ms = bench_ms(lambda: dst.copy_(src))
        _COPY_TBPS = 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e12
        del src, dst
        torch.cuda.empty_cache()
    return _COPY_TBPS


def floor_ms(nbytes: int) -> float:
    """Time to move ``nbytes`` through device memory at the measured copy bandwidth."""
    return nbytes / (copy_bandwidth_tbps() * 1e12) * 1e3


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def fresh_compiles() -> None:
    """Make every torch.compile in this process trace and compile afresh, for A/Bs of module flags read inside
    custom ops. The AOTAutograd cache keys on the Dynamo graph, where a triton_op is one node whatever kernels its
    Python body picks, so a second variant would otherwise reuse the first's compiled kernels (session 14: a
    train_ab of the conv row kernels ran the same kernels in both variants)."""
    import torch._functorch.config
    import torch._inductor.config

    torch._functorch.config.enable_autograd_cache = False
    torch._inductor.config.fx_graph_cache = False


def device_name() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def ptxas_versions() -> dict:
    """The major versions of the ptxas that build this process's eager Triton launches and Inductor's compiles
    (they differ on torch 2.11's cu130 wheels, and kernel timings follow: see selective_scan_triton.fwd_prefetch)."""
    if not torch.cuda.is_available():
        return {}
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mamba_compile.ops._triton import ptxas_major

    with FakeTensorMode():
        traced = torch.empty(0, device="cuda")
    return {"ptxas_eager": ptxas_major(torch.empty(0, device="cuda")), "ptxas_inductor": ptxas_major(traced)}


def write_results(rows: list[dict], path: str | None) -> None:
    """Prints a markdown table of ``rows`` and, with ``path``, writes them as JSON. The columns are every key in
    order of first appearance; a row lacking one gets "" (in the table and in the JSON)."""
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    rows = [{k: r.get(k, "") for k in keys} for r in rows]
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as f:
            meta = {"device": device_name(), "torch": torch.__version__, **ptxas_versions()}
            json.dump({**meta, "rows": rows}, f, indent=1)
