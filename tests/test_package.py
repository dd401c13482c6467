"""mamba_compile.load_package: AOTInductor packages whose shared library carries its own copy of the C++ runtime
load and run (see mamba_compile/lowering/package.py). Such a package is built here on purpose, by linking with
-static-libstdc++ (what the GPU machine's packages look like), and loaded in fresh processes: with torch's loader it
fails, with load_package it runs and matches eager."""

import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

import mamba_compile

_LOAD = """
import sys, torch
import mamba_compile
x, want = torch.load(sys.argv[3])
load = mamba_compile.load_package if sys.argv[2] == "load_package" else torch._inductor.aoti_load_package
package = load(sys.argv[1])
torch.testing.assert_close(package(x), want, rtol=1e-5, atol=1e-5)
print("ok")
"""

# The compiler, with the C++ runtime linked statically into shared libraries (link steps only: the precompiled
# header's compile must not link).
_STATIC_CXX = """#!/bin/sh
case " $* " in *" -shared "*) exec {cxx} "$@" -static-libstdc++ -static-libgcc;; esac
exec {cxx} "$@"
"""


class _Plain(torch.nn.Module):  # torch's own kernels only: the failure is not this package's ops'
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 64)

    def forward(self, x):
        return torch.relu(self.lin(x)) * 2


def _static_cxx(tmp_path) -> str:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    lib = subprocess.run([cxx, "-print-file-name=libstdc++.a"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip("no static libstdc++ (libstdc++.a) to link with")
    path = tmp_path / "g++-static"
    path.write_text(_STATIC_CXX.format(cxx=cxx))
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def _load(path, io, how):
    return subprocess.run([sys.executable, "-c", _LOAD, path, how, io], capture_output=True, text=True, timeout=300)


@pytest.mark.inductor
def test_package_with_its_own_cxx_runtime_loads(tmp_path):
    torch.manual_seed(0)
    model, x = _Plain().eval(), torch.randn(8, 64)
    ep = torch.export.export(model, (x,))
    with torch._inductor.config.patch({"cpp.cxx": (_static_cxx(tmp_path),)}):
        path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / "static.pt2"))
    with torch.no_grad():
        torch.save((x, model(x)), tmp_path / "io.pt")
    io = str(tmp_path / "io.pt")
    plain = _load(path, io, "torch")
    if plain.returncode == 0:
        pytest.skip("torch's loader runs this package here: nothing for load_package to mend on this machine")
    done = _load(path, io, "load_package")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def test_load_package_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="path .*missing.pt2.* is not a file"):
        mamba_compile.load_package(tmp_path / "missing.pt2")
    with pytest.raises(TypeError, match="path must be a str or os.PathLike, got int"):
        mamba_compile.load_package(3)


def test_share_cxx_runtime_loads_nothing_new():
    from mamba_compile.lowering import share_cxx_runtime

    def mapped():
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if ".so" in line}

    if not sys.platform.startswith("linux"):
        assert share_cxx_runtime() == []
        return
    before = mapped()
    shared = share_cxx_runtime()
    assert shared and all("libstdc++" in p and p in before for p in shared)
    assert mapped() == before
