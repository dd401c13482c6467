"""A/B of a training step (bench_model.bench_train, regional compile), one process, variants in turn: "new" = the
current defaults; "scan-old" = the selective-scan forward as before session 6 (blocks (32, 8, 2), no L1 prefetch of
B/C rows), "scan-bl8" / "scan-nopf" = only one of the two changes undone; "ce-torch" = linear_cross_entropy's torch
passes on CUDA instead of its Triton kernel; "proj-old" = Mamba-1's x_proj and dt_proj batched over (b, channels, l)
(mixers.CHANNEL_MAJOR_PROJ off); "split-old" = Mamba-2's in-projection as one matmul (mixers.SPLIT_DT_PROJ off);
"xbc-split" / "xbc-joined" = Mamba-2's z and xBC columns as two matmuls / one (mixers.SPLIT_XBC_PROJ on / off);
"ce-cast" = linear_cross_entropy's gradient matmuls rounded to bf16, then cast and added
(cross_entropy._CUDA_OUT_DTYPE off); "ce-b26" / "ce-b27" = its CUDA blocks of 2^26 / 2^27 bf16 logits
(cross_entropy._CUDA_BLOCK_BYTES); "ce-separate-max" / "ce-running-max" = its kernel's log-sum-exp as a max pass then
a sum pass / one pass (cross_entropy_triton._SEPARATE_MAX on / off); "conv-rows" / "conv-rows-bwd" = the row kernels
for channel-last conv input (Mamba-2's xBC) forward and backward / backward only (causal_conv1d_triton._FWD_ROWS,
_BWD_ROWS), "conv-general" = neither; "ops-opaque" = every triton_op left whole in the compiled graphs
(torch._functorch.config.decompose_custom_triton_ops off), so their kernels run as Triton's JIT builds them rather than
as Inductor does (session 16: Inductor's build of the scan forward took 0.323 ms against 0.282 for the JIT's, on the
same tensors, because Inductor ran another ptxas: see selective_scan_triton.fwd_prefetch); "proj-acc" = Mamba-1's
projections through mixers._InProjXZ / _XDtProj, whose backward sums the gradients meeting at x and at the hidden
states inside a matmul (mixers.ACCUMULATE_IN_PROJ_GRADS and ACCUMULATE_X_PROJ_GRADS on; "proj-acc-in" /
"proj-acc-x" only one of them; "proj-sum" neither); the conv_rows column counts the calls that
took the row kernels while the variant traced and ran (of those where its flags let them be considered);
"ce-scalar" = the cross-entropy kernel's loads and stores one element wide (cross_entropy_triton._VECTORIZE off, as
before session 18); "mm-autotune" = Inductor's GEMM autotuning (torch._inductor.config.max_autotune_gemm: cuBLAS
against its Triton templates, per shape, at compile time), "mm-autotune-cd" = that and coordinate-descent tuning of
the generated kernels (coordinate_descent_tuning); "combo" = Inductor's combo kernels
(torch._inductor.config.combo_kernels: independent small kernels of a graph, the weight casts and bias-gradient sums,
fused into one launch), "proj-acc-combo" = that and proj-acc; "bc8" / "bc4" = the scan backward's varying dB/dC
atomics spread over 8 / 4 copies instead of selective_scan_triton._BWD_BC_COPIES (fewer to zero-fill and sum);
"wgrad-fp32" / "wgrad-cast" = Mamba-1's projection weights cast to bf16 inside its autograd functions, their
gradients written in fp32 by the GEMMs / cast to bf16 before them, the gradients taken in bf16 and cast back
(mixers.FP32_WEIGHT_GRADS on / off); "emb-sort" = the embedding's gradient from nn.Embedding's sort-based backward
(model.EMBEDDING_INDEX_SELECT off); "both-old" = emb-sort with wgrad-cast; "pdl" = Inductor's programmatic
dependent launch for the kernels it generates (torch._inductor.config.triton.enable_pdl: each waits for the kernel
before it only where it reads what that one wrote, and lets the next one launch after its loads; Hopper);
"conv-pairs" = Mamba-1's conv backward by the pair kernel rather than the run-per-thread one
(causal_conv1d_triton._BWD_RUNS off); "scan-nolanes" = the scan forward without its lane-shuffle columns, so on its
generic blocks (selective_scan_triton._FWD_LANES off; the scan-old/bl8/nopf/pf variants are off the lanes too);
"ssd-recompute" = Mamba-2's SSD backward recomputing the chunk states rather than taking the forward's (ssd.KEEP_STATES
off).
--graph replays each step from one CUDA graph (bench_model's --train-graph on).
(Session 4 A/B'd the conv blocks and the scan backward kernels this way.)

    python -m benchmarks.probes.train_ab --out $OUT/train_ab.json [--arch mamba1 mamba2] [--mamba1 new scan-old ...]
        [--graph]
"""

