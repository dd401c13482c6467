"""Where Triton 3.6's one-stage build of dx goes wrong: dx (chunk_scan_bwd_dx) at one pipeline stage, uncapped and
with a 168-register cap, against the default two stages, at shapes with whole tiles (ssd_triton._even) and without,
each shape in a fresh process (an illegal address poisons the CUDA context). Prints the largest difference of each
output relative to its largest value (0: bit for bit), or the error. Session 31 found the one-stage build 15% faster
at the benchmark shapes and wrong at b1 l777 h4 p32 g2 n64 chunk 64 (see ssd_triton's comment at DX_EVEN). This
probe's run (H100, triton 3.6): wrong at every shape with a partial last chunk (0.85-2.8), capped or not; an
illegal address at whole chunks with headdim 32 / dstate 64; 0 only at whole chunks with headdim 64 / dstate 128.

    python -m benchmarks.probes.ssd_dx_one_stage
"""

from __future__ import annotations

import subprocess
import sys

# (batch, seqlen, nheads, headdim, ngroups, dstate, chunk)
SHAPES = [
    (1, 777, 4, 32, 2, 64, 64),  # the failing oracle case
    (1, 768, 4, 32, 2, 64, 64),  # the same with whole chunks
    (2, 257, 8, 32, 1, 64, 64),  # about the Mamba-2 training tests' layer
    (2, 256, 8, 32, 1, 64, 64),
    (1, 700, 8, 64, 1, 128, 128),
    (1, 768, 8, 64, 1, 128, 128),
    (2, 520, 8, 64, 2, 128, 128),
    (2, 512, 8, 64, 2, 128, 128),
]


def one(shape) -> None:
    import torch

    from benchmarks.probes.ssd_sweep import chunk_states, rel_err
    from mamba_compile.ops import ssd, ssd_triton as kt

    b, l, h, p, g, n, chunk = shape
    gen = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*s, scale=1.0):
        return (torch.randn(*s, generator=gen, device="cuda") * scale).to(torch.bfloat16)

    x, B, C = rnd(b, l, h, p), rnd(b, l, g, n, scale=0.5), rnd(b, l, g, n, scale=0.5)
    dt, A, D = rnd(b, l, h, scale=0.5), -(torch.rand(h, device="cuda") + 0.5), torch.randn(h, device="cuda")
    dtp, dA_cs = kt.chunk_cumsum_fwd(dt, A, None, chunk, True, 0.0, ssd._OPEN_BOUND, False, wrap=False)
    prev, dy, dend = chunk_states(x, B, C, dtp, dA_cs)

    def run(**kw):  # row's partial sums leave positions unwritten: left out
        outs = kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, None, wrap=False, **kw)
        torch.cuda.synchronize()
        return [o for i, o in enumerate(outs) if i != 4]

    want = run()
    even = kt._even(l, chunk, p, kt._pow2(p), n, kt._pow2(n))
    for label, kw in (("1 stage", dict(num_stages=1)), ("1 stage, cap 168", dict(num_stages=1, maxnreg=168))):
        try:
            diff = max(rel_err(a, w) for a, w in zip(run(**kw), want))
            print(f"{shape} even={even} {label}: {diff:.3g}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{shape} even={even} {label}: {type(e).__name__}: {str(e)[:120]}", flush=True)
            return


def main() -> None:
    if len(sys.argv) > 1:
        one(tuple(int(v) for v in sys.argv[1].split(",")))
        return
    for shape in SHAPES:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.probes.ssd_dx_one_stage", ",".join(map(str, shape))],
                              capture_output=True, text=True, timeout=300)
        out = [line for line in proc.stdout.splitlines() if line.startswith("(")]
        print("\n".join(out) if out else f"{shape}: no result, rc {proc.returncode}: {proc.stderr[-300:]}", flush=True)


if __name__ == "__main__":
    main()
