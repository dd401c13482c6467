"""Probe (GPU): the Mamba-1 selective scan's launchers and op as CUDA graphs, three rounds each, alternating.

    python3 -m benchmarks.probes.scan_variants --out $OUT/scan_variants.json
    python3 -m benchmarks.probes.scan_variants --copies 8 16 --rounds 5   # only the op's fwd+bwd, per dB/dC copies
    python3 -m benchmarks.probes.scan_variants --pads 0 32 1056            # the cases, then fwd+bwd per copy pad
    python3 -m benchmarks.probes.scan_variants --maxnreg 0 200 168 128 --small-only  # launchers per register cap
    python3 -m benchmarks.probes.scan_variants --bwd-configs 2,256,1 4,128,1 --small-only  # per backward block shape
    python3 -m benchmarks.probes.scan_variants --layouts --small-only  # contiguous inputs against the model's layout

At b8 d1536 l2048 n16 and b2 d5120 l8192 n16 (bf16 u/delta/z, B/C (b, 1, 16, l) bf16, fp32 A/D/delta_bias,
softplus): the forward launcher saving states for the backward and not, the backward launcher, the op's forward
and its forward+backward.

Session 10 (H100), variants timed by earlier versions of this probe, medians of rounds as CUDA graphs, ms at
l2048 / l8192:
- forward launcher saving states, its state store behind a branch: 0.307 / 1.245-1.263; predicated, as now: 0.283 /
  1.151 (without saving: 0.269 / 1.043);
- then the B/C row stride as a constant (BLOCK_N) rather than an argument: saving states 0.285 / 1.110 against
  0.284 / 1.154, without 0.269 / 1.045 against 0.269 / 1.044 (old and new kernel side by side, bit for bit equal);
- u/delta/z prefetched into L2 1, 2, 4 blocks ahead (one address per channel and tensor): with the branch 0.293,
  0.293, 0.298 / 1.170-1.180, 1.172-1.183, 1.155-1.176; predicated 0.293, 0.294 / 1.195, 1.194; without saving
  0.297 / 1.221; not kept;
- backward with its reverse-scan decays gathered across lanes from the forward scan's (tl.gather) instead of a
  second exp2: 1.437 against 1.424 / 4.435 against 4.463; at (1, 256, 1) 2.482 / 7.745; not kept;
- backward prefetching the next tile's inputs into L2: 1.490 against 1.421 / 4.684 against 4.464; not kept;
- backward with dB/dC rows padded to whole tiles (unmasked atomics) and the partials' first load selected: 1.460 /
  4.500; not kept;
- backward with two states per iteration of its loop over states (a one-off script): 2.055 against 1.432 / 6.585
  against 4.452 (spills); not kept.

Session 11 (H100), the final code: forward launcher saving states 0.283 / 1.110-1.112, not saving 0.267 / 1.043-1.045,
backward launcher 1.361-1.366 / 4.351-4.367, op forward 0.267 / 1.044-1.045, op forward+backward 1.644-1.647 /
5.468-5.477 in the processes that began with the launcher cases and 1.614-1.618 at l2048 in those that began with the
op (see _BWD_BC_COPIES in selective_scan_triton.py). The same session's A/B of the backward launcher's epilogue (a
copy of the old module beside the new, one process): 1.424 -> 1.380 ms / 4.466 -> 4.425.

Session 16 (H100, l2048, three rounds each): the launchers on the Mamba-1 mixer's channel-major u/delta/z and B/C
split from one tensor (--layouts) time as on contiguous inputs: forward saving states 0.283 / 0.283 ms, backward
1.342 / 1.341. Backward block shapes (--bwd-configs), the forward saving states at each one's BLOCK_L: (2, 256, 1)
1.324 ms (the default), (2, 128, 1) 1.790, (4, 128, 1) 2.040, (4, 64, 1) 2.772, (8, 32, 1) 5.461; the forward
0.283-0.287 at every interval. A one-off variant (not kept, code removed): the forward also storing y before the
gate (u's dtype) and the backward reading it instead of summing C h over the states. ptxas then left the backward
no spills (255 registers, against 124 B), but it was slower: backward 1.420 against 1.369 ms at l2048 and 4.542
against 4.470 at b2 d5120 l8192, forward 0.295 against 0.283 and 1.186 against 1.112.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import torch

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.probes.scan_bwd_probe import _args, make_inputs
from mamba_compile.ops import selective_scan
from mamba_compile.ops import selective_scan_triton as kern


def _op_fwd(t):
    def fwd():
        with torch.no_grad():
            return selective_scan(**t, delta_softplus=True)

    fwd()
    return graph_ms(fwd)


def _op_fb(t, go):
    leaves = {k: v.detach().clone().requires_grad_() for k, v in t.items()}

    def fwd_bwd():
        out = selective_scan(**leaves, delta_softplus=True)
        return torch.autograd.grad(out, list(leaves.values()), go)

    fwd_bwd()
    return graph_ms(fwd_bwd)


@contextlib.contextmanager
def _setting(name, value):
    """The kernel module's setting ``name`` (_BWD_BC_COPIES, _BWD_BC_COPY_PAD, _FWD_MAXNREG, _BWD_MAXNREG) set to
    ``value`` for the block."""
    saved = getattr(kern, name)
    setattr(kern, name, value)
    try:
        yield
    finally:
        setattr(kern, name, saved)


def _op_fb_with(t, go, name, value):
    """The op's forward+backward with ``name`` (_BWD_BC_COPIES, the number of dB/dC copies, or _BWD_BC_COPY_PAD,
    fp32 elements between them) set to ``value``."""
    with _setting(name, value):
        return _op_fb(t, go)


def _launcher_with(name, value, fn):
    """fn() timed as a CUDA graph with ``name`` (_FWD_MAXNREG, _BWD_MAXNREG) set to ``value``."""
    with _setting(name, value):
        return graph_ms(fn)


def _channel_major(t):
    """t's u, delta and z in the Mamba-1 mixer's layout: (b, d, l) views of (d, b, l) tensors (strides (l, b l, 1)),
    B and C as (b, n, l) views of one (2 n, b, l) tensor, as split from x_proj's (channels, b l) output."""
    out = dict(t)
    for k in ("u", "delta", "z"):
        out[k] = t[k].transpose(0, 1).contiguous().transpose(0, 1)
    bc = torch.cat([t["B"][:, 0], t["C"][:, 0]], dim=1).transpose(0, 1).contiguous().transpose(0, 1)  # (b, 2n, l)
    n = t["B"].shape[2]
    out["B"], out["C"] = bc[:, :n], bc[:, n:]
    return out


