"""``add_matmul``: c + a^T @ b in one launch, for a product whose inner dimension k is small (up to 256).

Shapes: c (m, n), a (k, m), b (k, n), one dtype; returns (m, n) in c's dtype, the product accumulated in fp32.

What it is for: Mamba-1's backward meets two gradients at the conv's output x, (d_inner, b l) channel-major: the
scan's du, and x_proj's input gradient x_proj.weight^T @ d(x_dbl), whose k is dt_rank + 2 d_state (80 at 130M).
On an H100 at the 130M training shape ((1536, 16384), bf16, k 80), cuBLAS takes 26 us for the product and the add
after it 50 more (76.5 us as a CUDA graph, mm then add); cuBLAS's own addmm with du as the input is slower still
(82.3 us). Here each program loads its (k, BLOCK_M) and (k, BLOCK_N) tiles once, takes the product on the tensor
cores and adds it to its tile of c on the way to the output: 44.6 us, one read of c and one write (1.35x their copy
floor). On CPU, for fp32 or fp64 inputs and for k > 256 it is torch.addmm.

``add_matmul_`` is the in-place form, c += a^T @ b, for any k: cuBLAS (or the CPU's) GEMM with beta 1 writing into c.
What it is for: the hidden-state gradient of Mamba-1's split in-projection, dz^T W_z + dx^T W_x (k = d_inner). A
functional addmm there costs a copy: Inductor calls it with a fresh output, and an out-of-place addmm first copies its
input into that output (a 25 MB device-to-device copy per layer at the 130M training shape, seen in the H100 profile
of the step). As a custom op that mutates c, applied to the first product's fresh buffer, Inductor's reinplacing
lets it write there. It is opaque to the compiler (its body runs eagerly, inside CUDA graphs too) and has no
autograd: it is for use inside backward formulas.

``matmul_into_`` writes c = a^T @ b into c, for any k, and c may be float32 where a and b are bf16/fp16: on CUDA
cuBLAS then accumulates and writes fp32 itself (``out_dtype``); elsewhere the product is rounded to a and b's dtype
and cast (as a 16-bit matmul and a cast would give). What it is for: the fp32 weight gradients of layers that run
in 16 bits under autocast. A matmul in bf16 and a cast of its result to the fp32 parameter's dtype is one more
launch per weight (four a Mamba-1 layer), and a gradient assembled from two products (the split in-projection's
halves) one more copy; with c a slice of the gradient's buffer each product writes its rows in place (reinplaced
by Inductor like ``add_matmul_``). Opaque, no autograd.
"""

from __future__ import annotations

import torch
from torch.library import triton_op

from ._checks import FLOAT_DTYPES, check_same_device, check_tensor

MAX_K = 256  # largest inner dimension the kernel takes in one tile


def add_matmul(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """c (m, n) + a (k, m)^T @ b (k, n): (m, n) in c's dtype."""
    _check(c, a, b)
    return torch.ops.mamba_compile.add_matmul(c, a, b)


def _check(c, a, b, wider_c: bool = False) -> None:
    check_tensor("c", c, shape=(None, None), letters="(m, n)", dtypes=FLOAT_DTYPES + (torch.float64,))
    m, n = c.shape
    # wider_c: a and b may be 16-bit where c is float32
    a_dtypes = (c.dtype,) + ((torch.bfloat16, torch.float16) if wider_c and c.dtype == torch.float32 else ())
    check_tensor("a", a, shape=(None, m), letters="(k, m)", dtypes=a_dtypes)
    check_tensor("b", b, shape=(a.shape[0], n), letters="(k, n)", dtypes=(a.dtype,))
    check_same_device(c=c, a=a, b=b)


def gemm_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False,
              out_dtype_gemm: bool = True) -> None:
    """out (+)= a @ b, out perhaps of a wider dtype than a and b (float32 from bf16/fp16). On CUDA (with
    ``out_dtype_gemm``) cuBLAS writes and accumulates into float32 from 16-bit operands itself (``out_dtype``);
    elsewhere the product is rounded to the operands' dtype, then cast and added: a copy and an add over ``out``."""
    if out.dtype == a.dtype:
        if accumulate:
            out.addmm_(a, b)
        else:
            torch.mm(a, b, out=out)
    elif (out_dtype_gemm and out.device.type == "cuda" and out.dtype == torch.float32
          and a.dtype in (torch.bfloat16, torch.float16)):
        if accumulate:
            torch.addmm(out, a, b, out_dtype=out.dtype, out=out)
        else:
            torch.mm(a, b, out_dtype=out.dtype, out=out)
    elif accumulate:
        out += (a @ b).to(out.dtype)
    else:
        out.copy_(a @ b)


def add_matmul_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """c (m, n) += a (k, m)^T @ b (k, n), in place."""
    _check(c, a, b)
    torch.ops.mamba_compile.add_matmul_(c, a, b)


@torch.library.custom_op("mamba_compile::add_matmul_", mutates_args=("c",))
def _add_matmul_inplace(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    gemm_into(c, a.T, b, accumulate=True)


@_add_matmul_inplace.register_fake
def _(c, a, b) -> None:
    return None


def matmul_into_(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """c (m, n) = a (k, m)^T @ b (k, n), written into c; c is a and b's dtype, or float32 where they are 16-bit."""
    _check(c, a, b, wider_c=True)
    torch.ops.mamba_compile.matmul_into_(c, a, b)


@torch.library.custom_op("mamba_compile::matmul_into_", mutates_args=("c",))
def _matmul_into_inplace(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    gemm_into(c, a.T, b)


@_matmul_into_inplace.register_fake
def _(c, a, b) -> None:
    return None


@triton_op("mamba_compile::add_matmul", mutates_args=())
def _add_matmul(c: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if c.device.type == "cuda" and c.element_size() == 2 and a.shape[0] <= MAX_K:
        from . import add_matmul_triton

        return add_matmul_triton.add_matmul_fwd(c, a, b, wrap=True)
    return torch.addmm(c, a.T, b)
