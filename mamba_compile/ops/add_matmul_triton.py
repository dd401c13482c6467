"""Triton kernel of ``add_matmul``: out = c + a^T b with all of k in one tile. One program per (BLOCK_M, BLOCK_N)
tile of the output: it loads a's (k, BLOCK_M) and b's (k, BLOCK_N) tiles (k padded to a power of two, masked),
takes their product on the tensor cores in fp32, adds its tile of c and stores the sum in c's dtype."""

from __future__ import annotations

import torch

from ._triton import launcher, tl, triton


@triton.jit
def _add_matmul_kernel(
    c_ptr, a_ptr, b_ptr, out_ptr, M, N, K,
    s_cm, s_cn, s_ak, s_am, s_bk, s_bn, s_om, s_on,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_FP32: tl.constexpr,
):  # fmt: skip
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    m_ok, n_ok, k_ok = offs_m < M, offs_n < N, offs_k < K
    at = tl.load(a_ptr + offs_k[None, :] * s_ak + offs_m[:, None] * s_am, mask=m_ok[:, None] & k_ok[None, :],
                 other=0.0)  # (BLOCK_M, BLOCK_K): a^T's tile
    bt = tl.load(b_ptr + offs_k[:, None] * s_bk + offs_n[None, :] * s_bn, mask=k_ok[:, None] & n_ok[None, :],
                 other=0.0)
    if DOT_FP32:  # the Triton interpreter's 16-bit dot multiplies raw bits; 16-bit values are exact in tf32
        acc = tl.dot(at.to(tl.float32), bt.to(tl.float32))
    else:
        acc = tl.dot(at, bt)
    mask = m_ok[:, None] & n_ok[None, :]
    rows = offs_m[:, None].to(tl.int64)
    acc += tl.load(c_ptr + rows * s_cm + offs_n[None, :] * s_cn, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows * s_om + offs_n[None, :] * s_on, acc.to(out_ptr.dtype.element_ty), mask=mask)


# (BLOCK_M, BLOCK_N, num_warps). H100, bf16, (1536, 16384), k 80, CUDA graphs (session 18): 64 x 128 on 4 warps
# 44.5-44.6 us, 128 x 128 on 8 45.0-45.3, on 4 46.9, 64 x 64 50.2, 64 x 256 49.2, 32 x 128 53.5, 128 x 256 and
# 256 x 128 on 8 55.3-55.5. The same tiles with the product taken in fp32 (tf32): 79.7-136.7 us.
CONFIG = (64, 128, 4)


def add_matmul_fwd(c, a, b, *, wrap: bool, config=None, dot_fp32: bool | None = None):
    """Launches the kernel; ``dot_fp32`` (default: off on CUDA, on elsewhere, i.e. under the Triton interpreter)
    takes the product in fp32."""
    m, n = c.shape
    k = a.shape[0]
    block_m, block_n, warps = config or CONFIG
    out = torch.empty((m, n), device=c.device, dtype=c.dtype)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    launcher(_add_matmul_kernel, wrap)[grid](
        c, a, b, out, m, n, k, *c.stride(), *a.stride(), *b.stride(), *out.stride(),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=max(16, triton.next_power_of_2(k)),
        DOT_FP32=c.device.type != "cuda" if dot_fp32 is None else dot_fp32, num_warps=warps,
    )  # fmt: skip
    return out
