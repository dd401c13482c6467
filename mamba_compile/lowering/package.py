"""Loading AOTInductor packages (``torch._inductor.aoti_compile_and_package``) for deployment.

``load_package`` is ``torch._inductor.aoti_load_package`` with one fix. A package's shared library can carry its own
copy of the C++ runtime's code: on the GPU machine (Ubuntu 24.04, g++ 13.3, torch 2.11.0+cu130) every package's
library lists no libstdc++ among the libraries it needs and defines about 4,700 ``std::`` symbols, as a library
linked with ``-static-libstdc++`` does. Loaded into a Python process, where libstdc++ came in privately with torch,
that library binds the C++ runtime's symbols to its own copy, whose locale facets do not match the process's, and
the model's constructor fails as it parses the device string with ``std::regex``: SIGSEGV there (every CUDA and CPU
package, torch's own kernels only included; session 35, ``benchmarks/probes/aoti_cuda_load.py`` under cuda-gdb),
``std::bad_cast`` on a machine like CI's with a package linked that way on purpose (``tests/models/test_compile.py``).
Putting the process's libstdc++ in the global symbol scope first, as ``LD_PRELOAD=libstdc++.so.6`` would, makes the
library bind to it, and the package loads and runs. Nothing is loaded that was not loaded already (RTLD_NOLOAD).
C++ programs that load packages link libstdc++ themselves and need none of this.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

_shared: list[str] | None = None


def share_cxx_runtime() -> list[str]:
    """Puts the libstdc++ this process has loaded in the global symbol scope, so that a shared library loaded
    after this resolves the C++ runtime's symbols there first. Linux only (elsewhere a no-op); idempotent. Returns
    the paths of the libraries made global."""
    global _shared
    if _shared is None:
        _shared = []
        if sys.platform.startswith("linux"):
            try:
                with open("/proc/self/maps") as f:
                    paths = sorted({line.split()[-1] for line in f if "/libstdc++.so" in line})
            except OSError:
                paths = []
            for path in paths:
                ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_GLOBAL)
                _shared.append(path)
    return list(_shared)


def load_package(path: str | os.PathLike, *, run_single_threaded: bool = False, device_index: int = -1):
    """Loads an AOTInductor package (a ``.pt2`` file from ``torch._inductor.aoti_compile_and_package``) after
    ``share_cxx_runtime()``; returns torch's compiled model, called with the exported program's inputs. What a
    package of this project's models needs in the loading process is imported here: the ops, which a CPU package
    calls by name, and the models' output and cache types, which the outputs are rebuilt as."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_package: path must be a str or os.PathLike, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"load_package: path {os.fspath(path)!r} is not a file (expected a .pt2 package)")
    from .. import models  # noqa: F401  (the ops, and the LMOutput / InferenceCache pytree nodes)

    share_cxx_runtime()
    return torch._inductor.aoti_load_package(os.fspath(path), run_single_threaded=run_single_threaded,
                                             device_index=device_index)
