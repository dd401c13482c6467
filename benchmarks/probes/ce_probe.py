"""linear_cross_entropy at the 130M training step's shape (16384 rows, d 768, vocab 50280, fp32 hidden and weight,
bf16 autocast), the op's one call (loss and both gradients), CUDA-graph replay medians (benchmarks._common.graph_ms):

1. the gradient matmuls writing fp32 directly (cross_entropy._CUDA_OUT_DTYPE, cuBLAS out_dtype) against a bf16
   product cast and added, over block sizes (cross_entropy._CUDA_BLOCK_BYTES), each with the largest error of the
   loss, d hidden and d weight against float64 math on the same bf16-rounded operands (in units of the
   reference's largest magnitude);
2. the loss/gradient kernel (cross_entropy_triton._ce_rows_kernel) alone on one block of bf16 logits, over
   BLOCK_V, warps, its two log-sum-exp schemes (SEPARATE_MAX) and its vector width (VEC: 1, as before session 18,
   or 8 elements), each with its copy floors (two reads and one write of the block; one read and one write) and
   its largest loss and gradient differences from ce_rows' default.

    python -m benchmarks.probes.ce_probe --out $OUT/ce_probe.json [--parts matmul rows]
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import floor_ms, graph_ms, write_results
from mamba_compile.ops import cross_entropy as ce
from mamba_compile.ops import cross_entropy_triton as kernels

ROWS, D, VOCAB = 16384, 768, 50280


def _inputs():
    g = torch.Generator(device="cuda").manual_seed(0)
    hidden = torch.randn(ROWS, D, device="cuda", generator=g)
    weight = torch.randn(VOCAB, D, device="cuda", generator=g) * 0.02
    labels = torch.randint(0, VOCAB, (ROWS,), device="cuda", generator=g)
    labels[::97] = -100  # some rows without a target
    return hidden, weight, labels


def _reference(hidden, weight, labels):
    """Loss and gradients in float64 from the bf16-rounded operands the autocast matmuls see, a block of rows at a
    time (6.6 GB of fp64 logits at once otherwise)."""
    h, w = hidden.bfloat16().double(), weight.bfloat16().double()
    valid = labels != -100
    count = valid.sum()
    loss = torch.zeros((), device="cuda", dtype=torch.float64)
    dh, dw = torch.empty_like(h), torch.zeros_like(w)
    for s in range(0, ROWS, 2048):
        logits = h[s : s + 2048] @ w.T
        lab, ok = labels[s : s + 2048], valid[s : s + 2048]
        lse = logits.logsumexp(-1)
        target = torch.where(ok, lab, 0)
        loss += ((lse - logits.gather(1, target[:, None]).squeeze(1)) * ok).sum()
        grad = (logits - lse[:, None]).exp_()
        grad[torch.arange(len(lab), device="cuda"), target] -= 1
        grad *= (ok / count)[:, None]
        dh[s : s + 2048] = grad @ w
        dw += grad.T @ h[s : s + 2048]
    return loss / count, dh, dw


def _rel(got, want):
    return f"{((got.double() - want).abs().max() / want.abs().max()).item():.2e}"


def matmul_variants(rows_out):
    hidden, weight, labels = _inputs()
    want = _reference(hidden, weight, labels)
    default_block, default_flag = ce._CUDA_BLOCK_BYTES, ce._CUDA_OUT_DTYPE

    def step():  # the op itself: its forward computes the gradients, its backward only scales them
        return torch.ops.mamba_compile.linear_cross_entropy(hidden, weight, labels, -100, torch.bfloat16, True)

    for block, flag in ((1 << 26, False), (1 << 26, True), (1 << 27, True), (3 << 26, True), (1 << 28, True),
                        (1 << 29, True), (1 << 27, True)):
        ce._CUDA_BLOCK_BYTES, ce._CUDA_OUT_DTYPE = 2 * block, flag  # block: bf16 logits
        loss, dh, dw = step()
        errs = dict(loss=_rel(loss, want[0]), dhidden=_rel(dh, want[1]), dweight=_rel(dw, want[2]))
        del loss, dh, dw
        torch.cuda.reset_peak_memory_stats()
        ms = graph_ms(step)
        rows_out.append(dict(part="matmul", block_rows=max(1, block // VOCAB), out_dtype=flag, ms=round(ms, 3),
                             peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2), **errs))
        print(rows_out[-1], flush=True)
    ce._CUDA_BLOCK_BYTES, ce._CUDA_OUT_DTYPE = default_block, default_flag


def rows_variants(rows_out):
    g = torch.Generator(device="cuda").manual_seed(2)
    rows = ce._CUDA_BLOCK_BYTES // 2 // VOCAB
    logits = (torch.randn(rows, VOCAB, device="cuda", generator=g) * 3).bfloat16()
    labels = torch.randint(0, VOCAB, (rows,), device="cuda", generator=g)
    inv = torch.tensor([1.0 / rows], device="cuda")
    want_grad = logits.clone()
    loss_want = kernels.ce_rows(want_grad, labels, inv, -100, True)
    floor = floor_ms(3 * logits.numel() * logits.element_size())
    floor1 = floor_ms(2 * logits.numel() * logits.element_size())
    work = torch.empty_like(logits)
    vec = kernels._vector_width(logits)
    configs = [(bv, w, sep, v) for sep in (False, True) for v in (1, vec)
               for bv, w in ((4096, 8), (2048, 8), (4096, 4), (8192, 8), (8192, 16), (2048, 4), (1024, 4))]
    for block_v, warps, separate, v in configs + [(4096, 8, True, 1), (4096, 8, True, vec)]:
        loss = torch.empty(rows, device="cuda", dtype=torch.float32)

        def run(block_v=block_v, warps=warps, separate=separate, loss=loss, v=v):
            work.copy_(logits)
            kernels._ce_rows_kernel[(rows,)](work, labels, inv, loss, VOCAB, work.stride(0), labels.stride(0), -100,
                                             COMPUTE_GRAD=True, BLOCK_V=block_v, SEPARATE_MAX=separate, VEC=v,
                                             num_warps=warps)

        copy_ms = graph_ms(lambda: work.copy_(logits))
        ms = graph_ms(run) - copy_ms
        run()
        rows_out.append(dict(part="rows", block_v=block_v, warps=warps, separate_max=separate, vec=v,
                             ms=round(ms, 4), floor_ratio=round(ms / floor, 2), one_read_ratio=round(ms / floor1, 2),
                             loss_err=f"{(loss - loss_want).abs().max().item():.1e}",
                             grad_err=f"{(work.float() - want_grad.float()).abs().max().item():.1e}"))
        print(rows_out[-1], flush=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--parts", nargs="+", default=["matmul", "rows"])
    args = p.parse_args()
    rows_out = []
    print(torch.cuda.get_device_name(), torch.__version__)
    if "matmul" in args.parts:
        matmul_variants(rows_out)
    if "rows" in args.parts:
        rows_variants(rows_out)
    write_results(rows_out, args.out)


if __name__ == "__main__":
    main()