def _config_cases(args, go, gl, configs):
    """The forward launcher saving states every BLOCK_L steps and the backward launcher at each (BLOCK_D, BLOCK_L,
    num_warps); the backward's outputs are checked against the default configuration's."""
    cases = {}
    _, _, want_states = kern.selective_scan_fwd(*args, True, wrap=False)
    want = kern.selective_scan_bwd(go, gl, *args, want_states, wrap=False)
    for cfg in configs:
        _, _, states = kern.selective_scan_fwd(*args, True, wrap=False, state_chunk=cfg[1])
        got = kern.selective_scan_bwd(go, gl, *args, states, wrap=False, config=cfg)
        diff = max(((g.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-30)).item()
                   for g, w in zip(got, want) if g.numel())
        print(f"bwd config {cfg}: largest difference from the default's outputs, relative to their largest {diff:.3g}")
        cases[f"fwd launcher, states saved every {cfg[1]}"] = (
            lambda c=cfg: graph_ms(lambda: kern.selective_scan_fwd(*args, True, wrap=False, state_chunk=c[1])))
        cases[f"bwd launcher, config {cfg}"] = (
            lambda c=cfg, s=states: graph_ms(lambda: kern.selective_scan_bwd(go, gl, *args, s, wrap=False, config=c)))
    return cases


