"""Probe (GPU): what the selective-scan backward's dB/dC path costs. The backward launcher (CUDA-graph replay)
at b8 d1536 l2048 n16 with input-dependent B and C (whose rows are summed over the program's channels and
added atomically into (batch, ngroups, dstate, seqlen) buffers), against the same shape with time-invariant
B and/or C (per-channel partial sums instead: no atomics, no B/C rows to load), and the forward beside them;
then input-dependent B/C with the atomic adds spread over 2-16 copies of the buffers (bc_copies), whose
gradients are compared with one copy's (the atomics' order differs run to run: fp32 rounding).

    python3 -m benchmarks.probes.scan_bwd_parts --out $OUT/scan_bwd_parts.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device_name, graph_ms, write_results
from benchmarks.probes.scan_bwd_probe import make_inputs
from mamba_compile.ops import selective_scan_triton as kern


def _case(t, varying_b: bool, varying_c: bool, copies: int = 1, ref=None) -> dict:
    g = torch.Generator(device="cuda").manual_seed(1)
    dim, dstate = t["A"].shape
    inv = lambda: torch.randn(dim, dstate, generator=g, device="cuda")  # noqa: E731
    B = t["B"] if varying_b else inv()
    C = t["C"] if varying_c else inv()
    args = (t["u"], t["delta"], t["A"], B, C, t["D"], t["z"], t["delta_bias"], True, None)
    fwd_ms = graph_ms(lambda: kern.selective_scan_fwd(*args, True, wrap=False))
    out, last, states = kern.selective_scan_fwd(*args, True, wrap=False)
    go = torch.randn_like(out)
    gl = torch.randn_like(last)
    bwd = lambda: kern.selective_scan_bwd(go, gl, *args, states, wrap=False, bc_copies=copies)  # noqa: E731
    bwd_ms = graph_ms(bwd)
    grads = bwd()
    row = dict(B="input-dependent" if varying_b else "time-invariant", C="input-dependent" if varying_c else "time-invariant",
               bc_copies=copies, fwd_ms=fwd_ms, bwd_ms=bwd_ms)
    if ref is not None:  # max |grad - grad with one copy| / max |grad with one copy|, over all gradients
        row["vs_one_copy"] = max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
                                 for a, b in zip(grads, ref) if b.numel())
    return row, grads


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    print(f"device: {device_name()}, torch {torch.__version__}", flush=True)
    t = make_inputs(8, 1536, 2048, 16)
    rows, ref = [], None
    for vb, vc, copies in ((True, True, 1), (False, False, 1), (True, False, 1), (True, True, 2), (True, True, 4),
                           (True, True, 8), (True, True, 16), (True, True, 1)):
        torch.manual_seed(0)  # the same dout, dlast for every case
        row, grads = _case(t, vb, vc, copies, ref if (vb and vc) else None)
        ref = grads if (vb and vc and ref is None) else ref
        rows.append(row)
        print(rows[-1], flush=True)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
