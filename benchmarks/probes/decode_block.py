"""Does the three-launch decode layer (mixers.FUSED_BLOCK_MAX_BATCH, the mixers' block_step) make a 130M decode
step faster than the five-launch fused step? bf16 weights, fp32 states, on CUDA.

- Kernels alone (CUDA-graph timed): decode_norm_in (add + norm + in_proj + conv [+ x_proj parts]) beside what it
  replaces (add_norm + decode_in [+ cuBLAS x_proj]), over num_warps.
- One model.decode_step per row, captured once in a torch.cuda.CUDAGraph and replayed: the five-launch step and
  the block step at each batch, with the CUDA kernels per step (torch.profiler) and the agreement of the block
  step's logits with the five-launch step's from the same cache state (max |diff| / max |logit|, and the share
  of rows whose greedy token agrees).

    python -m benchmarks.probes.decode_block --out $OUT/decode_block.json [--batches 1 2 4 8]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import mamba_compile.models.mixers as mixers
from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.bench_model import config_130m
from benchmarks.probes.decode_fused import _agreement, _eager_step, _graph_ms, _kernels_per_step, _prefilled
from mamba_compile.models import MambaLM


def kernel_rows(batches) -> list[dict]:
    from mamba_compile.ops import decode_in, rms_norm
    from mamba_compile.ops import mamba1_decode_triton as k1

    torch.manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    m, w = 768, 4
    rows = []
    for arch, n_rows, conv_dim, conv_start, r in [("mamba1", 3072, 1536, 0, 80), ("mamba2", 3352, 1792, 1536, 0)]:
        W_in = torch.randn(n_rows, m, **bf) * m**-0.5
        conv_w, conv_b = torch.randn(conv_dim, w, **bf), torch.randn(conv_dim, **bf)
        norm_w = torch.rand(m, **bf) + 0.5
        W_x = torch.randn(r, conv_dim, **bf) * conv_dim**-0.5 if r else None
        for b in batches:
            h, res = torch.randn(b, m, **bf), torch.randn(b, m, device="cuda")
            conv_state = torch.randn(b, conv_dim, w - 1, device="cuda")
            ssq = torch.rand(b, 96, device="cuda") if arch == "mamba2" else None

            def unfused():
                hidden = h if ssq is None else (h.float() * torch.rsqrt(ssq.sum(-1, keepdim=True) / 1536 + 1e-5)).to(h.dtype)
                normed, _ = rms_norm(hidden, norm_w, None, residual=res, eps=1e-5, prenorm=True, residual_in_fp32=True)
                out = decode_in(normed, W_in, None, conv_state, conv_w, conv_b, conv_start=conv_start)
                if W_x is not None:
                    F.linear(out[:, :conv_dim], W_x)

            rows.append(dict(model=arch, batch=b, kernel="unfused: [scale,] add_norm, decode_in[, x_proj]", warps="",
                             us=1e3 * graph_ms(unfused)))
            for warps in (None, 4, 8):
                us = 1e3 * graph_ms(lambda: k1.decode_norm_in_fwd(
                    h, res, ssq, 1e-5, 1536, norm_w, None, 1e-5, True, True, W_in, None, conv_state, conv_w, conv_b,
                    conv_start, W_x, wrap=False, num_warps=warps))
                rows.append(dict(model=arch, batch=b, kernel="decode_norm_in", warps=str(warps or "heuristic"), us=us))
            print(rows[-4:], flush=True)
    return rows


def linear_rows(batches) -> list[dict]:
    """decode_linear against cuBLAS (F.linear) at the 130M out_proj and LM head shapes, bf16."""
    from mamba_compile.ops import decode_linear_triton as kl

    rows = []
    for name, n, k in [("out_proj", 768, 1536), ("lm_head", 50280, 768)]:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
        for b in batches:
            x = torch.randn(b, k, device="cuda", dtype=torch.bfloat16)
            rows.append(dict(shape=name, batch=b, kernel="cuBLAS F.linear", block_n="", us=1e3 * graph_ms(
                lambda: F.linear(x, w))))
            for bn in (None, 2, 4, 8, 16):
                rows.append(dict(shape=name, batch=b, kernel="decode_linear", block_n=str(bn or "heuristic"),
                                 us=1e3 * graph_ms(lambda: kl.decode_linear_fwd(x, w, None, wrap=False, block_n=bn))))
    return rows


@torch.inference_mode()
def run(arch, batches) -> list[dict]:
    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    saved = mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH, mixers.DECODE_GEMV
    mixers.FUSED_DECODE = True
    rows = []
    try:
        for batch in batches:
            ids, cache, snap = _prefilled(model, batch)
            step = lambda: _eager_step(model, ids, cache)  # noqa: E731
            results = {}
            for path, limit, gemv in (("five launches", 0, True), ("block step, cuBLAS linears", 64, False),
                                      ("block step", 64, True)):
                mixers.FUSED_BLOCK_MAX_BATCH, mixers.DECODE_GEMV = limit, gemv
                snap.restore()
                results[path] = step().clone()
                snap.restore()
                launches = _kernels_per_step(step)
                snap.restore()
                rows.append(dict(model=arch, batch=batch, path=path, ms=_graph_ms(step), kernels=launches))
                if limit:
                    rows[-1].update(speedup=rows[-3 if gemv else -2]["ms"] / rows[-1]["ms"],
                                    **_agreement(results[path], results["five launches"]))
                print(rows[-1], flush=True)
    finally:
        mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH, mixers.DECODE_GEMV = saved
    return rows


@torch.inference_mode()
def profile(arch, batch: int = 1) -> list[dict]:
    """GPU time per kernel name of one eager block step (torch.profiler; launch gaps not included)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.manual_seed(0)
    model = MambaLM(config_130m(arch), device="cuda", dtype=torch.bfloat16).eval()
    saved = mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH
    mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH = True, 64
    try:
        ids = torch.randint(0, model.config.vocab_size, (batch,), device="cuda")
        cache = model.allocate_cache(batch, 64)
        for _ in range(3):
            _eager_step(model, ids, cache)
        torch.cuda.synchronize()
        with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                _eager_step(model, ids, cache)
            torch.cuda.synchronize()
    finally:
        mixers.FUSED_DECODE, mixers.FUSED_BLOCK_MAX_BATCH = saved
    rows = []
    for e in prof.key_averages():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.count:
            rows.append(dict(model=arch, batch=batch, kernel=e.key[:90], per_step=e.count / 5,
                             us_each=e.device_time_total / e.count, us_per_step=e.device_time_total / 5))
    rows.sort(key=lambda r: -r["us_per_step"])
    rows.append(dict(model=arch, batch=batch, kernel="TOTAL", per_step=sum(r["per_step"] for r in rows),
                     us_each=float("nan"), us_per_step=sum(r["us_per_step"] for r in rows)))
    return rows


