"""Triton import guard and launch helpers shared by the kernel modules.

Kernels are launched through ``torch.library.wrap_triton`` inside the ops, so that Dynamo,
``torch.export`` and AOTInductor see and compile them. Tests launch the same kernels
directly (``wrap=None``), which is how they run under the Triton interpreter on CPU.

Programmatic dependent launch (Hopper and later). The decode kernels (decode_norm_in,
decode_norm_head, the decode state updates, decode_linear) take a ``PDL`` constexpr. With it
they read what no earlier kernel of the step writes (weights, and the layer's own SSM state),
then wait for the previous kernel of the stream to finish (``gdc_wait``), then let the next
kernel launch (``gdc_launch_dependents``). Launched with ``launch_pdl``, the next kernel's
programs then start, and issue their weight loads, while this one runs. Because every such
kernel signals only after its own wait, at most two kernels overlap: a kernel's reads before
its wait race only with the kernel just before it, which never writes those tensors.
``dependent_launches()`` turns this on for eager launches (a CUDA-graph capture of the decode
step); traced and compiled calls never use it.
"""

from __future__ import annotations

import contextlib
import contextvars

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only platforms without triton: the torch paths still work.
    triton = None
    tl = None
    HAS_TRITON = False

_DEPENDENT_LAUNCHES = contextvars.ContextVar("mamba_compile_dependent_launches", default=False)


def launcher(kernel, wrap: bool = True):
    """Returns ``kernel`` wrapped for tracing (``wrap=True``) or as is, for direct launches."""
    if not HAS_TRITON:
        raise RuntimeError("this op's CUDA path needs triton, which is not installed")
    if wrap:
        from torch.library import wrap_triton

        return wrap_triton(kernel)
    return kernel


def supports_dependent_launch(device: torch.device) -> bool:
    """Whether kernels on ``device`` can use programmatic dependent launch: a CUDA GPU of compute capability 9
    or more and a triton with the grid-dependency intrinsics."""
    device = torch.device(device)
    return (HAS_TRITON and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
            and hasattr(tl.extra.cuda, "gdc_wait"))


@contextlib.contextmanager
def dependent_launches(enabled: bool = True):
    """Within this block, eager launches of the decode kernels on a GPU that supports it use programmatic
    dependent launch (see the module docstring). Meant for CUDA-graph captures of the decode step: the
    kernel launched just before each decode kernel must not write that kernel's weights or state, which
    holds inside a step (a graph's first kernel, moreover, waits for all the work before the graph)."""
    token = _DEPENDENT_LAUNCHES.set(enabled)
    try:
        yield
    finally:
        _DEPENDENT_LAUNCHES.reset(token)


def dependent_launch_options(out: torch.Tensor) -> dict:
    """A decode kernel's ``PDL`` constexpr, with ``launch_pdl`` when it is on. ``out`` is a tensor the op has
    just allocated: a plain ``torch.Tensor`` in an eager call, a fake or functional one while the op is traced,
    where the option stays off (a traced kernel's launch options do not reach Inductor's launcher)."""
    if _DEPENDENT_LAUNCHES.get() and type(out) is torch.Tensor and supports_dependent_launch(out.device):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}