from __future__ import annotations

import argparse

import torch
import torch._functorch.config
import torch._inductor.config

from benchmarks._common import fresh_compiles, write_results
from benchmarks.bench_model import bench_train
from mamba_compile.models import mixers
from mamba_compile.models import model as lm
from mamba_compile.ops import causal_conv1d_triton as conv
from mamba_compile.ops import cross_entropy as ce
from mamba_compile.ops import cross_entropy_triton as ce_triton
from mamba_compile.ops import selective_scan_triton as scan
from mamba_compile.ops import ssd

NEW_FWD_BLOCKS = scan.fwd_block_sizes
DEFAULT_ROWS = (conv._FWD_ROWS, conv._BWD_ROWS)
DEFAULT_XBC_SPLIT = mixers.SPLIT_XBC_PROJ
DEFAULT_PROJ_ACC = (mixers.ACCUMULATE_IN_PROJ_GRADS, mixers.ACCUMULATE_X_PROJ_GRADS)
DEFAULT_CE_BLOCK = ce._CUDA_BLOCK_BYTES
DEFAULT_SEPARATE_MAX = ce_triton._SEPARATE_MAX
DEFAULT_BC_COPIES = scan._BWD_BC_COPIES
DEFAULT_FP32_WGRAD = mixers.FP32_WEIGHT_GRADS
ROWS_APPLY = conv._rows_apply
ROWS_TAKEN = []  # _rows_apply's answers while a variant traced: whether the conv row kernels are in its graphs


def _rows_apply_recorded(*args):
    ROWS_TAKEN.append(ROWS_APPLY(*args))
    return ROWS_TAKEN[-1]