def ssm_sweep(batches) -> list[dict]:
    """mamba1_decode_ssm alone with x_dbl as 96 partial sums (decode_norm_in's at d_inner 1536) or as one
    tensor, over BLOCK_D (130M shapes, CUDA graph)."""
    from mamba_compile.ops import mamba1_decode_triton as k1

    torch.manual_seed(0)
    d, n, r = 1536, 16, 48
    bf = dict(device="cuda", dtype=torch.bfloat16)
    W_dt, dt_b, D = torch.randn(d, r, **bf) * r**-0.5, torch.randn(d, **bf) - 3, torch.randn(d, **bf)
    A_log = torch.rand(d, n, device="cuda")
    rows = []
    for b in batches:
        state = torch.randn(b, d, n, device="cuda")
        x, z = torch.randn(b, d, **bf), torch.randn(b, d, **bf)
        for parts in (0, 96):
            x_dbl = torch.randn(parts, b, r + 2 * n, device="cuda") if parts else torch.randn(b, r + 2 * n, **bf)
            for bd in (None, 16, 32, 64):
                us = 1e3 * graph_ms(lambda: k1.mamba1_decode_ssm_fwd(state, x, x_dbl, W_dt, dt_b, A_log, D, z,
                                                                     wrap=False, block_d=bd))
                rows.append(dict(batch=b, x_dbl="one tensor" if not parts else f"{parts} parts",
                                 block_d=str(bd or "heuristic"), us=us))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--models", nargs="+", default=["mamba1", "mamba2"], choices=["mamba1", "mamba2"])
    parser.add_argument("--profile", action="store_true", help="also: GPU time per kernel of a b1 block step, and "
                        "mamba1_decode_ssm over BLOCK_D")
    args = parser.parse_args()
    print(f"device: {device_name()}, torch {torch.__version__}", flush=True)
    out = (lambda tag: args.out.replace(".json", f"_{tag}.json")) if args.out else (lambda tag: None)
    if args.profile:
        for arch in args.models:
            print(f"\n{arch} block step, GPU time per kernel (eager, torch.profiler)")
            write_results(profile(arch), out(f"profile_{arch}"))
        print("\nmamba1_decode_ssm alone (us per call, CUDA graph)")
        write_results(ssm_sweep([1, 2]), out("ssm"))
    print("\nKernels alone, 130M shapes (us per call, CUDA graph)")
    write_results(kernel_rows(args.batches), out("kernels"))
    print("\ndecode_linear against cuBLAS (us per call, CUDA graph)")
    write_results(linear_rows(args.batches), out("linear"))
    rows = []
    for arch in args.models:
        rows += run(arch, args.batches)
    print("\n130M decode step (CUDA-graph replay of the eager step), bf16 weights, fp32 states")
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
