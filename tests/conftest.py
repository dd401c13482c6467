import atexit
import os
import shutil
import tempfile

import pytest
import torch

# On a machine without CUDA, Triton kernels run in the interpreter; the variable must be set
# before any kernel module is imported (Triton reads it when @triton.jit runs).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# A fresh Inductor cache per test session: the FX-graph cache key does not cover a custom op's
# fake function, so a cache left by an older version of an op can replay code with stale strides.
# Removed when the session ends (the subprocess tests share it while it lasts).
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="mamba_compile_inductor_")
    atexit.register(shutil.rmtree, os.environ["TORCHINDUCTOR_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