def _set(variant: str) -> None:
    # "scan-old": no prefetch and BLOCK_L 8; "scan-bl8": BLOCK_L 8 with the prefetch; "scan-nopf": the prefetch off;
    # "scan-pf": on (otherwise selective_scan_triton.fwd_prefetch decides)
    scan._FWD_PREFETCH = {"scan-old": False, "scan-nopf": False, "scan-bl8": True, "scan-pf": True}.get(variant)
    bl8 = variant in ("scan-old", "scan-bl8")
    scan.fwd_block_sizes = (lambda dim, dstate, dpg, lanes=False: NEW_FWD_BLOCKS(dim, dstate, dpg)[:1] + (8, 2)) \
        if bl8 else NEW_FWD_BLOCKS
    scan._FWD_LANES = variant not in ("scan-nolanes", "scan-old", "scan-bl8", "scan-nopf", "scan-pf")
    ce._CUDA_KERNEL = variant != "ce-torch"
    ce._CUDA_OUT_DTYPE = variant != "ce-cast"
    ce_triton._SEPARATE_MAX = {"ce-separate-max": True, "ce-running-max": False}.get(variant, DEFAULT_SEPARATE_MAX)
    ce._CUDA_BLOCK_BYTES = {"ce-b26": 1 << 27, "ce-b27": 1 << 28}.get(variant, DEFAULT_CE_BLOCK)
    mixers.CHANNEL_MAJOR_PROJ = variant != "proj-old"
    mixers.SPLIT_DT_PROJ = variant != "split-old"
    mixers.SPLIT_XBC_PROJ = {"xbc-split": True, "xbc-joined": False}.get(variant, DEFAULT_XBC_SPLIT)
    mixers.ACCUMULATE_IN_PROJ_GRADS, mixers.ACCUMULATE_X_PROJ_GRADS = {
        "proj-acc": (True, True), "proj-acc-in": (True, False), "proj-acc-x": (False, True),
        "proj-sum": (False, False), "proj-acc-combo": (True, True)}.get(variant, DEFAULT_PROJ_ACC)
    conv._FWD_ROWS = {"conv-rows": True, "conv-general": False}.get(variant, DEFAULT_ROWS[0])
    conv._BWD_ROWS = {"conv-rows": True, "conv-rows-bwd": True, "conv-general": False}.get(variant, DEFAULT_ROWS[1])
    torch._functorch.config.decompose_custom_triton_ops = variant != "ops-opaque"
    ce_triton._VECTORIZE = variant != "ce-scalar"
    torch._inductor.config.max_autotune_gemm = variant in ("mm-autotune", "mm-autotune-cd")
    torch._inductor.config.coordinate_descent_tuning = variant == "mm-autotune-cd"
    torch._inductor.config.combo_kernels = variant in ("combo", "proj-acc-combo")
    scan._BWD_BC_COPIES = {"bc8": 8, "bc4": 4}.get(variant, DEFAULT_BC_COPIES)
    mixers.FP32_WEIGHT_GRADS = {"wgrad-fp32": True, "wgrad-cast": False, "both-old": False}.get(variant,
                                                                                               DEFAULT_FP32_WGRAD)
    lm.EMBEDDING_INDEX_SELECT = variant not in ("emb-sort", "both-old")
    torch._inductor.config.triton.enable_pdl = variant == "pdl"
    conv._BWD_RUNS = variant != "conv-pairs"
    ssd.KEEP_STATES = variant != "ssd-recompute"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--arch", nargs="+", default=["mamba1", "mamba2"])
    p.add_argument("--mamba1", nargs="+", default=["new", "scan-old", "ce-torch", "new"])
    p.add_argument("--mamba2", nargs="+", default=["new", "ce-torch", "new"])
    p.add_argument("--graph", action="store_true", help="the step replayed from one CUDA graph")
    p.add_argument("--discard-first", action="store_true",
                   help="run each arch's first variant once more before the timed ones and drop it: in session 18 "
                        "the first variant of a process ran 0.5-0.7 ms slower than its repeats (Mamba-1, graphed)")
    args = p.parse_args()
    fresh_compiles()  # without it, conv-general and conv-rows ran the same kernels (70.0-70.2 ms both)
    rows = []
    for arch in args.arch:
        variants = getattr(args, arch)
        for i, variant in enumerate(variants[:1] * args.discard_first + variants):
            _set(variant)
            ROWS_TAKEN.clear()
            conv._rows_apply = _rows_apply_recorded
            r = bench_train(arch, regional=True, graph=args.graph)
            conv._rows_apply = ROWS_APPLY
            rows.append(dict(arch=arch, variant=variant, graph=args.graph,
                             conv_rows=f"{sum(ROWS_TAKEN)}/{len(ROWS_TAKEN)} calls", ms=r["ms"],
                             quartiles=r["step_ms_q1_q3"], peak_gib=r["peak_gib"],
                             compile_s=round(r["compile_s"], 1)))
            if args.discard_first and i == 0:
                print(f"discarded (first of the process): {rows.pop()}", flush=True)
            else:
                print(rows[-1], flush=True)
            torch._dynamo.reset()
            torch.cuda.empty_cache()
    _set("new")
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
