"""``decode_linear``: x @ W^T + b for a few rows (decode: one token per sequence), as a GEMV kernel.

Shapes: x (b, k), weight (n, k), bias (n,) or None; returns (b, n) in x's dtype, accumulated in fp32.

At one or two rows cuBLAS's GEMM kernels are latency-bound: the 130M Mamba out_proj (768 x 1536, bf16) took
4.8 us a call on an H100 where its 2.4 MB need 0.8 us. The GEMV kernel has each program load a few of W's
rows whole, in one tile, so a call is one round trip to memory (see ``decode_linear_triton``). The decode
step uses it for out_proj up to ``mixers.FUSED_BLOCK_MAX_BATCH`` rows (the LM head goes through
decode_norm_head). On CPU it is F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op

from ._checks import check_same_device, check_tensor


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (b, k) @ weight (n, k)^T + bias (n,): (b, n) in x's dtype."""
    _check(x, weight, bias)
    return torch.ops.mamba_compile.decode_linear(x, weight, bias)


def _check(x, weight, bias) -> None:
    check_tensor("x", x, shape=(None, None), letters="(batch, in_features)")
    check_tensor("weight", weight, shape=(None, x.shape[1]), letters="(out_features, in_features)")
    check_tensor("bias", bias, shape=(weight.shape[0],), letters="(out_features,)", optional=True)
    check_same_device(x=x, weight=weight, bias=bias)


@triton_op("mamba_compile::decode_linear", mutates_args=())
def _decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    _check(x, weight, bias)
    if x.device.type == "cuda":
        from . import decode_linear_triton

        return decode_linear_triton.decode_linear_fwd(x, weight, bias, wrap=True)
    return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
