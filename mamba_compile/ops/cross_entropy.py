"""Linear + cross-entropy in one op, without materialising the logits (the LM head's loss).

    loss = mean over rows i with labels[i] != ignore_index of  logsumexp(hidden[i] @ weight^T) - (hidden[i] @ weight^T)[labels[i]]

Shapes: hidden (rows, d) fp32/bf16/fp16; weight (vocab, d); labels (rows,) int64, ignore_index marks rows
without a target. Returns a scalar fp32 loss (fp64 for fp64 inputs).

The full logits of a language model are the largest tensors of its training step (b8 x 2048 tokens x
50k vocabulary: 3.3 GB in fp32, and again for their gradient). Here they exist one block of rows at a
time: each block's logits give its loss and, when a gradient is wanted, at once the block's gradient
softmax - onehot, which is multiplied into d hidden and d weight before the next block. The op returns
those gradients of the mean loss alongside it, and its backward only scales them by the incoming
gradient. The price: when no backward follows, the gradient matmuls are wasted, so they run only when
``hidden`` or ``weight`` requires grad.

``mamba_compile::linear_cross_entropy`` is an opaque custom op, so a compiled training step calls it as one
node: per block, a matmul for the logits, then on CUDA one Triton kernel (``cross_entropy_triton``) for the
losses and the gradient, written over the logits, and elsewhere a few elementwise torch passes; then the two
gradient matmuls. Under autocast the matmuls run in the autocast dtype with fp32 accumulation; d weight is
accumulated over blocks in fp32 (on CUDA inside cuBLAS, so no block's product is first rounded to bf16).
"""

from __future__ import annotations

import torch

from ._checks import FLOAT_DTYPES, check_same_device, check_tensor, values_readable
from .add_matmul import gemm_into

