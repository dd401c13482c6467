"""CUDA AOTInductor packages of this package's ops and of a small Mamba-2 model: built, then loaded and run in this
process and in a fresh one (with Python's faulthandler, so that a crash prints its stack), each against the eager
result. Session 34's GPU test of an SSD package loaded in a fresh process exited with SIGSEGV and no output; this
narrows down where. It found the crash inside aoti_load_package for every CUDA package, torch's own kernels only
included, on the H100 and the H200 kinds (torch 2.11.0+cu130). Session 35 found why (aoti_cuda_load.py) and loads
packages with mamba_compile.load_package; this probe still loads them with torch's loader.

    python -m benchmarks.probes.aoti_cuda [--cases plain norm ssd-partial ssd-whole mamba2] [--fresh-only]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import torch

_RUN = """
import sys, torch
if sys.argv[3] == "import":
    import mamba_compile.ops  # noqa: F401  (registers the ops; a CUDA package should not need them)
io = torch.load(sys.argv[2])
print("loading", flush=True)
package = torch._inductor.aoti_load_package(sys.argv[1])
print("loaded", flush=True)
args = [a.cuda() if isinstance(a, torch.Tensor) else a for a in io["args"]]
out = package(*args)
out = out if isinstance(out, (tuple, list)) else [getattr(out, "logits", out)]
err = max(((o.float().cpu() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-6)).item()
          for o, w in zip(out, io["want"]))
print("ran, relative error", err, flush=True)
"""


def _cases():
    from mamba_compile.ops import rms_norm_gated, ssd_chunk_scan

    g = torch.Generator(device="cuda").manual_seed(0)

    def rnd(*shape, dtype=torch.bfloat16, scale=1.0):
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    class Scan(torch.nn.Module):
        def forward(self, x, dt, A, B, C, D, z, dt_bias):
            return ssd_chunk_scan(x, dt, A, B, C, 128, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                  return_final_states=True)

    def scan_args(seqlen):
        return (rnd(2, seqlen, 4, 64), rnd(2, seqlen, 4, scale=0.5), -(torch.rand(4, device="cuda") + 0.5),
                rnd(2, seqlen, 1, 64, scale=0.5), rnd(2, seqlen, 1, 64, scale=0.5), rnd(4, dtype=torch.float32),
                rnd(2, seqlen, 4, 64), rnd(4, dtype=torch.float32, scale=0.3))

    class Norm(torch.nn.Module):
        def forward(self, x, w, z):
            return rms_norm_gated(x, w, z, 1e-5, None, False)

    def mamba2():
        sys.path.insert(0, os.getcwd())
        from mamba_compile import MambaLM
        from tests.models._configs import CONFIGS, VOCAB

        torch.manual_seed(0)
        model = MambaLM(CONFIGS["mamba2"](n_layer=1)).cuda().eval()
        ids = torch.randint(0, VOCAB, (2, 40), device="cuda")
        return model, (ids,), ({1: torch.export.Dim("seqlen", min=2, max=256)},)

    class Plain(torch.nn.Module):  # no op of this package: torch's own kernels only
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(512, 512, device="cuda")

        def forward(self, x):
            return torch.relu(self.lin(x)) * 2

    return {
        "plain": lambda: (Plain(), (torch.randn(64, 512, device="cuda"),), None),
        "ssd-whole": lambda: (Scan(), scan_args(256), None),
        "ssd-partial": lambda: (Scan(), scan_args(300), None),
        "norm": lambda: (Norm(), (rnd(64, 512), rnd(512, dtype=torch.float32), rnd(64, 512)), None),
        "mamba2": mamba2,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=["plain", "norm", "ssd-partial", "ssd-whole", "mamba2"])
    p.add_argument("--fresh-only", action="store_true", help="load packages in fresh processes only (a crash there "
                   "does not end this one)")
    args = p.parse_args()
    cases = _cases()
    d = tempfile.mkdtemp()
    for name in args.cases:
        try:
            module, inputs, dynamic = cases[name]()
            with torch.no_grad():
                want = module(*inputs)
            want = want if isinstance(want, (tuple, list)) else [getattr(want, "logits", want)]
            ep = torch.export.export(module, inputs, dynamic_shapes=dynamic)
            path = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(d, f"{name}.pt2"))
            io = os.path.join(d, f"{name}.pt")
            torch.save({"args": [a.cpu() for a in inputs], "want": [w.cpu() for w in want]}, io)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: build failed: {type(e).__name__}: {str(e)[:500]}", flush=True)
            continue
        for mode in ("import", "no-import"):
            r = subprocess.run([sys.executable, "-X", "faulthandler", "-c", _RUN, path, io, mode],
                               capture_output=True, text=True, timeout=300)
            print(f"{name}, fresh process ({mode}): rc {r.returncode}; {r.stdout.strip()!r}; "
                  f"stderr {r.stderr[-1500:]!r}", flush=True)
        if args.fresh_only:
            continue
        try:
            package = torch._inductor.aoti_load_package(path)
            out = package(*inputs)
            out = out if isinstance(out, (tuple, list)) else [getattr(out, "logits", out)]
            err = max(((o.float() - w.float()).abs().max() / w.float().abs().max().clamp_min(1e-6)).item()
                      for o, w in zip(out, want))
            print(f"{name}, this process: relative error {err:.2e}", flush=True)
        except Exception as e:  # noqa: BLE001
            print(f"{name}, this process: {type(e).__name__}: {str(e)[:500]}", flush=True)


if __name__ == "__main__":
    main()
