"""Triton kernel of ``linear_cross_entropy`` on CUDA: one block of logits rows to its losses and, in place, its
gradient.

For each row of a (rows, vocab) block of logits (any float dtype, computed in fp32): the log-sum-exp in one pass
(running max and rescaled sum, one exp per element; or, with SEPARATE_MAX, a max pass then a sum pass), the row's
loss lse - logit[label] (0 where the label is ignore_index), and, when asked, the gradient of the mean loss in a
second pass, (softmax - onehot) * valid / count, written over the logits in their dtype. Two reads (three with
SEPARATE_MAX) and one write of the block, where the torch version makes about ten passes over an fp32 copy
(logsumexp's max, subtract, exp and sum, then subtract, exp, scatter, scale and cast). The count of valid labels is
read from a device tensor, so nothing waits for the host.
"""

from __future__ import annotations

import torch

from ._triton import launcher, next_pow2, tl, triton


@triton.jit
def _aligned(vocab, s_row, VEC: tl.constexpr):
    """vocab and the row stride, written so that the compiler sees multiples of VEC elements (the launcher checked
    that they are): the row's loads and stores then move VEC elements at a time instead of one. Triton's own
    hint covers multiples of 16 only, and a padded vocabulary such as 50280 is a multiple of 8. (tl.multiple_of
    on an argument changes nothing.)"""
    return (vocab // VEC) * VEC, (s_row // VEC) * VEC


@triton.jit
def _logits_tile(base, v0, offs, vocab):
    """Columns v0 + offs of the row at base, in fp32; -inf past the vocabulary (nothing to the max or the sum)."""
    return tl.load(base + v0 + offs, mask=v0 + offs < vocab, other=float("-inf")).to(tl.float32)


@triton.jit
def _ce_rows_kernel(
    logits_ptr, labels_ptr, inv_count_ptr, loss_ptr, vocab, s_row, s_label, ignore_index,
    COMPUTE_GRAD: tl.constexpr, BLOCK_V: tl.constexpr, SEPARATE_MAX: tl.constexpr, VEC: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    vocab, s_row = _aligned(vocab, s_row, VEC)
    base = logits_ptr + row.to(tl.int64) * s_row
    offs = tl.arange(0, BLOCK_V)
    label = tl.load(labels_ptr + row * s_label)
    ok = label != ignore_index
    # A label outside the vocabulary (which only an unchecked call can pass: a replayed CUDA graph) makes the
    # row's loss and gradient NaN instead of reading past the row.
    bad = ok & ((label < 0) | (label >= vocab))
    target = tl.where(ok & ~bad, label, 0)
    # Read before the reductions, whose barriers every warp passes before any writes the gradient over the row.
    x_target = tl.load(base + target).to(tl.float32)
    if SEPARATE_MAX:
        # The max, then the sum of exp(x - max), each kept per element across tiles and reduced across the program
        # once: two reductions a row instead of two a tile, for a third read of the row (timings at _SEPARATE_MAX).
        m_el = tl.full([BLOCK_V], float("-inf"), tl.float32)
        for v0 in range(0, vocab, BLOCK_V):
            x = _logits_tile(base, v0, offs, vocab)
            m_el = tl.maximum(m_el, x)
        m = tl.max(m_el, axis=0)
        s_el = tl.zeros([BLOCK_V], tl.float32)
        for v0 in range(0, vocab, BLOCK_V):
            x = _logits_tile(base, v0, offs, vocab)
            s_el += tl.exp(x - m)
        s = tl.sum(s_el, axis=0)
    else:
        # Running max m and sum s of exp(x - m), rescaled when m grows.
        m = tl.full([], float("-inf"), tl.float32)
        s = tl.zeros([], tl.float32)
        for v0 in range(0, vocab, BLOCK_V):
            x = _logits_tile(base, v0, offs, vocab)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
            m = m_new
    lse = m + tl.log(s)
    tl.store(loss_ptr + row, tl.where(bad, float("nan"), tl.where(ok, lse - x_target, 0.0)))
    if COMPUTE_GRAD:
        scale = tl.where(bad, float("nan"), tl.where(ok, tl.load(inv_count_ptr), 0.0))
        for v0 in range(0, vocab, BLOCK_V):
            cols = v0 + offs
            mask = cols < vocab
            x = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32)
            g = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
            tl.store(base + cols, (g * scale).to(logits_ptr.dtype.element_ty), mask=mask)


# The log-sum-exp as a max pass then a sum pass, each reduced once per row (True), or as one pass with a running max
# and sum reduced per tile (False), for rows whose loads go one element at a time (VEC 1: a row length or stride
# that is odd, or a start that is not 4-byte aligned); rows loaded VEC > 1 elements at a time always take the
# running max. H100, one 130M training block of bf16 logits (5338 rows of 50280; benchmarks/probes/ce_probe.py
# --parts rows), ms:
#   session 16, VEC 1 (every load was one element wide then): at BLOCK_V 4096 / 8 warps 0.732 separate against
#   0.767 running; separate also at 8192 / 8 (0.982 against 1.057) and 8192 / 16 (0.755 against 0.808), running at
#   2048 / 8, 4096 / 4, 2048 / 4 and 1024 / 4 (0.843-0.899 against 0.946-1.124). The separate max reads each row a
#   third time, which the timing suggests comes from L2 (about 26 MB of rows in flight against a 50 MB L2); fp32
#   rows are twice as long and were not timed, so they keep the running max.
#   session 18, the same block with VEC 8 (16-byte loads and stores): running 0.548 at 8192 / 16 (1.02x the copy
#   floor of two reads and a write), 0.590 at 8192 / 8, 0.624-0.629 at 4096 / 4 and 8, 0.655-0.700 at 2048 and
#   1024; separate 0.607 at 8192 / 16, 0.724-0.859 elsewhere; VEC 1 in the same run 0.733 (4096 / 8, separate),
#   the old default. A kernel that read each 16-bit row once (int32 pairs in up to 8 tiles kept in
#   registers for the max, the sum and the gradient; one tile of the whole row made ptxas spill at every warp
#   count) took 0.731 at best (tiles of 4096 pairs, 16 warps; 0.747-0.781 with 8192 and 16384, 0.80-1.17 on 8 and
#   32 warps, 2.4-4.6 on 4): one CTA of 255 or 128 registers a thread per SM leaves no second row to load while
#   one reduces. In the graphed Mamba-1 step (train_ab, one call) 74.77 / 74.55 ms against 74.52 / 73.83 for VEC 8
#   and the running max here. Not kept.
_SEPARATE_MAX = True


_VECTORIZE = True  # False: every load and store one element wide, as before session 18 (for A/B runs)


def _vector_width(logits: torch.Tensor) -> int:
    """The most elements (up to 16 bytes) that divide the row length, the row stride and the start's alignment."""
    vec = 16 // logits.element_size() if _VECTORIZE else 1
    while vec > 1 and (logits.shape[1] % vec or logits.stride(0) % vec
                       or logits.data_ptr() % (vec * logits.element_size())):
        vec //= 2
    return vec


def ce_rows(logits: torch.Tensor, labels: torch.Tensor, inv_count: torch.Tensor, ignore_index: int,
            compute_grad: bool, *, wrap: bool = False, separate_max: bool | None = None) -> torch.Tensor:
    """Per-row losses (fp32, 0 for ignored rows) of a (rows, vocab) logits block whose rows are contiguous
    (labels: (rows,) int64, any stride);
    with ``compute_grad`` the logits are overwritten by the gradient of the mean loss (inv_count = 1 / the
    number of valid labels over all blocks, a one-element fp32 tensor)."""
    rows, vocab = logits.shape
    loss = torch.empty(rows, device=logits.device, dtype=torch.float32)
    if rows == 0:
        return loss
    vec = _vector_width(logits)
    block_v = min(8192 if vec > 1 else 4096, next_pow2(vocab))
    if separate_max is None:
        separate_max = _SEPARATE_MAX and vec == 1 and logits.element_size() == 2
    launcher(_ce_rows_kernel, wrap)[(rows,)](
        logits, labels, inv_count, loss, vocab, logits.stride(0), labels.stride(0), ignore_index,
        COMPUTE_GRAD=compute_grad, BLOCK_V=block_v, VEC=vec, SEPARATE_MAX=separate_max,
        num_warps=16 if block_v >= 8192 else 8 if block_v >= 2048 else 4,
    )  # fmt: skip
    return loss
