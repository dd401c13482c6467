"""Triton import guard and launch helper shared by the kernel modules.

Kernels are launched through ``torch.library.wrap_triton`` inside the ops, so that Dynamo,
``torch.export`` and AOTInductor see and compile them. Tests launch the same kernels
directly (``wrap=None``), which is how they run under the Triton interpreter on CPU.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only platforms without triton: the torch paths still work.
    triton = None
    tl = None
    HAS_TRITON = False


def launcher(kernel, wrap: bool = True):
    """Returns ``kernel`` wrapped for tracing (``wrap=True``) or as is, for direct launches."""
    if not HAS_TRITON:
        raise RuntimeError("this op's CUDA path needs triton, which is not installed")
    if wrap:
        from torch.library import wrap_triton

        return wrap_triton(kernel)
    return kernel
