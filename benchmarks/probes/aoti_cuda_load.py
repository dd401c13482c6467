"""Why AOTInductor packages crash on load on the GPU machine, and what avoids it.

Session 34 found SIGSEGV inside aoti_load_package for every CUDA package there, torch's own kernels only included
(aoti_cuda.py). Session 35's first call (this probe's first version) put it, under cuda-gdb, in the package's
shared library: std::regex compiling a pattern inside torch::aot_inductor::parse_device_str, called from the
AOTInductorModel constructor; CPU packages crash there the same way, and none of AOTInductor's build settings
(embedded kernels or not, constants by assembler or not) changed it.

Session 35's second call found that the package's library lists no libstdc++ among its needed libraries and defines
about 4,700 std:: symbols (as one linked with -static-libstdc++ does), and that every package loads and runs when the
compiler's libstdc++ is preloaded (cpu-preload, cuda-preload), while the plain and static builds crash. The fix is
mamba_compile.load_package (lowering/package.py).

Each variant builds a package of torch's own kernels (a Linear and a ReLU) or reuses one, then loads and runs it in
a fresh process with faulthandler, after recording what the machine has: the C++ compiler, the libstdc++ it links
against, and the libstdc++ (and other C++ runtimes) mapped into a process that imported torch.

    python -m benchmarks.probes.aoti_cuda_load [--out DIR] [--variants cpu cpu-preload ...]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

_LOAD = """
import sys, torch
path, device = sys.argv[1], sys.argv[2]
maps = sorted({l.split()[-1] for l in open("/proc/self/maps") if "libstdc++" in l or "libgcc_s" in l})
print("maps", maps, flush=True)
print("loading", flush=True)
package = torch._inductor.aoti_load_package(path)
print("loaded", flush=True)
torch.manual_seed(1)
x = torch.randn(64, 512, device=device)
out = package(x)
out = out[0] if isinstance(out, (tuple, list)) else out
print("ran", tuple(out.shape), float(out.float().abs().sum()), flush=True)
"""

_BUILD = """
import sys, torch
device, path, cxx = sys.argv[1], sys.argv[2], sys.argv[3]
if cxx:
    torch._inductor.config.cpp.cxx = (cxx,)
class Plain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(512, 512, device=device)
    def forward(self, x):
        return torch.relu(self.lin(x)) * 2