_BLOCK_ELEMENTS = 1 << 26  # logits of one block of rows on the torch path (fp32 copies: 256 MiB)
# On CUDA the block's logits are in the matmul's dtype, this many bytes of them (bf16 under autocast: 2^28 logits), and
# bigger blocks pay: d weight (vocab, d) fp32 is read and written once per block by its accumulating matmul, and the
# matmuls grow more efficient.
# H100, 130M shape (16384 rows, vocab 50280, bf16 autocast), the op's whole call as a CUDA graph
# (benchmarks/probes/ce_probe.py): 9.80 ms with 1334-row blocks (2^26 logits), 8.75-8.95 with 2669, 8.44 with 4004,
# 8.35 with 5338 (2^28, 512 MiB, peak 2.06 GiB), 8.20 with 10677 (peak 2.63 GiB). The graphed Mamba-1 training step
# (benchmarks/probes/train_ab.py, 2^28 logits against 2^27, one call): 76.68 and 76.27 ms against 76.87 and 76.93,
# 0.4 GiB more peak. Session 20: the 16384 rows spread evenly over the four blocks (4096 each, instead of three of 5338
# and one of 370) made the op no faster (the op as a CUDA graph, alternating, three rounds: 7.83, 7.99, 8.05 ms
# against 7.80, 7.92, 8.05); not kept.
_CUDA_BLOCK_BYTES = 1 << 29
_CUDA_KERNEL = True  # CUDA blocks through cross_entropy_triton (False: the torch passes, as on CPU; for A/B runs)
_CUDA_OUT_DTYPE = True  # CUDA gradient matmuls write fp32 d weight / d hidden from bf16/fp16 directly (False: A/B)


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         ignore_index: int = -100) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` (never materialised) against ``labels``."""
    _check_args(hidden, weight, labels)
    device = hidden.device.type
    matmul_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    compute_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    if values_readable(labels) and labels.numel():  # the range check reads the labels
        bad = (labels != ignore_index) & ((labels < 0) | (labels >= weight.shape[0]))
        if bool(bad.any()):
            raise ValueError(f"labels must lie in [0, vocab={weight.shape[0]}) or equal ignore_index={ignore_index}")
    loss, _, _ = torch.ops.mamba_compile.linear_cross_entropy(hidden, weight, labels, ignore_index, matmul_dtype,
                                                              compute_grad)
    return loss


def _check_args(hidden, weight, labels) -> None:
    check_tensor("hidden", hidden, shape=(None, None), letters="(rows, d)", dtypes=FLOAT_DTYPES + (torch.float64,))
    rows, d = hidden.shape
    check_tensor("weight", weight, shape=(None, d), letters="(vocab, d)", dtypes=FLOAT_DTYPES + (torch.float64,))
    check_tensor("labels", labels, shape=(rows,), letters="(rows,)", dtypes=(torch.int64,))
    check_same_device(hidden=hidden, weight=weight, labels=labels)


@torch.library.custom_op("mamba_compile::linear_cross_entropy", mutates_args=())
def _linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, ignore_index: int,
                          matmul_dtype: torch.dtype | None, compute_grad: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, vocab = hidden.shape[0], weight.shape[0]
    dtype = matmul_dtype or torch.promote_types(hidden.dtype, weight.dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    w = weight.to(dtype)
    valid = labels != ignore_index
    count = valid.sum().to(acc)
    total = torch.zeros((), device=hidden.device, dtype=acc)
    dhidden = torch.empty(hidden.shape, device=hidden.device, dtype=hidden.dtype) if compute_grad \
        else hidden.new_empty(0)
    # d weight: the first block's product is written into it, the later ones added (no zero fill, and the first
    # matmul does not read 154 MB of zeros at the 130M shape); zeros only when there are no rows at all.
    dweight = torch.empty(weight.shape, device=weight.device, dtype=acc) if compute_grad else weight.new_empty(0)
    if compute_grad and rows == 0:
        dweight.zero_()
    # CUDA: one Triton kernel per block reads the logits in the matmul's dtype and writes the gradient over them
    # (cross_entropy_triton); elsewhere (and for float64) the same in torch, on an fp32/fp64 copy.
    fused = _CUDA_KERNEL and hidden.device.type == "cuda" and acc == torch.float32
    block = _CUDA_BLOCK_BYTES // dtype.itemsize if fused else _BLOCK_ELEMENTS
    step = max(1, block // max(vocab, 1))
    if fused:
        from .cross_entropy_triton import ce_rows

        inv_count = (1.0 / count.clamp(min=1)).reshape(1)
    for start in range(0, rows, step):
        h = hidden[start : start + step].to(dtype)
        if fused:
            grad = h @ w.T  # (r, vocab) logits, the gradient after ce_rows
            total += ce_rows(grad, labels[start : start + step], inv_count, ignore_index, compute_grad).sum()
        else:
            ok = valid[start : start + step]
            target = torch.where(ok, labels[start : start + step], 0)[:, None]  # (r, 1)
            logits = (h @ w.T).to(acc)  # (r, vocab)
            lse = logits.logsumexp(-1)
            total += ((lse - logits.gather(1, target).squeeze(1)) * ok).sum()
            if compute_grad:
                grad = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                grad.scatter_add_(1, target, -ok.to(acc)[:, None])  # - onehot on rows with a target
                grad.mul_((ok / count.clamp(min=1))[:, None])  # rows without a target contribute nothing
                grad = grad.to(dtype)
        if compute_grad:
            _matmul_into(dhidden[start : start + step], grad, w)
            _matmul_into(dweight, grad.T, h, accumulate=start > 0)
    return total / count, dhidden, dweight.to(weight.dtype)


def _matmul_into(out: torch.Tensor, a: torch.Tensor, b: torch.Tensor, accumulate: bool = False) -> None:
    """out (+)= a @ b through add_matmul.gemm_into, with cuBLAS writing fp32 from 16-bit operands unless
    _CUDA_OUT_DTYPE is off (an A/B switch). Rounded to 16 bits instead, then cast and added, the product cost a copy
    and an add over ``out``: 0.3 ms per block of rows at the 130M shape (3.7 ms of an H100 training step)."""
    gemm_into(out, a, b, accumulate, out_dtype_gemm=_CUDA_OUT_DTYPE)


@_linear_cross_entropy.register_fake
def _(hidden, weight, labels, ignore_index, matmul_dtype, compute_grad):
    dtype = matmul_dtype or torch.promote_types(hidden.dtype, weight.dtype)
    loss = hidden.new_empty((), dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    if not compute_grad:
        return loss, hidden.new_empty(0), weight.new_empty(0)
    return loss, torch.empty_like(hidden), torch.empty_like(weight)


def _setup_context(ctx, inputs, output):
    _, dhidden, dweight = output
    ctx.compute_grad = inputs[5]
    ctx.save_for_backward(dhidden, dweight)


def _backward(ctx, dloss, _dh, _dw):
    if not ctx.compute_grad:
        raise RuntimeError("linear_cross_entropy was called without gradients (no input required grad)")
    dhidden, dweight = ctx.saved_tensors
    return dhidden * dloss.to(dhidden.dtype), dweight * dloss.to(dweight.dtype), None, None, None, None


_linear_cross_entropy.register_autograd(_backward, setup_context=_setup_context)
