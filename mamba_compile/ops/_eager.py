"""Which eager calls may skip a custom op's dispatch.

A plain eager CUDA call of an op whose kernels are Triton launches can run the same launch functions through a
``torch.autograd.Function`` instead of ``torch.ops.mamba_compile.*``: the same kernels and saved tensors, without
the host time of torch's custom-op and autograd-wrapper dispatch (a few tenths of a millisecond a call on the GPU
machine's host, as much as the GPU work of a small op). Anything that must see the op keeps it.
"""

from __future__ import annotations

import torch

_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def plain_eager(*tensors) -> bool:
    """Whether a call on ``tensors`` (None allowed) runs eagerly on plain tensors, with nothing that intercepts
    operators: no torch.compile or export tracing, no tensor subclass (fake, functional, DTensor, ...), no
    dispatch or torch-function mode, no functorch transform (vmap, grad). Only such a call may skip the custom op,
    whose dispatch all of those need."""
    return (not torch.compiler.is_compiling()
            and all(t is None or type(t) in _PLAIN_TENSORS for t in tensors)
            and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active())
