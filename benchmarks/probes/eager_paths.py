"""Eager calls through the plain-eager paths (norms._EagerAddNorm / _EagerGated, causal_conv1d._EagerConv,
selective_scan._EagerSelectiveScan: the kernels launched directly) against through the custom ops, and the
reference's norms, at bench_norms' shapes, the conv's benchmark shape (b8 d1536 l2048 w4, bias, silu; bf16,
channel-last as the Mamba blocks pass it) and the scan's (b8 d1536 l2048 n16, input-dependent B and C, D, z,
delta_bias, softplus; bf16 activations):
microseconds per call (host or GPU, whichever is longer; ``_common.host_us``), forward without grad and
forward+backward, two rounds, alternating.

    python -m benchmarks.probes.eager_paths [--out results.json]
    python -m benchmarks.probes.eager_paths --models    # tiny models' eager calls, the new paths on and off

``--models``: a tiny bf16 Mamba-1 and Mamba-2 (``_common.tiny_model``) called eagerly, forward and forward+backward
of 64 tokens, with the norms', the conv's and the scan's plain-eager paths on against forced off (the SSD's is on
in both), three rounds, alternating: host-bound calls, so the difference is the host time those paths save.
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks._common import device_name, fwd_bwd_step, host_us, no_grad_step, write_results
from benchmarks.bench_norms import ROWS
from benchmarks.bench_selective_state_update import reference_module
from mamba_compile.ops import causal_conv1d, layer_norm, norms, rms_norm, rms_norm_gated, selective_scan

# the package exports the functions by these modules' names
conv_module = sys.modules["mamba_compile.ops.causal_conv1d"]
scan_module = sys.modules["mamba_compile.ops.selective_scan"]


def cases(hidden: int, ref_ln, ref_gated) -> dict:
    """name -> (ours, the reference's or None, the leaves, the output gradients), as bench_norms calls them."""
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    z = torch.randn(ROWS, hidden, device="cuda", generator=g, dtype=torch.bfloat16, requires_grad=True)
    res = torch.randn(ROWS, hidden, device="cuda", generator=g, requires_grad=True)
    w = (1 + 0.1 * torch.randn(hidden, device="cuda", generator=g)).requires_grad_()
    b = (0.1 * torch.randn(hidden, device="cuda", generator=g)).requires_grad_()
    douts = (torch.randn_like(x), torch.randn_like(res))
    kw = dict(eps=1e-5, prenorm=True, residual_in_fp32=True)
    out = {
        "rms_norm": (lambda: rms_norm(x, w, None, res, **kw),
                     ref_ln and (lambda: ref_ln.layer_norm_fn(x, w, None, residual=res, is_rms_norm=True, **kw)),
                     (x, w, res), douts),
        "layer_norm": (lambda: layer_norm(x, w, b, res, **kw),
                       ref_ln and (lambda: ref_ln.layer_norm_fn(x, w, b, residual=res, **kw)), (x, w, b, res), douts),
        "rms_norm_gated": (lambda: rms_norm_gated(x, w, z, eps=1e-5, norm_before_gate=False),
                           ref_gated and (lambda: ref_gated.rmsnorm_fn(x, w, None, z=z, eps=1e-5,
                                                                       norm_before_gate=False)),
                           (x, w, z), douts[:1]),
    }
    return out


def conv_case() -> dict:
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(8, 2048, 1536, device="cuda", generator=g, dtype=torch.bfloat16).transpose(1, 2).requires_grad_()
    w = (0.5 * torch.randn(1536, 4, device="cuda", generator=g)).requires_grad_()
    b = torch.randn(1536, device="cuda", generator=g).requires_grad_()
    return {"causal_conv1d": (lambda: causal_conv1d(x, w, b, activation="silu"), None, (x, w, b),
                              (torch.randn(x.shape, device="cuda", generator=g, dtype=torch.bfloat16),))}


def scan_case() -> dict:
    g = torch.Generator(device="cuda").manual_seed(2)

    def rnd(*shape, scale=1.0, dtype=torch.bfloat16):
        return (scale * torch.randn(*shape, device="cuda", generator=g)).to(dtype).requires_grad_()

    u, delta, z = rnd(8, 1536, 2048), rnd(8, 1536, 2048, scale=0.5), rnd(8, 1536, 2048)
    A = (-(torch.rand(1536, 16, device="cuda", generator=g) + 0.5)).requires_grad_()
    B, C = rnd(8, 16, 2048), rnd(8, 16, 2048)
    D, bias = rnd(1536, dtype=torch.float32), rnd(1536, scale=0.5, dtype=torch.float32)
    return {"selective_scan": (lambda: selective_scan(u, delta, A, B, C, D, z, bias, delta_softplus=True), None,
                               (u, delta, A, B, C, D, z, bias), (torch.randn_like(u),))}


def model_rows(rounds: int = 3) -> list[dict]:
    import statistics

    from benchmarks._common import tiny_model

    modules = (norms, conv_module, scan_module)
    plain = [m._plain_eager for m in modules]
    rows = []
    for arch in ("mamba1", "mamba2"):
        model, ids = tiny_model(arch)
        cases = {"fwd": torch.no_grad()(lambda: model(ids)),
                 "fwd+bwd": lambda: model(ids).logits.float().sum().backward()}
        for what, fn in cases.items():
            got = {"eager paths": [], "custom ops": []}
            for _ in range(rounds):
                for path in got:
                    for m, p in zip(modules, plain):
                        m._plain_eager = p if path == "eager paths" else (lambda *t: False)
                    got[path].append(host_us(fn, n=60, warmup=3))
            for m, p in zip(modules, plain):
                m._plain_eager = p
            for path, us in got.items():
                rows.append(dict(model=arch, case=what, path=path, median_us=statistics.median(us),
                                 rounds=" ".join(f"{u:.0f}" for u in us)))
                print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--models", action="store_true")
    args = p.parse_args()
    if args.models:
        write_results(model_rows(), args.out)
        return
    print(device_name(), flush=True)
    ref_ln, ref_gated = reference_module("ops.triton.layer_norm"), reference_module("ops.triton.layernorm_gated")
    rows = []
    groups = [(hidden, cases(hidden, ref_ln, ref_gated), norms) for hidden in (768, 1536)]
    groups.append((1536, conv_case(), conv_module))
    groups.append((1536, scan_case(), scan_module))
    for hidden, group, module in groups:
        plain = module._plain_eager
        for name, (ours, theirs, leaves, douts) in group.items():
            def fwd_bwd(fn, leaves=leaves, douts=douts):
                return fwd_bwd_step(fn, leaves, douts)

            for case, wrap in (("fwd", no_grad_step), ("fwd+bwd", fwd_bwd)):
                for rnd in range(2):
                    for path, pred in (("eager path", plain), ("custom ops", lambda *t: False)):
                        module._plain_eager = pred
                        us = host_us(wrap(ours), n=200)
                        rows.append(dict(op=name, hidden=hidden, case=case, round=rnd, path=path, us=us))
                        print(rows[-1], flush=True)
                    module._plain_eager = plain
                    if theirs is not None:
                        us = host_us(wrap(theirs), n=200)
                        rows.append(dict(op=name, hidden=hidden, case=case, round=rnd, path="reference", us=us))
                        print(rows[-1], flush=True)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
