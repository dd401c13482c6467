"""Probe (GPU): the selective-scan backward kernel at its default and a few other settings, each checked then timed.

    python3 -m benchmarks.probes.scan_bwd_probe --out $OUT/scan_bwd_probe.json

At b8 d1536 l2048 n16 (bf16 u/delta/z, B/C (8, 1, 16, 2048) bf16, fp32 A/D/delta_bias, softplus), for each
((BLOCK_D, BLOCK_L, num_warps), gather flip) in ROWS (None: the module's default): the forward runs once, saving
states at that BLOCK_L; then
- bwd_ms: the backward launcher alone (kernel, B/C-gradient zero fill and the torch sums), do_bench median;
- op_fb_ms: forward+backward through the op with that block shape and gather flip made the heuristic's answer,
  replayed from a CUDA graph (eager do_bench if capture fails: op_fb_timer says which);
- vs_default: max |grad - grad of row 0| / max |grad of row 0| per gradient, over the full shape (row 0 is the
  default);
- vs_cpu: the same against the fp32 CPU path on 2 batch rows x 256 channels (the same bf16 values; the GPU
  side reruns forward and backward on that slice, so channel- and batch-summed gradients compare too).
Prints a markdown table; --out writes the rows as JSON. Every configuration compiles once (a few seconds each on triton 3.6).

Session 4 (H100), when this probe compared the first parallel backward with the current kernel: backward
launcher 2.108 ms for the first at (2, 256, 1) (2.041 at (2, 128, 1)) against 1.793 for the current one; op
forward+backward (CUDA graph) 2.405 against 1.934; the current kernel without the gathers 1.785 / 2.006, at
(1, 128, 1) 1.947 / 2.293, at (1, 256, 1) 3.042 / 3.484; its gradients within 1.2e-3 of the first kernel's.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import bench_ms, graph_ms, write_results
from mamba_compile.ops import selective_scan
from mamba_compile.ops import selective_scan_triton as kern

GRADS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
# ((BLOCK_D, BLOCK_L, num_warps), gather flip), None for the module's default; row 0 (the default) is the
# reference for vs_default. Local SASS (triton 3.6, sm_90), instructions per state and step in the loop over
# states: (2, 256, 1) 37.9 (255 registers, 40 B stack), without the gathers 50.1; (1, 256, 1) 42.3 (231, none);
# (1, 128, 1) 59 (160, none). (The first parallel backward: (2, 256, 1) 77.5 (255, 432 B); (2, 128, 1) 85.)
ROWS = [(None, None), (None, False), ((2, 128, 1), None), ((1, 128, 1), None)]


def make_inputs(batch, dim, seqlen, dstate, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)

    def randn(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    return dict(
        u=randn(batch, dim, seqlen), delta=randn(batch, dim, seqlen, scale=0.5),
        A=-(torch.rand(dim, dstate, generator=g, device="cuda") + 0.5),
        B=randn(batch, 1, dstate, seqlen), C=randn(batch, 1, dstate, seqlen),
        D=randn(dim, dtype=torch.float32), z=randn(batch, dim, seqlen), delta_bias=randn(dim, dtype=torch.float32, scale=0.5),
    )  # fmt: skip


def _args(t):
    return (t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"], t["delta_bias"], True, None)


def _slice(t, rows=2, chans=256):
    """The first rows x chans of every input (B/C are shared by all channels), contiguous, same dtypes."""
    s = {k: t[k][:rows, :chans].contiguous() for k in ("u", "delta", "z")}
    s.update({k: t[k][:chans].contiguous() for k in ("A", "D", "delta_bias")})
    s.update({k: t[k][:rows].contiguous() for k in ("B", "C")})
    return s


def _kernel_grads(t, go, gl, cfg, flip):
    _, _, states = kern.selective_scan_fwd(*_args(t), True, wrap=False, state_chunk=cfg[1])
    return kern.selective_scan_bwd(go, gl, *_args(t)[:9], None, states, wrap=False, config=cfg, gather_flip=flip)[:8]


def _cpu_grads(t, go, gl):
    leaves = {k: v.detach().float().cpu().requires_grad_() for k, v in t.items()}
    out, last = selective_scan(**leaves, delta_softplus=True, return_last_state=True)
    loss = (out * go.float().cpu()).sum() + (last * gl.cpu()).sum()
    return torch.autograd.grad(loss, [leaves[k] for k in GRADS])


def _rel(got, ref) -> str:
    errs = [(a.float().cpu() - b.float().cpu()).abs().max().item() / (b.float().abs().max().item() + 1e-12) for a, b in zip(got, ref)]
    return " ".join(f"{k}:{e:.1e}" for k, e in zip(GRADS, errs))


def _worst(got, ref) -> float:
    return max((a.float().cpu() - b.float().cpu()).abs().max().item() / (b.float().abs().max().item() + 1e-12) for a, b in zip(got, ref))


def _op_fwd_bwd_ms(t, cfg, flip):
    """Forward+backward through the op, with (cfg, flip) as the heuristic's backward answer."""
    saved = kern._BWD_CONFIG, kern._BWD_GATHER_FLIP
    kern._BWD_CONFIG, kern._BWD_GATHER_FLIP = cfg, flip
    try:
        leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}
        go = torch.randn_like(t["u"])

        def fwd_bwd():
            out = selective_scan(**leaves, delta_softplus=True)
            return torch.autograd.grad(out, list(leaves.values()), go)

        fwd_bwd()
        ms = graph_ms(fwd_bwd)
        return (ms, "cuda graph") if ms == ms else (bench_ms(fwd_bwd), "eager")
    finally:
        kern._BWD_CONFIG, kern._BWD_GATHER_FLIP = saved


