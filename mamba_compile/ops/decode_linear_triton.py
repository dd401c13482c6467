"""GEMV kernel for ``decode_linear``: one program per BLOCK_N rows of W. When k fits in one tile (up to 4096)
the program loads its rows of W once, as one (BLOCK_N, BLOCK_K) tile, and applies them to each row of x in
turn (so W is read once whatever the batch); otherwise it walks k per row. fp32 products and sums; masked,
strided. With ``PDL`` (programmatic dependent launch, see ``_triton``) W's tile is read before the wait for
the previous kernel."""

from __future__ import annotations

import torch

from ._triton import dependent_launch_options, launcher, tl, triton
from .norms_triton import next_power_of_2


@triton.jit
def _decode_linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, batch, n, k, s_xb, s_xk, s_wn, s_wk, s_ob, s_on,
    HAS_BIAS: tl.constexpr, ONE_TILE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PDL: tl.constexpr,
):
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < n
    offs_k = tl.arange(0, BLOCK_K)
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * s_wn
    if HAS_BIAS:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    if ONE_TILE:  # all of k: W's tile is loaded once and serves every row of x
        w = tl.load(w_rows + offs_k[None, :] * s_wk, mask=mask_n[:, None] & (offs_k < k)[None, :], other=0.0)
        w = w.to(tl.float32)
    if PDL:  # W and the bias were read before the wait; x is the previous kernel's output
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
    for b in range(0, batch):
        x_row = x_ptr + b * s_xb
        if ONE_TILE:
            xv = tl.load(x_row + offs_k * s_xk, mask=offs_k < k, other=0.0).to(tl.float32)
            out = tl.sum(w * xv[None, :], axis=1)
        else:
            acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            for k0 in range(0, k, BLOCK_K):
                ks = k0 + offs_k
                wk = tl.load(w_rows + ks[None, :] * s_wk, mask=mask_n[:, None] & (ks < k)[None, :], other=0.0)
                xv = tl.load(x_row + ks * s_xk, mask=ks < k, other=0.0)
                acc += wk.to(tl.float32) * xv.to(tl.float32)[None, :]
            out = tl.sum(acc, axis=1)
        if HAS_BIAS:
            out += bias
        tl.store(out_ptr + b * s_ob + offs_n * s_on, out.to(out_ptr.dtype.element_ty), mask=mask_n)


def linear_blocks(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps): all of k in one tile up to 4096, about 4096 elements a tile. Measured on an
    H100 in bf16 with the kernel's first form (one row of x a program): the 130M LM head 26.7 us at 4 rows of W a
    program against 28.0 at 8 and 30.7 for cuBLAS; out_proj 2.1 us at 4 or 2 rows against 4.2."""
    block_k = min(4096, max(16, next_power_of_2(k)))
    return max(1, min(64, 4096 // block_k)), block_k, 4


def decode_linear_fwd(x, weight, bias, *, wrap: bool, block_n: int | None = None, num_warps: int | None = None):
    """Launches decode_linear: one program per BLOCK_N rows of W, looping over x's rows."""
    batch, k = x.shape
    n = weight.shape[0]
    BLOCK_N, BLOCK_K, warps = linear_blocks(int(n), int(k))
    BLOCK_N, warps = block_n or BLOCK_N, num_warps or warps
    out = torch.empty((batch, n), device=x.device, dtype=x.dtype)
    b = bias.contiguous() if bias is not None else None
    launcher(_decode_linear_kernel, wrap)[(triton.cdiv(n, BLOCK_N),)](
        x, weight, b if b is not None else x, out, batch, n, k, *x.stride(), *weight.stride(), *out.stride(),
        HAS_BIAS=b is not None, ONE_TILE=int(k) <= BLOCK_K, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=warps,
        **dependent_launch_options(out),
    )
    return out
