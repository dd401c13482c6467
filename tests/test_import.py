"""Importing the package must do nothing a user did not ask for."""

import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import os, sys
    import torch
    import torch._dynamo.config as dynamo_config
    import torch._inductor.config as inductor_config
    env_before = dict(os.environ)
    configs_before = (dynamo_config.get_config_copy(), inductor_config.get_config_copy())
    had_triton = "triton" in sys.modules
    import mamba_compile
    from mamba_compile import compat, ops  # noqa: F401
    problems = []
    if torch.cuda.is_initialized():
        problems.append("CUDA was initialised")
    if (dynamo_config.get_config_copy(), inductor_config.get_config_copy()) != configs_before:
        problems.append("a dynamo/inductor config changed")
    if dict(os.environ) != env_before:
        problems.append("os.environ changed")
    kernels = sorted(m for m in sys.modules if m.startswith("mamba_compile.") and m.endswith("_triton"))
    if kernels:
        problems.append(f"kernel modules imported: {kernels}")
    if not had_triton and "triton" in sys.modules:
        problems.append("triton was imported")
    for name in ("selective_scan_fwd", "causal_conv1d_fwd", "causal_conv1d_update", "selective_state_update",
                 "add_norm", "rms_norm_gated", "ssd_chunk_scan_fwd"):
        if not hasattr(torch.ops.mamba_compile, name):
            problems.append(f"op mamba_compile::{name} is not registered")
    print("PROBLEMS:" + "; ".join(problems))
    """
)


def test_import_is_lean():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [ln for ln in result.stdout.splitlines() if ln.startswith("PROBLEMS:")][-1]
    assert line == "PROBLEMS:", line
