"""Argument checks shared by every op: each failure names the argument and what was expected.

Shapes are given as a tuple of expected sizes (``None`` = any) plus the letters of the
shape scheme, so a message reads ``delta must have shape (batch, dim, seqlen) = (2, 64, 128), got (2, 64, 127)``.
The checks run in the public wrappers and again inside the op bodies, so a direct
``torch.ops.mamba_compile.*`` call is checked too (the body also runs on fake tensors
while tracing, so a bad call fails at trace time, before any kernel is launched).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def values_readable(t: torch.Tensor) -> bool:
    """Whether a check may read ``t``'s values (a device sync for a CUDA tensor): not while tracing for the
    compiler, nor while a CUDA graph is captured (is_compiling comes first, so Dynamo never traces the other)."""
    if torch.compiler.is_compiling():
        return False
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _fmt(shape: Sequence) -> str:
    return "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"


def check_tensor(
    name: str,
    t: torch.Tensor | None,
    *,
    shape: Sequence | None = None,
    letters: str | None = None,
    dtypes: Sequence[torch.dtype] | None = FLOAT_DTYPES,
    device: torch.device | None = None,
    optional: bool = False,
) -> None:
    """Checks one tensor argument: presence, type, rank and sizes, dtype, device.

    ``shape`` holds the expected sizes (``None`` for any) and ``letters`` names them,
    e.g. ``letters="(batch, dim, seqlen)"``.
    """
    if t is None:
        if optional:
            return
        raise TypeError(f"{name} is required, got None")
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if shape is not None:
        # the message is built only on failure: str() of a SymInt breaks a Dynamo graph
        desc = lambda: f"{letters} = {_fmt(shape)}" if letters else _fmt(shape)  # noqa: E731
        if t.dim() != len(shape):
            raise ValueError(f"{name} must have {len(shape)} dims {desc()}, got shape {tuple(t.shape)}")
        for want, got in zip(shape, t.shape):
            if want is not None and got != want:
                raise ValueError(f"{name} must have shape {desc()}, got {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {str(t.dtype).replace('torch.', '')}")
    if device is not None and t.device != device:
        raise ValueError(f"{name} is on {t.device} but the other inputs are on {device}")


def check_same_device(**tensors: torch.Tensor | None) -> torch.device:
    """All given tensors (Nones skipped) must be on one device; returns it."""
    device = None
    first = None
    for name, t in tensors.items():
        if t is None:
            continue
        if device is None:
            device, first = t.device, name
        elif t.device != device:
            raise ValueError(f"{name} is on {t.device} but {first} is on {device}: all tensors must be on one device")
    return device


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_row_span(name: str, t: torch.Tensor | None) -> None:
    """A (batch, dim, seqlen) CUDA input whose batch row spans 2**31 elements or more is refused: the Triton kernels
    address a row's channels and steps with 32-bit offsets (the batch offset is 64-bit)."""
    if t is not None and t.device.type != "cpu":
        _, dim, seqlen = t.shape
        if (dim - 1) * t.stride(1) + (seqlen - 1) * t.stride(2) >= 2**31:
            raise ValueError(f"{name} with strides {tuple(t.stride())} spans 2**31 or more elements within a batch "
                             f"row, beyond the CUDA kernels' 32-bit offsets: pass it contiguous, or split the batch")