torch.manual_seed(0)
ep = torch.export.export(Plain(), (torch.randn(64, 512, device=device),))
print(torch._inductor.aoti_compile_and_package(ep, package_path=path), flush=True)
"""

# name: (device, how the package is built, how it is loaded)
VARIANTS = {
    "cpu": ("cpu", "default", "plain"),
    "cpu-preload": ("cpu", "default", "preload"),  # the compiler's own libstdc++ preloaded into the loading process
    "cpu-static": ("cpu", "static", "plain"),  # libstdc++ and libgcc linked into the package's library
    "cpu-clang": ("cpu", "clang", "plain"),
    "cuda": ("cuda", "default", "plain"),
    "cuda-preload": ("cuda", "default", "preload"),
    "cuda-static": ("cuda", "static", "plain"),
}


def _sh(cmd, timeout: int = 300, env=None) -> tuple[int, str]:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                           shell=isinstance(cmd, str))
        return r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        return -999, f"timeout: {e}"
    except FileNotFoundError as e:
        return -998, str(e)


def _glibcxx(path: str) -> str:
    try:
        data = open(path, "rb").read()
    except OSError as e:
        return str(e)
    found = sorted({int(v) for v in re.findall(rb"GLIBCXX_3\.4\.(\d+)", data)})
    return f"GLIBCXX_3.4.{found[-1]}" if found else "none"


def facts() -> dict:
    f = {}
    for cxx in ("g++", "c++", "clang++"):
        f[cxx] = shutil.which(cxx)
        if f[cxx]:
            f[cxx + " version"] = _sh([cxx, "--version"])[1].splitlines()[:1]
    lib = _sh(["g++", "-print-file-name=libstdc++.so"])[1].strip()
    f["g++ links libstdc++"] = [lib, os.path.realpath(lib), _glibcxx(os.path.realpath(lib))]
    f["ldconfig libstdc++"] = [ln.strip() for ln in _sh("ldconfig -p | grep -E 'libstdc|libgcc_s'")[1].splitlines()]
    rc, text = _sh([sys.executable, "-c", "import torch; print(sorted({l.split()[-1] for l in open('/proc/self/maps') "
                    "if 'libstdc++' in l or 'libgcc_s' in l or 'libc++' in l}))"])
    f["mapped after import torch"] = text.strip().splitlines()[-1:]
    for p in re.findall(r"'([^']+)'", text):
        f[f"{p} version"] = _glibcxx(os.path.realpath(p))
    import torch

    f["torch"] = torch.__version__
    f["torch cxx11 abi"] = bool(torch._C._GLIBCXX_USE_CXX11_ABI)
    f["torch built with"] = torch.__config__.show().splitlines()[1:4]
    f["python"] = sys.version
    return f


def build(device: str, how: str, d: str) -> tuple[str | None, str]:
    path = os.path.join(d, f"{device}-{how}.pt2")
    if os.path.exists(path):
        return path, "reused"
    cxx = ""
    if how == "static":
        cxx = os.path.join(d, "g++-static")
        with open(cxx, "w") as f:
            f.write('#!/bin/sh\ncase " $* " in *" -shared "*) exec g++ "$@" -static-libstdc++ -static-libgcc;; esac\n'
                    'exec g++ "$@"\n')  # link steps only: the precompiled header's compile must not link
        os.chmod(cxx, 0o755)
    elif how == "clang":
        cxx = shutil.which("clang++") or ""
        if not cxx:
            return None, "no clang++"
    rc, text = _sh([sys.executable, "-c", _BUILD, device, path, cxx], timeout=400)
    if rc != 0 or not os.path.exists(path):
        return None, f"build rc {rc}: {text[-1500:]}"
    return path, "built"


def inspect(path: str, d: str) -> dict:
    out = os.path.join(d, os.path.basename(path) + ".x")
    with zipfile.ZipFile(path) as z:
        z.extractall(out)
    sos = glob.glob(os.path.join(out, "**", "*.so"), recursive=True)
    info = {"so": [os.path.relpath(s, out) for s in sos]}
    for so in sos[:1]:
        info["ldd"] = _sh(["ldd", so])[1].splitlines()
        info["comment"] = _sh(["readelf", "-p", ".comment", so])[1].strip().splitlines()[-3:]
        info["needed"] = [ln for ln in _sh(["readelf", "-d", so])[1].splitlines() if "NEEDED" in ln or "PATH" in ln]
        info["std symbols defined"] = len([ln for ln in _sh(["nm", "-D", "-C", "--defined-only", so])[1].splitlines()
                                           if " std::" in ln])
    return info


def load(path: str, device: str, how: str) -> dict:
    env = dict(os.environ)
    if how == "preload":
        lib = os.path.realpath(_sh(["g++", "-print-file-name=libstdc++.so"])[1].strip())
        env["LD_PRELOAD"] = lib
    rc, text = _sh([sys.executable, "-X", "faulthandler", "-c", _LOAD, path, device], env=env, timeout=200)
    lines = text.splitlines()
    return {"rc": rc, "out": [ln for ln in lines if ln.startswith(("maps", "loading", "loaded", "ran"))],
            "tail": lines[-12:] if rc else []}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=None)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS))
    args = p.parse_args()
    d = tempfile.mkdtemp()
    results = {"facts": facts()}

    def save():
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "aoti_cuda_load.json"), "w") as f:
                json.dump(results, f, indent=1)

    print(json.dumps(results["facts"], indent=1), flush=True)
    save()
    for name in args.variants:
        device, how, load_how = VARIANTS[name]
        path, note = build(device, how, d)
        r = results[name] = {"build": note}
        if path is None:
            print(f"{name}: {note[-600:]}", flush=True)
            save()
            continue
        if note == "built":
            r.update(inspect(path, d))
        r["load"] = load(path, device, load_how)
        print(f"{name}: rc {r['load']['rc']} {r['load']['out']}", flush=True)
        save()


if __name__ == "__main__":
    main()