def probe(batch=8, dim=1536, seqlen=2048, dstate=16) -> list[dict]:
    t = make_inputs(batch, dim, seqlen, dstate)
    gen = torch.Generator(device="cuda").manual_seed(1)
    go = torch.randn(t["u"].shape, generator=gen, device="cuda").to(torch.bfloat16)
    gl = torch.randn(batch, dim, dstate, generator=gen, device="cuda")
    small, go_s, gl_s = _slice(t), go[:2, :256].contiguous(), gl[:2, :256].contiguous()
    cpu = _cpu_grads(small, go_s, gl_s)
    rows, base = [], None
    for cfg, flip in ROWS:
        # The module's defaults, as the op would use them (B/C in one group: dim channels per group).
        cfg = kern.bwd_block_sizes(dim, dstate, dim) if cfg is None else cfg
        flip = kern._BWD_GATHER_FLIP if flip is None else flip
        row = dict(config=str(cfg), gather_flip=str(flip), bwd_ms=float("nan"), op_fb_ms=float("nan"), op_fb_timer="",
                   worst_vs_default=float("nan"), worst_vs_cpu=float("nan"), vs_default="", vs_cpu="")  # fmt: skip
        try:
            grads = _kernel_grads(t, go, gl, cfg, flip)
            base = grads if base is None else base
            row["vs_default"], row["worst_vs_default"] = _rel(grads, base), _worst(grads, base)
            got = _kernel_grads(small, go_s, gl_s, cfg, flip)
            row["vs_cpu"], row["worst_vs_cpu"] = _rel(got, cpu), _worst(got, cpu)
            _, _, states = kern.selective_scan_fwd(*_args(t), True, wrap=False, state_chunk=cfg[1])
            row["bwd_ms"] = bench_ms(
                lambda: kern.selective_scan_bwd(go, gl, *_args(t)[:9], None, states, wrap=False, config=cfg, gather_flip=flip)
            )
            row["op_fb_ms"], row["op_fb_timer"] = _op_fwd_bwd_ms(t, cfg, flip)
        except Exception as e:  # a configuration that fails is reported, not fatal
            print(f"{cfg} flip {flip}: {type(e).__name__}: {str(e)[:400]}", flush=True)
        rows.append(row)
        print(row, flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = probe()
    print("\n| (BLOCK_D, BLOCK_L, warps) | gather flip | bwd launcher ms | op fwd+bwd ms | worst rel err vs default | "
          "vs CPU fp32 (slice) |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['gather_flip']} | {r['bwd_ms']:.3f} | {r['op_fb_ms']:.3f} ({r['op_fb_timer']}) "
              f"| {r['worst_vs_default']:.1e} | {r['worst_vs_cpu']:.1e} |")  # fmt: skip
    print("\nper gradient:")
    for r in rows:
        print(f"{r['config']} flip {r['gather_flip']}\n  vs default: {r['vs_default']}\n  vs cpu:     {r['vs_cpu']}")
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