def probe(batch, dim, seqlen, dstate, copies=(), rounds=3, pads=(), maxnreg=(), bwd_configs=(), layouts=False):
    shape = f"b{batch} d{dim} l{seqlen} n{dstate}"
    t = make_inputs(batch, dim, seqlen, dstate)
    args = _args(t)
    gen = torch.Generator(device="cuda").manual_seed(1)
    go = torch.randn(t["u"].shape, generator=gen, device="cuda").to(torch.bfloat16)
    gl = torch.randn(batch, dim, dstate, generator=gen, device="cuda")
    rows = []
    _, _, states = kern.selective_scan_fwd(*args, True, wrap=False)
    # each case times itself (ms, CUDA graph)
    cases = {
        "fwd launcher, states saved": lambda: graph_ms(lambda: kern.selective_scan_fwd(*args, True, wrap=False)),
        "fwd launcher": lambda: graph_ms(lambda: kern.selective_scan_fwd(*args, False, wrap=False)),
        "bwd launcher": lambda: graph_ms(lambda: kern.selective_scan_bwd(go, gl, *args, states, wrap=False)),
        "op fwd": lambda: _op_fwd(t),
        "op fwd+bwd": lambda: _op_fb(t, go),
    }
    if bwd_configs:  # only the launchers, per backward block shape
        cases = _config_cases(args, go, gl, bwd_configs)
    if layouts:  # only the launchers, contiguous and in the model's layout
        cm = _args(_channel_major(t))
        _, _, cm_states = kern.selective_scan_fwd(*cm, True, wrap=False)

        def cm_fwd():
            return kern.selective_scan_fwd(*cm, True, wrap=False)

        def cm_bwd():
            return kern.selective_scan_bwd(go, gl, *cm, cm_states, wrap=False)

        cases = {
            "fwd launcher, states saved, contiguous": cases["fwd launcher, states saved"],
            "fwd launcher, states saved, model layout": lambda: graph_ms(cm_fwd),
            "bwd launcher, contiguous": cases["bwd launcher"],
            "bwd launcher, model layout": lambda: graph_ms(cm_bwd),
        }
    if copies:  # only the op's forward+backward, once per number of dB/dC copies
        cases = {f"op fwd+bwd, {c} dB/dC copies": (lambda c=c: _op_fb_with(t, go, "_BWD_BC_COPIES", c)) for c in copies}
    if maxnreg:  # only the launchers, per register cap (0: none); outputs checked against the uncapped kernels
        cases = {}
        for cap in maxnreg:
            def fwd(c=cap or None):
                return _launcher_with("_FWD_MAXNREG", c, lambda: kern.selective_scan_fwd(*args, True, wrap=False))

            def bwd(c=cap or None):
                return _launcher_with("_BWD_MAXNREG", c,
                                      lambda: kern.selective_scan_bwd(go, gl, *args, states, wrap=False))

            cases[f"fwd launcher, states saved, maxnreg {cap}"] = fwd
            cases[f"bwd launcher, maxnreg {cap}"] = bwd
        want = kern.selective_scan_bwd(go, gl, *args, states, wrap=False)
        for cap in maxnreg:
            with _setting("_BWD_MAXNREG", cap or None):
                got = kern.selective_scan_bwd(go, gl, *args, states, wrap=False)
            diff = max((g.float() - w.float()).abs().max().item() for g, w in zip(got, want) if g.numel())
            print(f"maxnreg {cap}: largest difference of the backward's outputs from the uncapped kernel {diff:.3g}")
    for p in pads:  # after the other cases
        cases[f"op fwd+bwd, dB/dC copies {p} elements apart"] = lambda p=p: _op_fb_with(t, go, "_BWD_BC_COPY_PAD", p)
    times = {k: [] for k in cases}
    for _ in range(rounds):
        for k, timer in cases.items():
            times[k].append(timer())
    for k, ts in times.items():
        rows.append(dict(shape=shape, part=k, ms=statistics.median(ts), runs=" ".join(f"{x:.4f}" for x in ts)))
        print(rows[-1], flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    parser.add_argument("--small-only", action="store_true")
    parser.add_argument("--copies", type=int, nargs="+", default=(),
                        help="time only the op's forward+backward, for each of these numbers of dB/dC copies")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--maxnreg", type=int, nargs="+", default=(),
                        help="time only the launchers, for each of these register caps (0: none)")
    parser.add_argument("--bwd-configs", nargs="+", default=(),
                        help="time only the launchers, for each backward BLOCK_D,BLOCK_L,num_warps (e.g. 4,128,1)")
    parser.add_argument("--layouts", action="store_true",
                        help="time only the launchers, on contiguous inputs and in the Mamba-1 mixer's layout")
    parser.add_argument("--pads", type=int, nargs="+", default=(),
                        help="also time the op's forward+backward with these gaps (fp32 elements) between dB/dC copies")
    args = parser.parse_args()
    print(f"device: {device_name()}, torch {torch.__version__}", flush=True)
    configs = [tuple(int(x) for x in c.split(",")) for c in args.bwd_configs]
    opts = (args.copies, args.rounds, args.pads, args.maxnreg, configs, args.layouts)
    rows = probe(8, 1536, 2048, 16, *opts)
    if not args.small_only:
        rows += probe(2, 5120, 8192, 16, *opts)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
