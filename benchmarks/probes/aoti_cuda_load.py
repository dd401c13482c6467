"""Why CUDA AOTInductor packages crash on load on the GPU machine (session 34: SIGSEGV inside aoti_load_package for
every CUDA package, torch's own kernels only included; see aoti_cuda.py and the README's known problems).

A package of torch's own kernels (a Linear and a ReLU) is built once per variant of AOTInductor's build settings,
and once for the CPU; each is listed (archive contents, the shared library's dynamic dependencies) and loaded in a
fresh process with faulthandler, its last dynamic-loader lines (LD_DEBUG=files) kept. The default CUDA package is
also loaded under cuda-gdb for a native backtrace, and its shared library run through the container runner
directly, without the package loader.

    python -m benchmarks.probes.aoti_cuda_load [--out DIR] [--variants default cpu ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import torch

_LOAD = """
import sys, torch
path, device = sys.argv[1], sys.argv[2]
print("loading", flush=True)
package = torch._inductor.aoti_load_package(path)
print("loaded", flush=True)
torch.manual_seed(1)
x = torch.randn(64, 512, device=device)
out = package(x)
out = out[0] if isinstance(out, (tuple, list)) else out
print("ran", tuple(out.shape), float(out.float().abs().sum()), flush=True)
"""

_RUNNER = """
import sys, torch
so = sys.argv[1]
print("runner", flush=True)
runner = torch._C._aoti.AOTIModelContainerRunnerCuda(so, 1)
print("made", flush=True)
x = torch.randn(64, 512, device="cuda")
print("ran", [tuple(o.shape) for o in runner.run([x])], flush=True)
"""

# AOTInductor build settings tried one at a time against the default (torch._inductor.config.aot_inductor).
VARIANTS = {
    "default": {},
    "cpu": {},
    "embed-kernels": {"embed_kernel_binary": True},
    "no-embed-kernels": {"embed_kernel_binary": False},
    "no-consts-asm": {"use_consts_asm_build": False},
    "no-precompiled-headers": {"precompile_headers": False},
    "consts-outside-so": {"package_constants_in_so": False},
    "no-libtorch-link": {"link_libtorch": False},
}


class Plain(torch.nn.Module):
    def __init__(self, device):
        super().__init__()
        self.lin = torch.nn.Linear(512, 512, device=device)

    def forward(self, x):
        return torch.relu(self.lin(x)) * 2


def _sh(cmd: list[str], timeout: int = 120, env=None) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        return -999, f"timeout: {e}"
    except FileNotFoundError as e:
        return -998, str(e)


def build(name: str, settings: dict, d: str) -> str:
    device = "cpu" if name == "cpu" else "cuda"
    torch.manual_seed(0)
    model = Plain(device)
    ep = torch.export.export(model, (torch.randn(64, 512, device=device),))
    cfg = torch._inductor.config.aot_inductor
    missing = [k for k in settings if not hasattr(cfg, k)]
    if missing:
        raise RuntimeError(f"no such aot_inductor settings in this torch: {missing}")
    with torch._inductor.config.patch({f"aot_inductor.{k}": v for k, v in settings.items()}):
        return torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(d, f"{name}.pt2"))


def inspect_package(path: str, d: str) -> dict:
    info = {}
    with zipfile.ZipFile(path) as z:
        info["files"] = [f"{i.filename} {i.file_size}" for i in z.infolist()]
        out = os.path.join(d, os.path.basename(path) + ".x")
        z.extractall(out)
    sos = glob.glob(os.path.join(out, "**", "*.so"), recursive=True)
    info["so"] = sos
    for so in sos[:1]:
        info["ldd"] = _sh(["ldd", so])[1][-3000:]
        info["file"] = _sh(["file", so])[1]
        info["comment"] = _sh(["readelf", "-p", ".comment", so])[1][-600:]
        info["sections"] = _sh(["readelf", "-S", "-W", so])[1][-4000:]
    return info


def load_fresh(path: str, device: str, ld_debug: bool) -> dict:
    env = dict(os.environ)
    if ld_debug:
        env["LD_DEBUG"] = "files"
    rc, text = _sh([sys.executable, "-X", "faulthandler", "-c", _LOAD, path, device], env=env)
    lines = text.splitlines()
    return {"rc": rc, "head": [ln for ln in lines if ln.startswith(("loading", "loaded", "ran"))],
            "tail": lines[-60:]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    p.add_argument("--no-gdb", action="store_true")
    args = p.parse_args()
    d = tempfile.mkdtemp()
    results = {"torch": torch.__version__, "cxx": _sh(["c++", "--version"])[1].splitlines()[:1],
               "driver": _sh(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])[1].strip()}
    for name in args.variants:
        r = results[name] = {"settings": VARIANTS[name]}
        try:
            path = build(name, VARIANTS[name], d)
        except Exception as e:  # noqa: BLE001
            r["build"] = f"{type(e).__name__}: {str(e)[:800]}"
            print(name, "build failed:", r["build"][:300], flush=True)
            continue
        r.update(inspect_package(path, d))
        r["load"] = load_fresh(path, "cpu" if name == "cpu" else "cuda", ld_debug=name in ("default", "cpu"))
        print(f"{name}: rc {r['load']['rc']} {r['load']['head']}", flush=True)
        if name == "default":
            if not args.no_gdb and shutil.which("cuda-gdb"):
                rc, text = _sh(["cuda-gdb", "-q", "-batch", "-ex", "set pagination off", "-ex", "run", "-ex", "bt 40",
                                "-ex", "info registers rip", "--args", sys.executable, "-c", _LOAD, path, "cuda"],
                               timeout=240)
                r["gdb"] = text.splitlines()[-90:]
                print("gdb:", "\n".join(r["gdb"][-45:]), flush=True)
            if r.get("so"):
                rc, text = _sh([sys.executable, "-X", "faulthandler", "-c", _RUNNER, r["so"][0]])
                r["runner"] = {"rc": rc, "tail": text.splitlines()[-25:]}
                print("runner: rc", rc, text.splitlines()[-3:], flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "aoti_cuda_load.json"), "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
