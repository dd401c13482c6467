"""Triton kernels of the Mamba-1 selective scan (shapes and math in ``selective_scan``'s docstring).

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t h_t + D u_t,   out_t = y_t silu(z_t)

Forward: sequential in time. One program (one to four warps) owns BLOCK_D channels of one batch row and all
dstate states, a [BLOCK_N, BLOCK_D] fp32 tile in registers, and walks time one step at a time: a block
of BLOCK_L steps of u/delta/z is a [BLOCK_L, BLOCK_D] tile whose time axis lies inside each thread,
and a statically unrolled loop takes one column per step, so a step costs per state one exp2 (the floor:
b*d*l*n exponentials), two multiplies and two FMAs, with no scan across threads. At 16 states with time-contiguous
inputs on CUDA (the Mamba-1 case) a warp holds 8 channels, 4 states per thread, and two helpers in inline PTX move a
step's dt and dt u to the threads of its channel with one shuffle each (_lane_column) and sum y over a channel's
threads once a block (_lane_reduce_scatter), relying on the register layout Triton 3.6 gives these tiles (see
fwd_block_sizes: 0.262 -> 0.203 ms at b8 d1536 l2048 n16, session 22). Elsewhere the columns and sums are plain
Triton reductions, and a warp holds 16 channels, 8 states per thread.
Each step is a short dependent chain, so loads are pipelined by hand: u/delta/z one block ahead,
B/C rows ROWS_AHEAD (4 or 8) steps ahead (without this, every step waited a full L1/L2 round trip:
0.85 ms instead of 0.42 ms at b8 d1536 l2048 n16 on an H100, BLOCK_D 16, one warp), and the rows of the
block after next are prefetched into L1 (PREFETCH): ptxas, at the register limit, issues the row loads late
in the block before their use and copies them into place at the loop's back edge, where the copies waited
for L2 (ncu source counters, session 6: a quarter of the stall samples on two such copies). Input-dependent
B/C are copied time-major, fp32, zero-padded to (batch, ngroups, seqlen_pad + 8, BLOCK_N) by one small
kernel (both in one launch since session 11: the forward launcher 0.2673 -> 0.2656 ms), so a step's B_t is one
unmasked vector load. The forward saves the state entering every STATE_CHUNK steps (the backward's BLOCK_L), then
the last state, by a store predicated on the block's position rather than one behind a branch, which split the
loop body for ptxas (the launcher took 0.307 ms instead of 0.283 at b8 d1536 l2048 n16, 1.245-1.263 instead of
1.151 at b2 d5120 l8192). The launcher without saving takes 0.267. A loop over state chunks around the loop over
blocks, storing once per chunk without a predicate, was tried in session 11 and left untimed: in local SASS its
inner loop gained 32-34 barriers and as many shared-memory loads per block (layout conversions Triton added for
the nested loop), with or without the store.
Optionally (SEG, off by default: slower at both timed shapes, see below) time is cut into segments run by separate
programs, for more warps in flight: a first launch runs every segment but the last from a zero state
(no C, no output) and writes its end state and its sum of dt (the segment's decay is exp(A sum dt), one
exp per state); the second carries the true state across the earlier segments and runs its own in full.
(Measured alternatives, same shape: a time-parallel forward, one tl.associative_scan along a long time
tile per state, 0.54 ms at best: Triton's scan costs ~10 instructions per element against the 4 of a
step here; a chunked scan over [BLOCK_D, N, BLOCK_L] tiles, 2.24 ms.)

Backward: parallel in time (``_selective_scan_bwd_kernel``). A program owns BLOCK_D channels of one batch
row and walks tiles of BLOCK_L steps in reverse, each starting from a state the forward saved; inside a tile
the states are taken one at a time, and each is two scans along time (``tl.associative_scan``): the tile's
states h recomputed forward, and the state gradient g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} backward
(dt_{t+1} comes from a second, shifted load of delta). The saved state enters the forward scan as its first
step's input and the g carried from the next tile the reverse scan as its last step's, so neither scan's
cumulative decay is used; with b_t = dt_t u_t B_t, exp(dt_t A) h_{t-1} = h_t - b_t exactly, so no shifted
state is needed. The reverse recurrence runs as a forward scan in reversed time (dt_{t+1} loaded reversed,
C_n dy and the result flipped by ``tl.gather``, one warp shuffle per element each), because Triton 3.6
lowers a reverse scan to five SHFL.BFLY per value and element on each of its two inputs and its output
(3.9: one). The carried g goes through two small fp32 buffers alternating per tile (stored by the lanes
that hold g's first column, read back as one scalar per channel and state, a barrier between tiles). dB/dC
rows of input-dependent B/C are sums over channels: reduced over the program's channels in registers, then
added with ``tl.atomic_add`` into fp32 (batch, ngroups, dstate, seqlen) buffers through a [NPART, 2, 4]
view that is the atomics' own 4-per-thread layout (the summation order varies from run to run: fp32
rounding-level differences). The programs spread those adds over _BWD_BC_COPIES copies of the buffers (one
zero-filled allocation for dB and dC): one buffer had every program of a batch row adding into the same addresses
at once (0.25 ms of 1.67 at b8 d1536 l2048 n16 on an H100). Per-channel sums over time are per-lane partial sums
(time inside a thread) added to in memory for dA and time-invariant dB/dC, summed across the lanes after the loop
(per batch row), and register sums written per batch row for dD and d delta_bias. One more launch
(``_bwd_sums_kernel``) then sums over the batch rows and over the dB/dC copies, into tensors of the inputs' dtypes.
Tiles kept for after the loop over states are int32 offsets from scalar row pointers, not 64-bit pointers. Without
a gradient for the last state (``dlast_state`` None) the carried g starts at zero, with no zero-filled tensor.

Session 11 (H100, CUDA graphs, b8 d1536 l2048 n16): the launcher's epilogue took 0.08 ms of 1.42 in torch ops
(torch.profiler): a strided sum over the (batch, dim, dstate, NPART + 1) partials of dA alone 0.048 ms, five more
reductions and casts 0.03. The partials are now summed across lanes in the kernel and one launch does the rest:
backward launcher 1.424 -> 1.380 ms in the same run; the op's forward+backward 1.710-1.714 (session 10) -> 1.644-1.661
with 8 copies, 1.614-1.647 with 16 (see _BWD_BC_COPIES). ncu source counters on the backward then put 13% of the
stall samples on the two adds of the dA partials' read-modify-write and 5% on the uses of the saved state and the
carried g, each loaded in the state that uses it. Measured and not kept: the saved state and carried g of state
n + 1 loaded during state n (stack 56 -> 80 B): backward launcher 1.400 against 1.380 ms; dA (and time-invariant
dB/dC) summed across lanes per tile and stored, then atomically added to by later tiles (no read; one thread per
address, so the same sums from run to run): 1.378 against 1.372 at l2048, 4.281 against 4.394 at b2 d5120 l8192
(better there only).

Session 6, measured and not kept (scan_bwd_probe): the per-lane partial sums are read right before their add,
and ncu puts a tenth of the stall samples on those two adds (an L2 round trip each); loading them, and the
carried g, at the start of the state made the backward 1.97 ms against 1.72-1.74 (more spills), and summing across
lanes with an atomic add per channel instead (no read) 1.69-1.75 against 1.69-1.72: other warps already hide
those waits. Session 10 (scan_variants, backward launcher as a CUDA graph, ms at b8 d1536 l2048 / b2 d5120 l8192
n16; the default 1.421-1.427 / 4.438-4.464), none kept:
- the reverse scan's decays taken from the forward scan's by a tl.gather (one shuffle per element) instead of a
  second exp2 of a shifted dt tile: 1.437 / 4.435. It freed a tile's registers (stack 48 -> 8 B) and cut the
  instructions per tile by 17% (2222 -> 1846, local SASS): the kernel is not bound by its instruction count;
- the same at (1, 256, 1) (188 registers instead of 236, so 10 warps per SM): 2.482 / 7.745 (twice the atomics);
- an L2 prefetch of the next tile's u, delta, dout, z, B/C rows and saved states: 1.490 / 4.684 (more spills);
- dB/dC rows padded to whole tiles so that the atomics take no mask (ptxas puts each masked atomic behind a
  branch), and the partials' first-tile load selected rather than predicated: 1.460 / 4.500;
- two states per iteration of the loop over states, as two independent chains for ptxas to interleave: 2.055 /
  6.585 (1.432 / 4.452 in the same run). 91 spill loads and stores per iteration (stack 432 B), against 18 in the
  whole kernel at one state.

This kernel replaced (session 4) a first parallel backward with the same tiles, formulas and saved-state
interval that used the scans' cumulative decays and Triton's reverse scan, and kept the carried g and the
per-channel sums in [BLOCK_D, BLOCK_N] register tiles (a cross-lane sum and a select per state). H100,
b8 d1536 l2048 n16 bf16 (benchmarks/probes/scan_bwd_probe.py): backward launcher 1.793 ms against 2.108 for
the first kernel, op forward+backward as a CUDA graph 1.934 against 2.405 (reference 2.463); a second run of
this kernel alone: 1.727 / 2.060. With Triton's reverse scan in place of the gathers (``gather_flip=False``)
1.785 / 2.006 and 1.817 / 1.972 in the same two runs: no difference beyond the runs' spread, so the gathers
(fewer instructions) stay. Gradients
within 1.2e-3 of the first kernel's and, on a 2 x 256 slice, as close to the fp32 CPU path (3.6e-3 worst).
Local SASS for sm_90 with triton 3.6 (that shape's specialisation, the loop over states at (2, 256, 1), 16
steps per thread): 37.9 instructions per state and step against 77.5 for the first kernel (SHFL 4.5 against
25.4, MUFU 2 in both, no local memory in the loop), 255 registers in both, 40 B stack against 432; 50.1 with
Triton's reverse scan; 44.3 against 83.2 counting the per-tile code; at (1, 256, 1) 42.3, 231 registers, no
stack. Triton 3.9, whose layout choices differ, gives 41.6 against 61.4. Earlier still, a sequential
backward (stepping in reverse with the tile's states in registers) measured 4.4-4.9 ms against 2.1 for the
first parallel kernel.

Measured on an H100 (torch 2.11, triton 3.6), b8 d1536 l2048 n16 bf16 with D, z, delta_bias, softplus
(reference CUDA kernel: forward 0.452 ms, forward+backward 2.463). Session 6: forward kernel at the default
(32, 16, 2), rows 8 ahead, L1 prefetch 0.280-0.282 ms (0.274 for the op as a CUDA graph, B/C copies included),
against 0.294-0.296 for (32, 8, 2) without the prefetch; an L2 prefetch of u/delta/z 64 steps ahead as well made
it 0.390 (one prefetch per element). Session 10 (benchmarks/probes/scan_variants.py): one prefetch per channel and
tensor, 1 or 2 blocks ahead, took the launcher saving states from 0.307 to 0.293 ms while its loop still branched
around the state store; with the store predicated (0.283 without the prefetch) the prefetch cost time everywhere:
0.293 against 0.283 saving states, 0.297 against 0.269 without, 1.195 / 1.221 against 1.151 / 1.043 at b2 d5120
l8192 (outputs bit for bit equal). Not kept. The prefetch moved the stalls to the u/delta/z tiles' back-edge
copies (DRAM), and the kernel still issues an instruction every 3 cycles per warp (1.46 warps per scheduler,
43% of issue slots used). Session 3,
forward kernel at (32, 8, 2) with B/C rows 8 ahead: 0.294 ms, plus 0.008 for the B/C copies (4 ahead: 0.395;
benchmarks/probes/scan_sweep.py --scan-only). Time segments with 8 ahead: 0.388 (256), 0.523 (512), 0.536
(1024), so they stay off. Block shapes (4 ahead, through the op): (16, 8, 1) 0.413, (32, 8, 1) 0.461,
(64, 8, 2) 0.474, (32, 16, 1) 0.580. (32, 8, 1) and (64, 8, 2) put a channel's 16 states and its time block
in one thread (8.2 SASS instructions per state and step against 9.4 for (32, 8, 2), no shuffles) but give 384
warps for the 528 schedulers: fewer instructions, slower. Forward+backward through the op 2.371 ms (with
the first parallel backward). b2 d5120 l8192: forward 1.133 ms (4 ahead 1.557; reference 1.861),
forward+backward 7.917 (first parallel backward; reference 8.472).
Both kernels are latency-bound, far from the exp2 floor (b*d*l*n exponentials, ~0.11 ms at the first shape)
and from their issue bound (~0.11 ms for the forward's instructions spread over all schedulers). The eager op
costs 0.2-0.4 ms of host time per call on the GPU machine (0.08 ms for the bare kernel launches), as much as
the forward's GPU time: time it as a CUDA graph.

Block sizes come from a shape heuristic, never from seqlen, which is symbolic under torch.compile (no
autotuning); the launch functions take ``wrap``: True inside the ops (``wrap_triton``, so tracing sees
the kernels), False for direct launches in tests (the Triton interpreter on CPU).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from ._triton import cdiv, launcher, next_pow2, ptxas_major, tl, triton

@triton.jit
def _lg2_approx(x):
    return tl.inline_asm_elementwise("lg2.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _rcp_approx(x):
    return tl.inline_asm_elementwise("rcp.approx.ftz.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _softplus(x, FAST_MATH: tl.constexpr):
    # torch's softplus with threshold 20: x itself where exp would not change it in fp32. FAST_MATH
    # (CUDA) uses the MUFU lg2/ex2 approximations (~2^-22 relative error) instead of libdevice's log,
    # a ~15-instruction polynomial; the interpreter cannot run PTX, so it takes the plain path.
    if FAST_MATH:
        sp = _lg2_approx(1.0 + tl.exp2(x * 1.4426950408889634)) * 0.6931471805599453
    else:
        sp = tl.log(1.0 + tl.exp(x))
    return tl.where(x <= 20.0, sp, x)


@triton.jit
def _sigmoid(x, FAST_MATH: tl.constexpr):
    if FAST_MATH:  # one ex2 and one rcp instead of an IEEE division
        sig = _rcp_approx(1.0 + tl.exp2(-x * 1.4426950408889634))
    else:
        sig = tl.sigmoid(x)
    return sig


@triton.jit
def _prefetch_l1(ptrs):
    """Asks L1 for the lines at ptrs without waiting for them (PTX prefetch: no register receives the data, so
    nothing stalls on it; CUDA only). Returns zeros, which the caller must use (in an address, say): the asm is
    declared pure, since torch's analysis of which kernel arguments are written gives up on impure inline asm and
    then treats every argument as written (compiled graphs would copy them all), and a pure op whose result is
    unused would be deleted."""
    return tl.inline_asm_elementwise("prefetch.global.L1 [$1]; mov.u32 $0, 0;", "=r,l", [ptrs], dtype=tl.int32,
                                     is_pure=True, pack=1)


@triton.jit
def _column(tile, sel):
    """Row j of a [BLOCK_L, BLOCK_D] tile as a [BLOCK_D] vector (sel = offs_t == j, j static). The time
    axis lives inside each thread, so with j unrolled this folds to register moves."""
    return tl.sum(tl.where(sel, tile, -0.0), axis=0)


# The lane kernels' register layout. With u, delta and z contiguous in time, Triton 3.6 lays out the forward's [16,
# BLOCK_D] tiles (16 steps or 16 states by 8 channels a warp) with four values along the first axis in each thread,
# four threads along it and eight along the channels: lane = i + 4 d, register r holds row 4 i + r. The state tile and
# the step tiles share it, so row j of a step tile sits in register j % 4 of lanes i = j // 4. The two helpers below
# move data between lanes by that map with inline PTX (warp shuffles), which Triton cannot express: a step's column in
# one shuffle instead of a two-round butterfly sum, and y's sums over a channel's four lanes once a block instead of
# once a step. They are correct only under that layout: lane_layout_fits and _lanes_in_blocks say where it holds, and
# test_cuda_fwd_lane_columns_match_column_sums checks it on the GPU against the generic sums.


def _lane_column_asm(reg: int) -> str:
    # $4..$7: this thread's four registers of the tile; $8: the row group j // 4. Every output: the source register
    # of lane (lane & ~3) | (j // 4), the thread of the same channel that holds row j.
    return ("{ .reg .b32 l, t; mov.u32 l, %laneid; and.b32 l, l, 0xfffffffc; or.b32 l, l, $8; "
            f"shfl.sync.idx.b32 t, ${4 + reg}, l, 0x1f, 0xffffffff; mov.b32 $0, t; mov.b32 $1, t; mov.b32 $2, t; "
            "mov.b32 $3, t; }")


_LANE_COLUMN_ASM0 = tl.constexpr(_lane_column_asm(0))
_LANE_COLUMN_ASM1 = tl.constexpr(_lane_column_asm(1))
_LANE_COLUMN_ASM2 = tl.constexpr(_lane_column_asm(2))
_LANE_COLUMN_ASM3 = tl.constexpr(_lane_column_asm(3))
_LANE_COLUMN_CONS = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 8))


@triton.jit
def _lane_column(tile, j: tl.constexpr):
    """Row j of a [16, BLOCK_D] step tile, broadcast over the tile's first axis (so shaped like the state tile): one
    warp shuffle from the thread that holds it (layout above; CUDA only)."""
    group = tl.full(tile.shape, j // 4, tl.int32)
    if j % 4 == 0:
        out = tl.inline_asm_elementwise(_LANE_COLUMN_ASM0, _LANE_COLUMN_CONS, [tile, group], dtype=tl.float32,
                                        is_pure=True, pack=4)
    elif j % 4 == 1:
        out = tl.inline_asm_elementwise(_LANE_COLUMN_ASM1, _LANE_COLUMN_CONS, [tile, group], dtype=tl.float32,
                                        is_pure=True, pack=4)
    elif j % 4 == 2:
        out = tl.inline_asm_elementwise(_LANE_COLUMN_ASM2, _LANE_COLUMN_CONS, [tile, group], dtype=tl.float32,
                                        is_pure=True, pack=4)
    else:
        out = tl.inline_asm_elementwise(_LANE_COLUMN_ASM3, _LANE_COLUMN_CONS, [tile, group], dtype=tl.float32,
                                        is_pure=True, pack=4)
    return out


def _reduce_scatter_asm() -> str:
    """$4 + 4 m + k: this thread's partial sum (its four states) of step 4 m + k of the block; $0..$3: the sums over
    the channel's four threads of steps 4 i + k, i = lane & 3, the rows this thread holds in the step tiles. Two
    butterfly rounds, each halving what is kept: across lane bit 1 (keep step groups 2 b1 and 2 b1 + 1, send the
    other two), then across bit 0. 12 shuffles and 12 adds a block, against 2 and 2 a step for a per-step sum."""
    lines = ["{", ".reg .pred b1, b0;", ".reg .b32 l, s<8>, k<8>, r<8>, q<4>, w<4>, v<4>;", "mov.u32 l, %laneid;",
             "and.b32 l, l, 3;", "setp.ge.u32 b1, l, 2;", "and.b32 l, l, 1;", "setp.ne.u32 b0, l, 0;"]
    for g in range(2):
        for k in range(4):
            i = 4 * g + k
            lo, hi = f"${4 + 4 * g + k}", f"${12 + 4 * g + k}"
            lines += [f"selp.b32 s{i}, {lo}, {hi}, b1;", f"selp.b32 k{i}, {hi}, {lo}, b1;",
                      f"shfl.sync.bfly.b32 r{i}, s{i}, 2, 0x1f, 0xffffffff;", f"add.f32 k{i}, k{i}, r{i};"]
    for k in range(4):
        lines += [f"selp.b32 q{k}, k{k}, k{4 + k}, b0;", f"selp.b32 w{k}, k{4 + k}, k{k}, b0;",
                  f"shfl.sync.bfly.b32 v{k}, q{k}, 1, 0x1f, 0xffffffff;", f"add.f32 ${k}, w{k}, v{k};"]
    return " ".join(lines + ["}"])


_REDUCE_SCATTER_ASM = tl.constexpr(_reduce_scatter_asm())
_REDUCE_SCATTER_CONS = tl.constexpr("=r,=r,=r,=r," + ",".join(["r"] * 16))


@triton.jit
def _lane_reduce_scatter(T0, T1, T2, T3):
    """A block's y from its partial sums: T_m[i, k, d] ([4, 4, BLOCK_D], the reshaped tile layout) is thread i's
    partial sum of step 4 m + k for channel d; the result, reshaped to [16, BLOCK_D], is y in the step tiles' layout
    (see _reduce_scatter_asm; CUDA only)."""
    return tl.inline_asm_elementwise(_REDUCE_SCATTER_ASM, _REDUCE_SCATTER_CONS, [T0, T1, T2, T3], dtype=tl.float32,
                                     is_pure=True, pack=4)


# ---------------------------------------------------------------------------------------------
# Kernels.


@triton.jit
def _linear_combine(a1, b1, a2, b2):
    # (a1, b1) then (a2, b2) for h -> a h + b: h -> a2 (a1 h + b1) + b2.
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _bc_n(row_ptr, col_ptr, n, s_n, offs_l, s_l, mask_l, mask_d, VARYING: tl.constexpr):
    """State n of B or C, broadcastable to [BLOCK_D, BLOCK_L]: a time row shared by the channels when
    input-dependent, else a channel column (rows past dstate read as zeros through the masks)."""
    if VARYING:
        v = tl.load(row_ptr + n * s_n + offs_l * s_l, mask=mask_l, other=0.0).to(tl.float32)[None, :]
    else:
        v = tl.load(col_ptr + n * s_n, mask=mask_d, other=0.0).to(tl.float32)[:, None]
    return v


@triton.jit
def _selective_scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, h0_ptr,
    out_ptr, last_ptr, states_ptr, seg_h_ptr, seg_dt_ptr,
    dim, seqlen, dstate, B_dpg, C_dpg,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_l, s_B_n, s_C_b, s_C_g, s_C_l, s_C_n,
    s_D, s_z_b, s_z_d, s_z_l, s_bias, s_h0_b, s_h0_d, s_h0_n, s_o_b, s_o_d, s_o_l,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr, SAVE_STATES: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, STATE_CHUNK: tl.constexpr,
    ROWS_AHEAD: tl.constexpr, SEG: tl.constexpr, SEG_PASS: tl.constexpr, FAST_MATH: tl.constexpr,
    PREFETCH: tl.constexpr = False, LANE_COLUMNS: tl.constexpr = False, LANE_Y: tl.constexpr = False,
):  # fmt: skip
    # Time is cut into segments of SEG steps (a multiple of STATE_CHUNK), one per program_id(2), so that
    # more programs run at once. SEG_PASS 1 runs each segment but the last from a zero state, keeping
    # neither C nor y, and writes its end state and sum of dt; SEG_PASS 2 (or 0: one segment) first
    # carries the true state across the earlier segments, h <- exp(A sum dt) h + h_end, then runs its
    # segment in full.
    # State tile h: [BLOCK_N, BLOCK_D] fp32. Time is walked one step at a time (a static loop over a
    # block of BLOCK_L steps whose u/delta/z are loaded as [BLOCK_L, BLOCK_D] tiles): one exp2 and two
    # FMAs per state and step, no cross-thread scan. Varying B/C come time-major, (batch, ngroups, seqlen,
    # dstate) fp32, so a step's B_t is one contiguous row. The state entering every STATE_CHUNK steps
    # (a multiple of BLOCK_L) is saved for the backward, then the final state. Varying B/C copies are
    # zero-padded to BLOCK_N states and to a whole number of BLOCK_L steps.
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    pid_s = tl.program_id(2)
    nseg = tl.cdiv(seqlen, SEG)
    if SEG_PASS == 0:  # one segment: static bounds keep the step's address arithmetic as without segments
        l_begin = 0
        l_end = seqlen
    else:
        l_begin = pid_s * SEG
        l_end = tl.minimum(l_begin + SEG, seqlen)
    if SEG_PASS == 1:  # the last segment's end state is never needed (the grid has one when nseg is 1)
        l_end = tl.where(pid_s < nseg - 1, l_end, l_begin)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_L)
    mask_d = offs_d < dim
    mask_n = offs_n < dstate
    mask_nd = mask_n[:, None] & mask_d[None, :]
    # exp(dt A) = exp2(dt A log2 e); padded channels/states get A = 0 (decay 1, input 0: state stays 0).
    A2 = tl.load(A_ptr + offs_n[:, None] * s_A_n + offs_d[None, :] * s_A_d, mask=mask_nd, other=0.0).to(tl.float32) * 1.4426950408889634
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(tl.float32)
    h = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    seg_nd = offs_n[:, None] + offs_d[None, :] * dstate
    if SEG_PASS != 1:
        if HAS_H0:
            h = tl.load(h0_ptr + pid_b * s_h0_b + offs_n[:, None] * s_h0_n + offs_d[None, :] * s_h0_d, mask=mask_nd, other=0.0).to(tl.float32)
        for s in range(0, pid_s):  # the end states of the earlier segments, each from a zero start
            seg = pid_b * (nseg - 1) + s
            dt_sum = tl.load(seg_dt_ptr + seg * dim + offs_d, mask=mask_d, other=0.0)
            h_end = tl.load(seg_h_ptr + seg * dim * dstate + seg_nd, mask=mask_nd, other=0.0)
            h = tl.exp2(A2 * dt_sum[None, :]) * h + h_end
    dt_acc = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
    # B/C rows of the group owning this channel block (BLOCK_D divides dim / ngroups), or
    # per-channel [BLOCK_N, BLOCK_D] tiles when time-invariant.
    if B_VARYING:
        B_base = B_ptr + pid_b * s_B_b + ((pid_d * BLOCK_D) // B_dpg) * s_B_g + offs_n * s_B_n
    else:
        Bt = tl.load(B_ptr + offs_n[:, None] * s_B_n + offs_d[None, :] * s_B_g, mask=mask_nd, other=0.0).to(tl.float32)
    if C_VARYING:
        C_base = C_ptr + pid_b * s_C_b + ((pid_d * BLOCK_D) // C_dpg) * s_C_g + offs_n * s_C_n
    else:
        Ct = tl.load(C_ptr + offs_n[:, None] * s_C_n + offs_d[None, :] * s_C_g, mask=mask_nd, other=0.0).to(tl.float32)
    # Varying B/C come as the time-major copies, whose rows are BLOCK_N apart: a constant stride lets ptxas fold a
    # step's row offset into the load's immediate instead of computing 64-bit addresses (local SASS, sm_90, triton
    # 3.6, (32, 16, 2): 1104 instructions per block instead of 1183). H100, launcher as a CUDA graph, outputs bit for
    # bit equal: 1.110 ms against 1.154 at b2 d5120 l8192 saving states; unchanged within 0.3% otherwise (0.269 /
    # 0.285 at b8 d1536 l2048, 1.045 at l8192 without states).
    if B_VARYING:
        s_B_l = BLOCK_N
    if C_VARYING:
        s_C_l = BLOCK_N
    nstates = tl.cdiv(seqlen, STATE_CHUNK)
    states_base = states_ptr + pid_b * (nstates + 1) * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate
    # Pointers to block 0; block l0 adds l0 * (time stride).
    u_blk = u_ptr + pid_b * s_u_b + offs_t[:, None] * s_u_l + offs_d[None, :] * s_u_d
    dl_blk = delta_ptr + pid_b * s_dl_b + offs_t[:, None] * s_dl_l + offs_d[None, :] * s_dl_d
    z_blk = z_ptr + pid_b * s_z_b + offs_t[:, None] * s_z_l + offs_d[None, :] * s_z_d
    # Software pipelining by hand: u/delta/z tiles are loaded one block ahead, and B/C rows run 4 steps
    # ahead of their use (the copies carry _ROWS_AHEAD extra zero rows), so no load latency sits
    # between a step and the next (each step is a short dependent chain).
    mask0 = (l_begin + offs_t < l_end)[:, None] & mask_d[None, :]
    u_nxt = tl.load(u_blk + l_begin * s_u_l, mask=mask0, other=0.0)
    dl_nxt = tl.load(dl_blk + l_begin * s_dl_l, mask=mask0, other=0.0)
    if HAS_Z:
        z_nxt = tl.load(z_blk + l_begin * s_z_l, mask=mask0, other=0.0)
    if B_VARYING:
        B_base += l_begin * s_B_l
        B_r0, B_r1, B_r2, B_r3 = tl.load(B_base), tl.load(B_base + s_B_l), tl.load(B_base + 2 * s_B_l), tl.load(B_base + 3 * s_B_l)
        if ROWS_AHEAD == 8:
            B_r4, B_r5 = tl.load(B_base + 4 * s_B_l), tl.load(B_base + 5 * s_B_l)
            B_r6, B_r7 = tl.load(B_base + 6 * s_B_l), tl.load(B_base + 7 * s_B_l)
    if C_VARYING:
        C_base += l_begin * s_C_l
        C_r0, C_r1, C_r2, C_r3 = tl.load(C_base), tl.load(C_base + s_C_l), tl.load(C_base + 2 * s_C_l), tl.load(C_base + 3 * s_C_l)
        if ROWS_AHEAD == 8:
            C_r4, C_r5 = tl.load(C_base + 4 * s_C_l), tl.load(C_base + 5 * s_C_l)
            C_r6, C_r7 = tl.load(C_base + 6 * s_C_l), tl.load(C_base + 7 * s_C_l)
    for l0 in range(l_begin, l_end, BLOCK_L):
        offs_l = l0 + offs_t
        mask_ld = (offs_l < l_end)[:, None] & mask_d[None, :]
        if SAVE_STATES and SEG_PASS != 1:
            # Predicated rather than branched on: a branch splits the loop body, which ptxas then schedules in two
            # parts (timings in the module docstring). A tensor predicate: the interpreter takes no scalar in a mask.
            at_chunk = (offs_n * 0 + l0) % STATE_CHUNK == 0
            tl.store(states_base + (l0 // STATE_CHUNK) * dim * dstate, h, mask=mask_nd & at_chunk[:, None])
        pf_zero = 0  # the prefetches' zero result, added to the next block's u offsets so they are kept
        if PREFETCH and FAST_MATH:
            # B/C rows of the block after next into L1, one address per row (clamped: the copies end ROWS_AHEAD
            # rows past the padded length). The row loads ROWS_AHEAD steps ahead then hit L1. Without this,
            # ptxas (short of registers) issues them late in the block before the one that uses them and copies
            # them into place at the back edge, and the copies waited out an L2 round trip: a quarter of the
            # stall samples in ncu (session 6).
            pf_rows = tl.minimum(l0 + 2 * BLOCK_L + offs_t, seqlen - 1)
            if B_VARYING:
                pf_b = _prefetch_l1(B_ptr + pid_b * s_B_b + ((pid_d * BLOCK_D) // B_dpg) * s_B_g + pf_rows * s_B_l)
                pf_zero += tl.max(pf_b, axis=0)
            if C_VARYING and SEG_PASS != 1:
                pf_c = _prefetch_l1(C_ptr + pid_b * s_C_b + ((pid_d * BLOCK_D) // C_dpg) * s_C_g + pf_rows * s_C_l)
                pf_zero += tl.max(pf_c, axis=0)
        u_raw, dl_raw = u_nxt, dl_nxt
        mask_nx = (offs_l + BLOCK_L < l_end)[:, None] & mask_d[None, :]
        # (times BLOCK_L: an offset of unknown divisibility would split the vector load into single elements)
        u_nxt = tl.load(u_blk + (l0 + BLOCK_L + pf_zero * BLOCK_L) * s_u_l, mask=mask_nx, other=0.0)
        dl_nxt = tl.load(dl_blk + (l0 + BLOCK_L) * s_dl_l, mask=mask_nx, other=0.0)
        if HAS_Z:
            z_raw = z_nxt
            z_nxt = tl.load(z_blk + (l0 + BLOCK_L) * s_z_l, mask=mask_nx, other=0.0)
        u = u_raw.to(tl.float32)
        dt = dl_raw.to(tl.float32) + bias[None, :]
        if DELTA_SOFTPLUS:
            dt = _softplus(dt, FAST_MATH)
        dt = tl.where(mask_ld, dt, 0.0)  # padded steps: decay 1, input 0
        dtu = dt * u
        if SEG_PASS == 1:
            dt_acc += dt
        y = tl.zeros([BLOCK_L, BLOCK_D], tl.float32)
        if LANE_Y:
            T0 = tl.zeros([4, 4, BLOCK_D], tl.float32)
            T1 = tl.zeros([4, 4, BLOCK_D], tl.float32)
            T2 = tl.zeros([4, 4, BLOCK_D], tl.float32)
            T3 = tl.zeros([4, 4, BLOCK_D], tl.float32)
            kidx = tl.arange(0, 4)[None, :, None]
        # This block's first B/C rows: each step's row load is a constant offset from them, which ptxas folds into the
        # load (from the copy's start, the rows of the next block had a 64-bit address computed each, one IMAD.WIDE
        # and an add a row: local sm_90 SASS of the lane kernel 603 -> 579 instructions a block; generic 1077 -> 1055).
        if B_VARYING:
            B_blk = B_base + (l0 - l_begin) * s_B_l
        if C_VARYING:
            C_blk = C_base + (l0 - l_begin) * s_C_l
        for j in tl.static_range(BLOCK_L):
            sel = (offs_t == j)[:, None]
            if LANE_COLUMNS:  # one shuffle from the lane that holds step j (layout assumed: see _lane_column)
                dt_j = _lane_column(dt, j)
                dtu_j = _lane_column(dtu, j)
            else:
                dt_j = _column(dt, sel)[None, :]
                dtu_j = _column(dtu, sel)[None, :]
            if B_VARYING:  # padded copies: no mask, so a row is one vector load
                Bt = B_r0[:, None]
                if ROWS_AHEAD == 8:
                    B_r0, B_r1, B_r2, B_r3, B_r4, B_r5, B_r6 = B_r1, B_r2, B_r3, B_r4, B_r5, B_r6, B_r7
                    B_r7 = tl.load(B_blk + (j + 8) * s_B_l)
                else:
                    B_r0, B_r1, B_r2 = B_r1, B_r2, B_r3
                    B_r3 = tl.load(B_blk + (j + 4) * s_B_l)
            if C_VARYING and SEG_PASS != 1:
                Ct = C_r0[:, None]
                if ROWS_AHEAD == 8:
                    C_r0, C_r1, C_r2, C_r3, C_r4, C_r5, C_r6 = C_r1, C_r2, C_r3, C_r4, C_r5, C_r6, C_r7
                    C_r7 = tl.load(C_blk + (j + 8) * s_C_l)
                else:
                    C_r0, C_r1, C_r2 = C_r1, C_r2, C_r3
                    C_r3 = tl.load(C_blk + (j + 4) * s_C_l)
            h = tl.exp2(A2 * dt_j) * h + Bt * dtu_j
            if SEG_PASS != 1:
                if LANE_Y:  # this lane's partial sum of step j, reduced across lanes after the block
                    pj = tl.sum(tl.reshape(Ct * h, [4, 4, BLOCK_D]), axis=1)[:, None, :]
                    if j // 4 == 0:
                        T0 = tl.where(kidx == j % 4, pj, T0)
                    elif j // 4 == 1:
                        T1 = tl.where(kidx == j % 4, pj, T1)
                    elif j // 4 == 2:
                        T2 = tl.where(kidx == j % 4, pj, T2)
                    else:
                        T3 = tl.where(kidx == j % 4, pj, T3)
                else:
                    y = tl.where(sel, tl.sum(Ct * h, axis=0)[None, :], y)
        if SEG_PASS != 1:
            if LANE_Y:
                y = tl.reshape(_lane_reduce_scatter(T0, T1, T2, T3), [BLOCK_L, BLOCK_D])
            if HAS_D:
                y += Dv[None, :] * u
            if HAS_Z:
                zt = z_raw.to(tl.float32)
                y = y * zt * _sigmoid(zt, FAST_MATH)
            tl.store(out_ptr + pid_b * s_o_b + offs_l[:, None] * s_o_l + offs_d[None, :] * s_o_d, y.to(out_ptr.dtype.element_ty), mask=mask_ld)
    if SEG_PASS == 1:
        seg = pid_b * (nseg - 1) + pid_s
        tl.store(seg_h_ptr + seg * dim * dstate + seg_nd, h, mask=mask_nd)
        tl.store(seg_dt_ptr + seg * dim + offs_d, tl.sum(dt_acc, axis=0), mask=mask_d)
    elif pid_s == nseg - 1:
        tl.store(last_ptr + pid_b * dim * dstate + offs_n[:, None] + offs_d[None, :] * dstate, h, mask=mask_nd)
        if SAVE_STATES:
            tl.store(states_base + nstates * dim * dstate, h, mask=mask_nd)


@triton.jit
def _atomic_add_row(row_ptr, v, l0, seqlen, offs_l, mask_l, NPART: tl.constexpr, BLOCK_L: tl.constexpr):
    """row[l0 + t] += v[t] for t < seqlen. With 8 steps per part (per thread), v is viewed as
    [NPART, 2, 4] (step = part 8 + j 4 + k): on triton 3.6 that is the atomics' own layout (4 fp32 per
    thread along k, parts across lanes, j in registers), so no shuffles precede them (3.9 orders the
    tied dimensions the other way and converts; there [2, NPART, 4] would be the match)."""
    if BLOCK_L // NPART == 8:
        offs = l0 + (tl.arange(0, NPART) * 8)[:, None, None] + (tl.arange(0, 2) * 4)[None, :, None] + tl.arange(0, 4)[None, None, :]
        tl.atomic_add(row_ptr + offs, tl.reshape(v, [NPART, 2, 4]), mask=offs < seqlen, sem="relaxed")
    else:
        tl.atomic_add(row_ptr + offs_l, v, mask=mask_l, sem="relaxed")


@triton.jit
def _add_lane_partials(ptrs, tile, mask, keep, BLOCK_D: tl.constexpr, NPART: tl.constexpr, BLOCK_L: tl.constexpr):
    """Adds tile [BLOCK_D, BLOCK_L] summed over each lane's BLOCK_L / NPART steps (time inside a thread: no
    shuffles) to the [BLOCK_D, NPART] partials at ptrs (loaded only where keep: the first tile starts them)."""
    part = tl.sum(tl.reshape(tile, [BLOCK_D, NPART, BLOCK_L // NPART]), axis=2)
    part += tl.load(ptrs, mask=mask & keep, other=0.0)
    tl.store(ptrs, part, mask=mask)


@triton.jit
def _bwd_state_step(
    n, g_seed, wr_base, part_n, offs_p, first_col, last_col, first_in_part, first_part, keep_part, NPART: tl.constexpr,
    A_n, B_n, C_n, h0_n, dt2, dt2_nx, dtu, dy, rev_t, mask_d, mask_l, mask_dp,
    dA_part_ptr, dB_ptr, dC_ptr, dB_row, dC_row, seqlen, l0, offs_l,
    B_VARYING: tl.constexpr, C_VARYING: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    GATHER_FLIP: tl.constexpr,
):  # fmt: skip
    """One state of one tile: returns g B_n, A_n g (h - b) and C_n h, the state's terms of
    dL/d(dt u), dL/d dt and y; the per-lane partial sums and g's first column go to memory."""
    b = dtu * B_n
    decay = tl.exp2(dt2 * A_n[:, None])
    # The saved state enters as the first step's input, so the scan's cumulative decay is never needed.
    h = tl.associative_scan((decay, b + tl.where(first_col, decay * h0_n[:, None], 0.0)), 1, _linear_combine)[1]
    # Likewise the g carried from the next tile enters as the last step's input.
    gdecay = tl.exp2(dt2_nx * A_n[:, None])
    if GATHER_FLIP:
        # The reverse recurrence as a forward scan in reversed time (column j is step BLOCK_L - 1 - j):
        # dt2_nx comes reversed from its load, C_n dy is flipped by a gather (one warp shuffle per
        # element; keeping a reversed dy tile live instead spills), and a second gather puts g back in
        # time order. Triton's reverse scan flips both its inputs and its output across lanes: on
        # triton 3.6 five SHFL.BFLY per value and element (15 in all), on 3.9 one per value.
        c = tl.gather(C_n * dy, rev_t, 1) + tl.where(first_col, gdecay * g_seed[:, None], 0.0)
        g = tl.gather(tl.associative_scan((gdecay, c), 1, _linear_combine)[1], rev_t, 1)
    else:
        c = C_n * dy + tl.where(last_col, gdecay * g_seed[:, None], 0.0)
        g = tl.associative_scan((gdecay, c), 1, _linear_combine, reverse=True)[1]
    # g's first column, the seed of this state in the previous tile: each part's first step, stored from
    # part 0 (parts are [BLOCK_D, NPART] tensors with one element per lane: no layout conversion).
    g_first = tl.sum(tl.where(first_in_part, tl.reshape(g, [BLOCK_D, NPART, BLOCK_L // NPART]), -0.0), axis=2)
    tl.store(wr_base[:, None] + n + offs_p[None, :], g_first, mask=first_part)
    s = g * (h - b)  # dL/d(dt_t A_n)
    # dA_n = ln 2 sum_t s dt2: per-lane partial sums (time inside a thread), added to in memory
    # (one address per lane and channel, so no shuffles and no per-state select on a register tile).
    _add_lane_partials(dA_part_ptr + part_n + n * (NPART + 1), s * dt2, mask_dp, keep_part, BLOCK_D, NPART, BLOCK_L)
    if B_VARYING:
        _atomic_add_row(dB_row + n * seqlen, tl.sum(g * dtu, axis=0), l0, seqlen, offs_l, mask_l, NPART, BLOCK_L)
    else:
        _add_lane_partials(dB_ptr + part_n + n * (NPART + 1), g * dtu, mask_dp, keep_part, BLOCK_D, NPART, BLOCK_L)
    if C_VARYING:
        _atomic_add_row(dC_row + n * seqlen, tl.sum(dy * h, axis=0), l0, seqlen, offs_l, mask_l, NPART, BLOCK_L)
    else:
        _add_lane_partials(dC_ptr + part_n + n * (NPART + 1), dy * h, mask_dp, keep_part, BLOCK_D, NPART, BLOCK_L)
    return g * B_n, A_n[:, None] * s, C_n * h


@triton.jit
def _selective_scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, bias_ptr, dout_ptr, dlast_ptr, states_ptr,
    du_ptr, ddelta_ptr, dz_ptr, dA_part_ptr, dB_ptr, dC_ptr, dA_ptr, dBs_ptr, dCs_ptr, dD_ptr, dbias_ptr, dh0_ptr, gseed_ptr,
    batch, dim, seqlen, dstate, B_dpg, C_dpg, ngroups_B, ngroups_C, bc_copies, copy_stride_B, copy_stride_C, dC_off,
    s_u_b, s_u_d, s_u_l, s_dl_b, s_dl_d, s_dl_l, s_A_d, s_A_n,
    s_B_b, s_B_g, s_B_n, s_B_l, s_C_b, s_C_g, s_C_n, s_C_l,
    s_D, s_z_b, s_z_d, s_z_l, s_bias, s_do_b, s_do_d, s_do_l, s_dls_b, s_dls_d, s_dls_n, s_o_b, s_o_d,
    DELTA_SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_DLAST: tl.constexpr, B_VARYING: tl.constexpr, C_VARYING: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_L: tl.constexpr, NPART: tl.constexpr, FAST_MATH: tl.constexpr,
    GATHER_FLIP: tl.constexpr,
):  # fmt: skip
    # Tiles of BLOCK_L steps in reverse (BLOCK_L is the forward's STATE_CHUNK: each tile starts from a
    # saved state). Per state n: the tile's states h are recomputed by a forward scan; the state
    # gradient g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} is a reverse scan (dt_{t+1} from a second,
    # shifted load of delta, 0 past the end). With b_t = dt_t u_t B_t, exp(dt_t A) h_{t-1} = h_t - b_t
    # exactly, so no shifted state is needed:
    #   dL/d(dt_t u_t) = sum_n g B_n,   dL/d dt_t += sum_n A_n g (h - b),   dA_n = sum_t g dt (h - b),
    #   dB_n[t] = sum_d g dt u,   dC_n[t] = sum_d dy h,   dL/dh_init = exp(dt_0 A) g_0.
    # For few instructions per state and step and few live registers:
    # - the saved state h0 enters the forward scan as the first step's input, and the g carried from the
    #   next tile as the last step's input of the reverse scan: neither scan's cumulative decay is used;
    # - the carried g goes through memory (two (batch, dim, dstate) fp32 buffers, alternating per tile,
    #   a barrier between tiles): stored by the lanes holding g's first column, loaded as a scalar per
    #   channel, instead of a cross-lane sum and a select on a [BLOCK_D, BLOCK_N] register tile per state;
    # - varying dB/dC rows are summed over the program's channels, then added atomically into fp32
    #   (batch, ngroups, dstate, seqlen) buffers; per-channel sums over time (dA, time-invariant dB/dC)
    #   add per-lane partials (NPART per channel, summed inside each thread) into fp32
    #   (batch, dim, dstate, NPART + 1) buffers, summed across lanes after the loop; dD, d delta_bias go per batch
    #   row; _bwd_sums_kernel then sums over batch rows (and dB/dC copies);
    # - GATHER_FLIP: the reverse scan as a forward scan in reversed time plus two tl.gather flips (see
    #   _bwd_state_step);
    # - only dt2 = dt log2 e, dt2_nx, dt u, dy (and y with z) stay live through the loop over states; u,
    #   delta, dout and z are loaded again after it, from int32 offsets.
    pid_d = tl.program_id(0)
    pid_b = tl.program_id(1).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_n = tl.arange(0, BLOCK_N)
    offs_t = tl.arange(0, BLOCK_L)
    offs_p = tl.arange(0, NPART)
    mask_d = offs_d < dim
    mask_dn = mask_d[:, None] & (offs_n < dstate)[None, :]
    mask_dp = mask_d[:, None] & (offs_p < NPART)[None, :]
    first_col = (offs_t == 0)[None, :]
    last_col = (offs_t == BLOCK_L - 1)[None, :]
    rev_t = tl.broadcast_to((BLOCK_L - 1 - offs_t)[None, :], [BLOCK_D, BLOCK_L])  # a time flip, for tl.gather
    bias = tl.zeros([BLOCK_D], tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d * s_bias, mask=mask_d, other=0.0).to(tl.float32)
    if HAS_D:
        Dv = tl.load(D_ptr + offs_d * s_D, mask=mask_d, other=0.0).to(tl.float32)
    A_col = A_ptr + offs_d * s_A_d
    grp_b, grp_c = (pid_d * BLOCK_D) // B_dpg, (pid_d * BLOCK_D) // C_dpg
    B_row, B_col = B_ptr + pid_b * s_B_b + grp_b * s_B_g, B_ptr + offs_d * s_B_g
    C_row, C_col = C_ptr + pid_b * s_C_b + grp_c * s_C_g, C_ptr + offs_d * s_C_g
    # varying dB/dC: program pid_d adds into copy pid_d % bc_copies of the (batch, ngroups, dstate, seqlen) rows
    # (summed by _bwd_sums_kernel), so fewer programs add to one address at a time
    copy = pid_d % bc_copies
    dB_row = dB_ptr + copy * copy_stride_B + (pid_b * ngroups_B + grp_b) * dstate * seqlen
    if B_VARYING and C_VARYING:  # one buffer holds both, C's part dC_off elements in
        dC_row = dB_ptr + dC_off + copy * copy_stride_C + (pid_b * ngroups_C + grp_c) * dstate * seqlen
    else:
        dC_row = dC_ptr + copy * copy_stride_C + (pid_b * ngroups_C + grp_c) * dstate * seqlen
    dn_off = (pid_b * dim + offs_d) * dstate  # [BLOCK_D]: (batch row, channel) in (batch, dim, dstate)
    # Partial sums: (batch, dim, dstate, NPART + 1) fp32 (the last column unused): rows of an odd length
    # are not 16-byte aligned, so a part's [BLOCK_D, NPART] loads and stores are not vectorised and keep the
    # one-element-per-lane layout of the sums (no layout conversion).
    part_n = dn_off[:, None] * (NPART + 1) + offs_p[None, :]  # [BLOCK_D, NPART] at state 0
    first_in_part = (tl.arange(0, BLOCK_L // NPART) == 0)[None, None, :]
    first_part = mask_d[:, None] & (offs_p == 0)[None, :]
    dD_acc = tl.zeros([BLOCK_D], tl.float32)
    dbias_acc = tl.zeros([BLOCK_D], tl.float32)
    # The carried g starts as dL/d(last_state), copied into buffer 0.
    g_last = tl.zeros([BLOCK_D, BLOCK_N], tl.float32)
    if HAS_DLAST:
        g_last = tl.load(dlast_ptr + pid_b * s_dls_b + offs_d[:, None] * s_dls_d + offs_n[None, :] * s_dls_n, mask=mask_dn, other=0.0)
    tl.store(gseed_ptr + dn_off[:, None] + offs_n[None, :], g_last.to(tl.float32), mask=mask_dn)
    tl.debug_barrier()
    seed_stride = batch * dim * dstate
    nblocks = tl.cdiv(seqlen, BLOCK_L)
    states_base = states_ptr + pid_b * (nblocks + 1) * dim * dstate + offs_d * dstate
    # Batch rows as scalar pointers, element offsets in int32 (one batch row of a (batch, dim, seqlen)
    # tensor stays below 2^31 elements): a [BLOCK_D, BLOCK_L] tile of 64-bit pointers kept for the loads
    # after the loop over states would cost twice the registers.
    u_row, dl_row, do_row, z_row = u_ptr + pid_b * s_u_b, delta_ptr + pid_b * s_dl_b, dout_ptr + pid_b * s_do_b, z_ptr + pid_b * s_z_b
    out_row = pid_b * s_o_b  # du, ddelta, dz: one layout, time contiguous (strides s_o_b, s_o_d, 1)
    for i in range(nblocks):
        blk = nblocks - 1 - i
        l0 = blk * BLOCK_L
        offs_l = l0 + offs_t
        mask_l = offs_l < seqlen
        mask_dl = mask_d[:, None] & mask_l[None, :]
        out_offs = offs_d[:, None] * s_o_d + offs_l[None, :]
        rd_base = gseed_ptr + (i % 2) * seed_stride + dn_off
        wr_base = gseed_ptr + ((i + 1) % 2) * seed_stride + dn_off
        keep_part = i > 0  # the first tile writes the partial sums, later ones add to them
        dl_ptrs = dl_row + (offs_d[:, None] * s_dl_d + offs_l[None, :] * s_dl_l)
        pre = tl.load(dl_ptrs, mask=mask_dl, other=0.0).to(tl.float32) + bias[:, None]
        # dt_{t+1}, 0 past the end: in time order, or time-reversed for the gather flip (column j is
        # step l0 + BLOCK_L - 1 - j, so its next step is l0 + BLOCK_L - j).
        offs_nx = l0 + BLOCK_L - offs_t if GATHER_FLIP else offs_l + 1
        mask_nx = mask_d[:, None] & (offs_nx < seqlen)[None, :]
        pre_nx = tl.load(dl_ptrs + (offs_nx - offs_l)[None, :] * s_dl_l, mask=mask_nx, other=0.0).to(tl.float32) + bias[:, None]
        if DELTA_SOFTPLUS:
            dt = _softplus(pre, FAST_MATH)
            dt_nx = _softplus(pre_nx, FAST_MATH)
        else:
            dt = pre
            dt_nx = pre_nx
        dt = tl.where(mask_dl, dt, 0.0)
        dt2 = dt * 1.4426950408889634
        dt2_nx = tl.where(mask_nx, dt_nx, 0.0) * 1.4426950408889634
        u = tl.load(u_row + (offs_d[:, None] * s_u_d + offs_l[None, :] * s_u_l), mask=mask_dl, other=0.0).to(tl.float32)
        dtu = dt * u
        dout_ptrs = do_row + (offs_d[:, None] * s_do_d + offs_l[None, :] * s_do_l)
        z_ptrs = z_row + (offs_d[:, None] * s_z_d + offs_l[None, :] * s_z_l)
        dy = tl.load(dout_ptrs, mask=mask_dl, other=0.0).to(tl.float32)
        if HAS_Z:
            zt = tl.load(z_ptrs, mask=mask_dl, other=0.0).to(tl.float32)
            dy = dy * zt * _sigmoid(zt, FAST_MATH)
        y = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)
        d_dtu = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)  # sum_n g B_n
        ddt = tl.zeros([BLOCK_D, BLOCK_L], tl.float32)  # sum_n A_n g (h - b)
        # State n's rows are loaded during state n - 1 (the loop body is long; this hides their latency).
        A_nx = tl.load(A_col, mask=mask_d, other=0.0).to(tl.float32)
        B_nx = _bc_n(B_row, B_col, 0, s_B_n, offs_l, s_B_l, mask_l, mask_d, B_VARYING)
        C_nx = _bc_n(C_row, C_col, 0, s_C_n, offs_l, s_C_l, mask_l, mask_d, C_VARYING)
        h0_row = states_base + blk * dim * dstate
        for n in range(dstate):
            A_n, B_n, C_n = A_nx, B_nx, C_nx
            n_nx = tl.minimum(n + 1, dstate - 1)  # the last state re-reads itself: always in bounds
            A_nx = tl.load(A_col + n_nx * s_A_n, mask=mask_d, other=0.0).to(tl.float32)
            B_nx = _bc_n(B_row, B_col, n_nx, s_B_n, offs_l, s_B_l, mask_l, mask_d, B_VARYING)
            C_nx = _bc_n(C_row, C_col, n_nx, s_C_n, offs_l, s_C_l, mask_l, mask_d, C_VARYING)
            h0_n = tl.load(h0_row + n, mask=mask_d, other=0.0)
            g_seed = tl.load(rd_base + n, mask=mask_d, other=0.0)
            gB, As, Ch = _bwd_state_step(
                n, g_seed, wr_base, part_n, offs_p, first_col, last_col, first_in_part, first_part, keep_part, NPART,
                A_n, B_n, C_n, h0_n, dt2, dt2_nx, dtu, dy, rev_t, mask_d, mask_l, mask_dp,
                dA_part_ptr, dB_ptr, dC_ptr, dB_row, dC_row, seqlen, l0, offs_l, B_VARYING, C_VARYING, BLOCK_D, BLOCK_L,
                GATHER_FLIP,
            )  # fmt: skip
            d_dtu += gB
            ddt += As
            if HAS_Z:
                y += Ch
        # Barrier: this tile's carried g (written above) is read by the next tile, which overwrites the
        # buffer this one read.
        tl.debug_barrier()
        u = tl.load(u_row + (offs_d[:, None] * s_u_d + offs_l[None, :] * s_u_l), mask=mask_dl, other=0.0).to(tl.float32)
        du = d_dtu * (dt2 * 0.6931471805599453)
        if HAS_D:
            du += Dv[:, None] * dy
            dD_acc += tl.sum(dy * u, axis=1)
        if HAS_Z:
            if HAS_D:
                y += Dv[:, None] * u
            dout = tl.load(dout_ptrs, mask=mask_dl, other=0.0).to(tl.float32)
            zt = tl.load(z_ptrs, mask=mask_dl, other=0.0).to(tl.float32)
            sig = _sigmoid(zt, FAST_MATH)
            tl.store(dz_ptr + out_row + out_offs, (dout * y * sig * (1.0 + zt * (1.0 - sig))).to(dz_ptr.dtype.element_ty), mask=mask_dl)
        ddt += d_dtu * u
        if DELTA_SOFTPLUS:
            pre = tl.load(dl_ptrs, mask=mask_dl, other=0.0).to(tl.float32) + bias[:, None]
            ddt = ddt * tl.where(pre <= 20.0, _sigmoid(pre, FAST_MATH), 1.0)
        ddt = tl.where(mask_dl, ddt, 0.0)
        dbias_acc += tl.sum(ddt, axis=1)
        tl.store(du_ptr + out_row + out_offs, du.to(du_ptr.dtype.element_ty), mask=mask_dl)
        tl.store(ddelta_ptr + out_row + out_offs, ddt.to(ddelta_ptr.dtype.element_ty), mask=mask_dl)
    # The per-lane partial sums added over the lanes, per (batch row, channel, state): dA (times ln 2, the loop
    # summed s dt log2 e) and time-invariant dB/dC. The loop's last barrier orders these loads after its stores.
    for n in range(dstate):
        offs = part_n + n * (NPART + 1)
        tl.store(dA_ptr + dn_off + n, tl.sum(tl.load(dA_part_ptr + offs, mask=mask_dp, other=0.0), axis=1) * 0.6931471805599453, mask=mask_d)
        if not B_VARYING:
            tl.store(dBs_ptr + dn_off + n, tl.sum(tl.load(dB_ptr + offs, mask=mask_dp, other=0.0), axis=1), mask=mask_d)
        if not C_VARYING:
            tl.store(dCs_ptr + dn_off + n, tl.sum(tl.load(dC_ptr + offs, mask=mask_dp, other=0.0), axis=1), mask=mask_d)
    # dL/dh_init = exp(dt_0 A) g_0, g_0 being the carried g after the first tile.
    g0 = tl.load(gseed_ptr + (nblocks % 2) * seed_stride + dn_off[:, None] + offs_n[None, :], mask=mask_dn, other=0.0)
    A = tl.load(A_col[:, None] + offs_n[None, :] * s_A_n, mask=mask_dn, other=0.0).to(tl.float32)
    pre0 = tl.load(delta_ptr + pid_b * s_dl_b + offs_d * s_dl_d, mask=mask_d, other=0.0).to(tl.float32) + bias
    if DELTA_SOFTPLUS:
        pre0 = _softplus(pre0, FAST_MATH)
    tl.store(dh0_ptr + dn_off[:, None] + offs_n[None, :], tl.exp2(pre0[:, None] * A * 1.4426950408889634) * g0, mask=mask_dn)
    tl.store(dD_ptr + pid_b * dim + offs_d, dD_acc, mask=mask_d)
    tl.store(dbias_ptr + pid_b * dim + offs_d, dbias_acc, mask=mask_d)


@triton.jit
def _bc_time_major(src_ptr, dst_ptr, ngroups, dstate, seqlen, rows, s_b, s_g, s_n, s_l, pid_t, pid_bg,
                   BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr):  # fmt: skip
    # dst[b, g, t, n] = src[b, g, n, t] in fp32 for t < seqlen and n < dstate, 0 elsewhere (the pads).
    b, g = (pid_bg // ngroups).to(tl.int64), pid_bg % ngroups
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_t < seqlen)[:, None] & (offs_n < dstate)[None, :]
    v = tl.load(src_ptr + b * s_b + g * s_g + offs_n[None, :] * s_n + offs_t[:, None] * s_l, mask=mask, other=0.0)
    dst = dst_ptr + pid_bg.to(tl.int64) * rows * BLOCK_N + offs_t[:, None] * BLOCK_N + offs_n[None, :]
    tl.store(dst, v.to(tl.float32), mask=(offs_t < rows)[:, None])


@triton.jit
def _bc_time_major_kernel(
    src0_ptr, dst0_ptr, ngroups0, s0_b, s0_g, s0_n, s0_l, src1_ptr, dst1_ptr, ngroups1, s1_b, s1_g, s1_n, s1_l,
    batch, dstate, seqlen, rows, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):  # fmt: skip
    # The time-major copies of B (program_id(2) 0) and C (1) in one launch; program_id(1) is (batch row, group).
    pid_t, pid_bg = tl.program_id(0), tl.program_id(1)
    if tl.program_id(2) == 0:
        if pid_bg < batch * ngroups0:
            _bc_time_major(src0_ptr, dst0_ptr, ngroups0, dstate, seqlen, rows, s0_b, s0_g, s0_n, s0_l, pid_t, pid_bg,
                           BLOCK_T, BLOCK_N)  # fmt: skip
    elif pid_bg < batch * ngroups1:
        _bc_time_major(src1_ptr, dst1_ptr, ngroups1, dstate, seqlen, rows, s1_b, s1_g, s1_n, s1_l, pid_t, pid_bg,
                       BLOCK_T, BLOCK_N)  # fmt: skip


@triton.jit
def _sum_slices(src_ptr, dst_ptr, n, K, stride, blk, BLOCK: tl.constexpr):
    """dst[j] = sum_{k < K} src[k stride + j] (j < n) over block blk of j, in dst's dtype."""
    offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ptrs = src_ptr + offs
    acc = tl.zeros([BLOCK], tl.float32)
    for _ in range(K):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += stride
    tl.store(dst_ptr + offs, acc.to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_sums_kernel(
    s0, d0, n0, k0, t0, s1, d1, n1, k1, t1, s2, d2, n2, k2, t2, s3, d3, n3, k3, t3, s4, d4, n4, k4, t4,
    BLOCK: tl.constexpr,
):  # fmt: skip
    # The backward's five reductions in one launch (dA, dB, dC, dD, d delta_bias over batch rows or over the dB/dC
    # copies): d_i[j] = sum_{k < k_i} s_i[k t_i + j] for j < n_i, in d_i's dtype. Programs take the reductions in turn, by
    # cumulative block counts; an absent one has n_i = 0.
    pid = tl.program_id(0)
    e0 = tl.cdiv(n0, BLOCK)
    e1 = e0 + tl.cdiv(n1, BLOCK)
    e2 = e1 + tl.cdiv(n2, BLOCK)
    e3 = e2 + tl.cdiv(n3, BLOCK)
    if pid < e0:
        _sum_slices(s0, d0, n0, k0, t0, pid, BLOCK)
    elif pid < e1:
        _sum_slices(s1, d1, n1, k1, t1, pid - e0, BLOCK)
    elif pid < e2:
        _sum_slices(s2, d2, n2, k2, t2, pid - e1, BLOCK)
    elif pid < e3:
        _sum_slices(s3, d3, n3, k3, t3, pid - e2, BLOCK)
    else:
        _sum_slices(s4, d4, n4, k4, t4, pid - e3, BLOCK)


# ---------------------------------------------------------------------------------------------
# Launchers.


def _pow2_divisor(n: int, cap: int) -> int:
    """Largest power of two <= cap dividing n."""
    p = 1
    while p * 2 <= cap and n % (p * 2) == 0:
        p *= 2
    return p


def fwd_block_sizes(dim: int, dstate: int, dpg: int | None, lanes: bool = False) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps) of the forward by shape. dpg is the channels per B/C group, which BLOCK_D must
    divide (None when B and C are time-invariant).

    With ``lanes`` (lane_layout_fits) and 16 states: 8 channels a warp, four states per thread, up to four warps
    (32, 16, 4), the layout the lane shuffles assume (_lanes_in_blocks). Session 22, H100, forward launcher as a CUDA
    graph (benchmarks/probes/scan_fwd_configs.py, three rounds), ms not saving / saving states:

    | blocks | ptxas 12.8, l2048 | 12.8, b2 d5120 l8192 | 13.0, l2048 |
    |---|---|---|---|
    | (16, 16, 1), the generic default | 0.263 / 0.262 | 1.028 / 1.028 | 0.262 / 0.251 |
    | (8, 16, 1), lane columns, column sums for y | 0.216 / 0.239 | 0.863 / 0.968 | |
    | (8, 16, 1), lane columns and y | 0.203 / 0.216 | 0.861 / 0.901 | 0.213 / 0.218 |
    | (32, 16, 4), lane columns and y | 0.203 / 0.215 | 0.820 / 0.874 | 0.211 / 0.216 |

    Every lane row with the L1 prefetch (fwd_prefetch). Why the narrower warps win: at (16, 16, 1) each thread holds
    8 states, and the 768 warps of the 130M shape leave 2 on some schedulers and 1 on others (1.45 on average, and the
    loaded ones set the time); 4 states a thread make 1536 warps, 2.9 a scheduler, evenly spread. The price was the
    cross-lane work of spreading a channel's states over 4 threads (a two-round butterfly for each step's dt and dt u
    columns and for y: 6 shuffles a step), which made (8, 16, 1) no faster before (0.269 against 0.268 ms, session 11;
    731 SASS instructions a block of 16 steps, 2193 per scheduler at 3 warps against 1115 x 2 = 2230). The lane
    shuffles cut that to 579 (columns) and 563 (and y) instructions a block (local sm_90 build, triton 3.6).
    ncu (session 22): 2.80 warps a scheduler issuing 0.52 instructions a cycle, against 1.45 and 0.46. Four warps a
    program spread each program's warps over all four schedulers of an SM.

    Without the lanes: one warp with 8 state values per thread (BLOCK_D 16 at dstate <= 16; (32, 16, 2) until session
    17, timings in fwd_prefetch), BLOCK_L 16 (two 16-byte bf16 vectors of time steps per thread) for dstate <= 16,
    else 8.

    Generic kernel at b8 d1536 l2048 n16 (H100, benchmarks/probes/scan_sweep.py, session 6), with B/C rows 8 ahead and
    the L1 prefetch: (32, 16, 2) 0.280-0.282 ms, (16, 16, 1) 0.281-0.282, (32, 8, 2) 0.299-0.302, (16, 8, 1)
    0.293, (32, 8, 4) 0.614; without the prefetch (32, 8, 2) 0.294-0.296 and (32, 16, 2) 0.299. At b2 d5120
    l8192: (32, 16, 2) 1.067-1.076 against 1.134-1.141 for (32, 8, 2) without the prefetch. Session 3, through the
    op, rows 4 ahead: (32, 8, 2) 0.389 ms, (16, 8, 1) 0.413, (32, 8, 1) 0.461, (64, 8, 2) 0.474, (32, 16, 1)
    0.580 (earlier: (4, 8, 1) 0.564, (8, 8, 1) 0.697, (16, 8, 2) 0.649, (8, 16, 1) 1.06); dstate > 16 keeps 8
    state values per thread on one warp (not measured). Session 11, launcher as a CUDA graph, not saving / saving
    states, ms at l2048 and at b2 d5120 l8192 (benchmarks/probes/scan_fwd_configs.py): (32, 16, 2) 0.268 / 0.284,
    1.043 / 1.111; with 4 state values per thread (128 registers, so twice the warps in flight) (16, 16, 2) 0.271 /
    0.299, 0.985 / 1.111, (8, 16, 1) 0.269 / 0.297, 0.982 / 1.105, (32, 16, 4) 0.274 / 0.302, 1.061 / 1.174; (16, 8,
    1) 0.299 / 0.312; 2 per thread (16, 16, 4) 0.432 / 0.415. Twice the warps bought nothing at l2048: ncu (same
    session) has (32, 16, 2) at 1.48 warps per scheduler issuing 0.44 instructions a cycle, its MUFU (XU) pipe 48%
    busy, stalls per issued instruction 0.80 on loads (long scoreboard), 0.62 on fixed-latency dependencies, 0.33 on
    MUFU/shuffle results; (16, 16, 2) at 2.81 warps issues 0.54 a cycle of 32% more instructions (six shuffles a step
    for the sum over states, 1.43 short-scoreboard stalls per instruction)."""
    BLOCK_N = block_n(dstate)
    if lanes and BLOCK_N == 16:
        BLOCK_D = max(8, min(32, next_pow2(dim)))
        if dpg is not None:
            BLOCK_D = _pow2_divisor(dpg, BLOCK_D)
        if BLOCK_D >= 8:
            return BLOCK_D, 16, BLOCK_D // 8
    BLOCK_D = max(1, min(256 // BLOCK_N, next_pow2(dim)))
    if dpg is not None:
        BLOCK_D = _pow2_divisor(dpg, BLOCK_D)
    return BLOCK_D, 16 if BLOCK_N <= 16 else 8, 1


def fwd_prefetch(dstate: int, save_states: bool, ptxas: Callable[[], int | None], lanes: bool = False) -> bool:
    """Whether the forward prefetches the B/C rows of the block after next into L1: above 16 states, and at 16 or
    fewer when it saves states for the backward and a CUDA 13 or later ptxas builds it. ``ptxas`` returns that
    ptxas's major version (``_triton.ptxas_major``: Triton's JIT runs Triton 3.6's ptxas 12.8, Inductor torch 2.11's
    13.0); it is called only in the case it decides, since it costs about 9 us of host time.

    ptxas schedules the kernel's loop, and the two versions rank the configurations differently. H100, b8 d1536
    l2048 / b2 d5120 l8192 n16 bf16, forward launcher as a CUDA graph, medians of three rounds, session 17
    (benchmarks/probes/scan_fwd_configs.py under each TRITON_PTXAS_PATH, one call), ms saving states / not:

    | (BLOCK_D, warps), prefetch | ptxas 12.8, l2048 | 12.8, l8192 | 13.0, l2048 | 13.0, l8192 |
    |---|---|---|---|---|
    | (32, 2), on (the default until then) | 0.283 / 0.267 | 1.107 / 1.043 | 0.321 / 0.263 | 1.306 / 1.024 |
    | (32, 2), off | 0.282 / 0.289 | 1.037 / 1.041 | 0.323 / 0.283 | 1.243 / 1.050 |
    | (16, 1), on | 0.308 / 0.276 | 1.208 / 1.072 | 0.276 / 0.277 | 1.072 / 1.076 |
    | (16, 1), off | 0.279 / 0.263 | 1.078 / 1.033 | 0.300 / 0.266 | 1.145 / 1.010 |

    Earlier calls of the same session, saving states at l2048: (32, 2) on 0.281 / 0.320, off 0.275-0.276 / 0.324;
    (16, 1) on 0.307 / 0.275-0.277, off 0.278 / 0.301; (16, 2) 0.295 / 0.295; (32, 4) 0.297 / 0.297; (64, 4) 0.319
    / 0.361; BLOCK_L 8 or 32 slower in every case. In the old default's two binaries (cuobjdump) the loop holds the
    same 1194 instructions in a different order. This is what the scan forward's 0.320 ms a layer inside the
    compiled Mamba-1 step, against 0.282 for the same launch made eagerly, had been (session 16's open question):
    Inductor's CUDA 13 build of (32, 2) with the prefetch. An unknown version (None) counts as 12.

    With the lane columns (``lanes``) the prefetch is always on: at (8, 16, 1), session 22, ptxas 12.8, ms not saving
    / saving states, 0.239 / 0.261 with it against 0.268 / 0.284 without (0.876 / 0.986 against 1.003 / 1.065 at l8192);
    under 13.0, 0.236 / 0.260 against 0.264 / 0.284. Rows loaded 4 steps ahead instead of 8: 0.551 / 0.371."""
    if block_n(dstate) > 16 or lanes:
        return True
    if not save_states:
        return False
    version = ptxas()
    return version is not None and version >= 13


def bwd_block_sizes(dim: int, dstate: int, dpg: int | None) -> tuple[int, int, int]:
    """(BLOCK_D, BLOCK_L, num_warps) of the backward; its BLOCK_L is also the interval at which the
    forward saves states (a multiple of the forward's BLOCK_L). One warp, about 16 tile elements per
    thread. Backward launcher at b8 d1536 l2048 n16 bf16 (H100, benchmarks/probes/scan_bwd_probe.py):
    (2, 256, 1) 1.793 ms, (1, 128, 1) 1.947, (1, 256, 1) 3.042 (the first parallel backward: 2.04-2.18 ms
    on one warp from (2, 128, 1) to (1, 512, 1), 2.66-5.79 on two or four). Session 16, this kernel
    (scan_variants.py --bwd-configs): (2, 256, 1) 1.324, (2, 128, 1) 1.790, (4, 128, 1) 2.040, (4, 64, 1)
    2.772, (8, 32, 1) 5.461; ptxas for sm_90: 234 registers at (2, 128, 1), 254-255 at the others, with
    spills of 124 B at (2, 256, 1), 420 at (4, 128, 1), 16 at (8, 32, 1), none at (4, 64, 1)."""
    BLOCK_D = min(_BWD_CONFIG[0], next_pow2(dim))
    if dpg is not None:
        BLOCK_D = _pow2_divisor(dpg, BLOCK_D)
    return BLOCK_D, _BWD_CONFIG[1], _BWD_CONFIG[2]


_BWD_CONFIG = (2, 256, 1)  # backward (BLOCK_D, BLOCK_L, num_warps); timings in bwd_block_sizes
# Copies of the varying dB/dC buffers that the backward's programs spread their atomic adds over (program i adds into
# copy i mod copies; _bwd_sums_kernel sums them). Every program of a batch row walks the same time tile at about the
# same time, so with one buffer all of them added into the same addresses at once. H100, b8 d1536 l2048 n16 bf16,
# backward launcher as a CUDA graph (benchmarks/probes/scan_bwd_parts.py, copies summed by torch): 1.669-1.674 ms
# with one copy, 1.546 with 2, 1.492 with 4, 1.416 with 8, 1.420 with 16; 1.319-1.322 with B or C (or both)
# time-invariant, whose sums take no atomics. Session 11, the op's forward+backward as a CUDA graph with the copies
# summed by _bwd_sums_kernel (benchmarks/probes/scan_variants.py --copies), ms at l2048 / at b2 d5120 l8192, medians
# of rounds alternating in one process: 8 copies 1.667 / 5.484, 10 1.639 / 5.474, 12 1.629 / 5.557, 16 1.614 /
# 5.479; an earlier run 1.647 / 5.483, 1.626 / 5.492, 1.621 / 5.557, 1.616 / 5.566 (l8192 varies by 1.5% from run
# to run). With the same code, the op's forward+backward at l2048 with 16 copies took 1.614-1.618 ms in four
# processes and 1.644-1.647 in three others, each process consistent with itself (one that timed both ways gave
# 1.617-1.618 for both): the slow ones had begun with scan_variants' launcher cases, the fast ones with the op, as if
# the time followed where the buffers landed. Not explained; a copy stride that is not a power of two was a guess
# left untried (no device time left). The copies cost 16 x (batch, ngroups, dstate, seqlen) fp32 each for dB and dC,
# zero-filled for every backward (34 MB at b8 l2048 n16), and their sum reads them once.
_BWD_BC_COPIES = 16
# fp32 elements between the end of one dB/dC copy and the start of the next (a copy's size is a power of two at
# power-of-two shapes; see above). Session 12, op forward+backward as a CUDA graph at l2048 (scan_variants --pads,
# H100, three rounds each, every case consistent with itself): in a process that began with the launcher cases,
# pad 0 1.641 ms, 32 1.598, 1056 1.608; in one that began with the op, 0 1.612, 16 1.614, 32 1.618, 64 1.632,
# 128 1.589. No pad is better in both: the 2-3% spread follows where the buffers land, not the stride, so 0 stays.
_BWD_BC_COPY_PAD = 0
# Elements per program of _bwd_sums_kernel. Session 20 (H100): loading four slices of a sum at once instead of one
# (more loads in flight per thread) left the backward launcher at 1.358 ms against 1.359 (l2048, five rounds
# alternating) and 4.452 against 4.442 (l8192); in the profiled 130M training step the kernel took 18.7 us against
# 19.8-20.0 in earlier profiles. The copies it sums were just written through L2 by the scan's atomics: not kept.
_SUM_BLOCK = 1024
# The backward's reverse scan as a forward scan in reversed time between two tl.gather flips (False:
# Triton's reverse scan; timings in the module docstring).
_BWD_GATHER_FLIP = True
# Register caps (ptxas maxnreg) for the forward and backward kernels; None: Triton's choice. The backward takes 255
# registers (with 124 B of spills) at one warp a program, so 2 warps per scheduler, and it is latency-bound (see
# the README's scan section); a cap trades spills for warps. ptxas for sm_90 (triton 3.6, the 130M training launch;
# benchmarks/probes/kernel_regs.py, no GPU needed): 232 registers spill 244 B (still 2 warps per scheduler),
# 200: 484 B (2.5), 168: 752 B (3), 128: 1232 B (4). Eager launches only, for probes (scan_variants.py --maxnreg).
# Session 16 (H100, b8 d1536 l2048 n16, launchers as CUDA graphs, three rounds each): backward uncapped 1.345 ms, at
# 200 1.674, 168 2.360, 128 3.387; forward saving states 0.283, 0.347, 0.450, 0.822. Every cap is slower.
_FWD_MAXNREG = None
_BWD_MAXNREG = None


def _caps(maxnreg):
    return {} if maxnreg is None else {"maxnreg": maxnreg}


def block_n(dstate: int) -> int:
    return max(next_pow2(dstate), 2)


_ROWS_AHEAD = 8  # the forward reads B/C rows up to ROWS_AHEAD (4 or 8) steps past the end of the padded copy
# B/C rows the forward loads ahead of their step, 4 or 8. H100, b8 d1536 l2048 n16 bf16, kernel alone
# (benchmarks/probes/scan_sweep.py, session 3): 8 ahead 0.296 ms, 4 ahead 0.394. Session 19, with the L1 prefetch
# of the rows after next making them L1 hits, 4 ahead frees registers (local sm_90 build: 168 instead of 255 at
# (16, 16, 1), 96 at (8, 16, 1)) but is slower in every case (scan_fwd_configs.py, launcher as a CUDA graph, not
# saving / saving states): (16, 16, 1) 0.313 / 0.325 ms against 0.262 / 0.277 for the default, (32, 16, 2) 0.292 /
# 0.355, (8, 16, 1) 0.314 / 0.388, BLOCK_L 32 0.364-0.592; at b2 d5120 l8192 1.165-2.244 against 1.026 / 1.078.
_FWD_ROWS_AHEAD = 8
_RELAYOUT_BLOCK_T = 64
# Whether the forward prefetches the B/C rows of the block after next into L1: None, fwd_prefetch decides; True or
# False for probes.
_FWD_PREFETCH = None
_FWD_SEG = 0  # forward time segment (steps, rounded up to whole state chunks); 0: one segment


# The forward's step columns by one lane shuffle each (_lane_column) wherever lane_layout_fits allows; False: the
# generic column sums everywhere (probes).
_FWD_LANES = True
_FWD_LANE_Y = True  # with the lane columns, y summed over a channel's lanes once a block (_lane_reduce_scatter)


def lane_layout_fits(u: Tensor, delta: Tensor, z: Tensor | None) -> bool:
    """Whether the forward may take its step columns with ``_lane_column``: CUDA (inline PTX), Triton 3.6 (whose
    register layout of the kernel's [16, BLOCK_D] tiles the shuffle assumes, checked on the GPU by
    test_cuda_fwd_lane_columns_match_column_sums) and u, delta, z contiguous in time (the loads that fix that layout).
    The blocks must fit too (``_lanes_in_blocks``)."""
    if u.device.type != "cuda" or not triton.__version__.startswith("3.6."):
        return False
    return all(t is None or t.stride(2) == 1 for t in (u, delta, z))


def _lanes_in_blocks(BLOCK_D: int, BLOCK_L: int, BLOCK_N: int, num_warps: int) -> bool:
    # 16 steps and 16 states over the 4 x 8 lanes of each warp, 8 channels a warp: 4 values along the first axis per
    # thread, 4 threads along it (lane = i + 4 d)
    return (BLOCK_L, BLOCK_N) == (16, 16) and BLOCK_D == 8 * num_warps


def _bc_layouts(B: Tensor, C: Tensor, dim: int, BLOCK_N: int, seqlen_pad: int, wrap: bool):
    """Forward's views of B and C, each (varying, channels per group, tensor, strides (b, group-or-channel, l, n)).
    Varying B/C go time-major, fp32, zero-padded to (batch, ngroups, seqlen_pad + _ROWS_AHEAD, BLOCK_N): a step's
    row is then one unmasked vector load. One small kernel writes both copies, pads included."""
    lays, copies = [], []
    for M in (B, C):
        if M.dim() == 2:  # (dim, dstate): indexed per channel, no time stride
            lays.append((False, 1, M, (0, M.stride(0), 0, M.stride(1))))
            continue
        Mg = M if M.dim() == 4 else M.unsqueeze(1)
        batch, ngroups, dstate, seqlen = Mg.shape
        rows = seqlen_pad + _ROWS_AHEAD
        # One flat buffer: see selective_scan_bwd's dB (pytorch issue 181735).
        Mt = torch.empty((batch * ngroups * rows, BLOCK_N), device=M.device, dtype=torch.float32)
        lays.append((True, dim // ngroups, Mt, (ngroups * rows * BLOCK_N, rows * BLOCK_N, BLOCK_N, 1)))
        copies.append((Mg, Mt, ngroups, *Mg.stride()))
    if copies:
        batch, _, dstate, seqlen = copies[0][0].shape
        rows = seqlen_pad + _ROWS_AHEAD
        grid = (cdiv(rows, _RELAYOUT_BLOCK_T), batch * torch.sym_max(copies[0][2], copies[-1][2]), len(copies))
        launcher(_bc_time_major_kernel, wrap)[grid](
            *copies[0], *copies[-1], batch, dstate, seqlen, rows, BLOCK_T=_RELAYOUT_BLOCK_T, BLOCK_N=BLOCK_N,
            num_warps=4,
        )  # fmt: skip
    return lays


def _common_dpg(dim: int, B: Tensor, C: Tensor) -> int | None:
    """Channels per group that a channel block must not straddle (None: B and C time-invariant)."""
    dpgs = [dim // (M.shape[1] if M.dim() == 4 else 1) for M in (B, C) if M.dim() > 2]
    return math.gcd(*dpgs) if dpgs else None


def _check_config(BLOCK_D: int, dpg: int | None, state_chunk: int, BLOCK_L: int) -> None:
    # A channel block must lie inside one B/C group (one B/C tile per chunk, one dB/dC row per program).
    if dpg is not None and dpg % BLOCK_D != 0:
        raise ValueError(f"BLOCK_D = {BLOCK_D} must divide the channels per B/C group, {dpg}")
    if state_chunk % BLOCK_L != 0:
        raise ValueError(f"the forward's BLOCK_L = {BLOCK_L} must divide the saved-state interval {state_chunk}")


def _strides1(t: Tensor | None) -> tuple:
    return (0,) if t is None else (t.stride(0),)


def _strides3(t: Tensor | None) -> tuple:
    return (0, 0, 0) if t is None else tuple(t.stride())


def selective_scan_fwd(
    u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_states, *, wrap: bool,
    config=None, state_chunk: int | None = None, rows_ahead: int | None = None, seg: int | None = None,
    prefetch: int | None = None, lanes: bool | None = None, lane_y: bool | None = None,
):
    """Forward launch: out (u's dtype), last_state (fp32), chunk_states (fp32, the state entering every
    ``state_chunk`` steps, then the last state; empty unless save_states). ``config`` = (BLOCK_D, BLOCK_L,
    num_warps) overrides the heuristic, ``state_chunk`` the backward's BLOCK_L, ``rows_ahead`` (4 or 8)
    how far B/C rows are loaded ahead and ``seg`` the time segment (0: none) (tests, benchmarks)."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    dpg = _common_dpg(dim, B, C)
    lanes = (_FWD_LANES if lanes is None else lanes) and lane_layout_fits(u, delta, z)
    BLOCK_D, BLOCK_L, num_warps = fwd_block_sizes(dim, dstate, dpg, lanes) if config is None else config
    STATE_CHUNK = bwd_block_sizes(dim, dstate, dpg)[1] if state_chunk is None else state_chunk
    BLOCK_L = min(BLOCK_L, STATE_CHUNK)
    _check_config(BLOCK_D, dpg, STATE_CHUNK, BLOCK_L)
    BLOCK_N = block_n(dstate)
    lanes = lanes and _lanes_in_blocks(BLOCK_D, BLOCK_L, BLOCK_N, num_warps)  # the blocks as launched
    if prefetch is None:
        prefetch = _FWD_PREFETCH
    if prefetch is None:
        prefetch = fwd_prefetch(dstate, save_states, lambda: ptxas_major(u), lanes)
    seqlen_pad = (seqlen + BLOCK_L - 1) // BLOCK_L * BLOCK_L
    B_lay, C_lay = _bc_layouts(B, C, dim, BLOCK_N, seqlen_pad, wrap)
    # the kernel takes a varying copy's row stride to be BLOCK_N
    assert all(lay[3][2] == BLOCK_N for lay in (B_lay, C_lay) if lay[0])
    out = torch.empty_like(u)
    last_state = torch.empty(batch, dim, dstate, device=u.device, dtype=torch.float32)
    nchunks = (seqlen + STATE_CHUNK - 1) // STATE_CHUNK
    shape = (batch, nchunks + 1, dim, dstate) if save_states else (0,)
    chunk_states = torch.empty(shape, device=u.device, dtype=torch.float32)
    seg = _FWD_SEG if seg is None else seg
    f32 = dict(device=u.device, dtype=torch.float32)
    if seg:
        SEG = (seg + STATE_CHUNK - 1) // STATE_CHUNK * STATE_CHUNK  # whole saved-state chunks
        nseg = (seqlen + SEG - 1) // SEG
        nseg1 = torch.sym_max(nseg - 1, 1)  # pass 1's grid, never empty (no guard on seqlen)
        # The segments' end states from zero and their sums of dt (flat: see _bc_layouts on size-1 dims).
        seg_h, seg_dt = torch.empty(batch * nseg1 * dim * dstate, **f32), torch.empty(batch * nseg1 * dim, **f32)
    else:
        SEG, seg_h, seg_dt = 1 << 30, torch.empty(1, **f32), torch.empty(1, **f32)

    def launch(seg_pass, nprog):
        launcher(_selective_scan_fwd_kernel, wrap)[(cdiv(dim, BLOCK_D), batch, nprog)](
            u, delta, A, B_lay[2], C_lay[2],
            u if D is None else D, u if z is None else z, u if delta_bias is None else delta_bias,
            u if initial_state is None else initial_state,
            out, last_state, chunk_states if save_states else last_state, seg_h, seg_dt,
            dim, seqlen, dstate, B_lay[1], C_lay[1],
            *u.stride(), *delta.stride(), *A.stride(), *B_lay[3], *C_lay[3],
            *_strides1(D), *_strides3(z), *_strides1(delta_bias), *_strides3(initial_state), *out.stride(),
            DELTA_SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
            HAS_H0=initial_state is not None, SAVE_STATES=save_states, B_VARYING=B_lay[0], C_VARYING=C_lay[0],
            BLOCK_D=BLOCK_D, BLOCK_N=BLOCK_N, BLOCK_L=BLOCK_L, STATE_CHUNK=STATE_CHUNK,
            ROWS_AHEAD=_FWD_ROWS_AHEAD if rows_ahead is None else rows_ahead, SEG=SEG, SEG_PASS=seg_pass,
            FAST_MATH=u.device.type == "cuda", PREFETCH=bool(prefetch), LANE_COLUMNS=lanes,
            LANE_Y=lanes and (_FWD_LANE_Y if lane_y is None else lane_y),
            num_warps=num_warps, **_caps(_FWD_MAXNREG),
        )  # fmt: skip

    if seg:
        launch(1, nseg1)
        launch(2, nseg)
    else:
        launch(0, 1)
    return out, last_state, chunk_states


def _gradients_in_u_layout(u: Tensor, delta: Tensor, z: Tensor | None) -> bool:
    """True when u, delta (and z) share the channel-major layout, strides (l, b l, 1) (contiguous inputs get
    contiguous gradients either way)."""
    batch, dim, seqlen = u.shape
    same = delta.stride() == u.stride() and (z is None or z.stride() == u.stride())
    channel_major = u.stride() == (seqlen, batch * seqlen, 1)
    return same and channel_major


def _bc_args(M: Tensor, dim: int):
    """Backward's view of B or C, as given: (varying, channels per group, ngroups,
    strides (b, group-or-channel, n, l))."""
    if M.dim() == 2:  # (dim, dstate): indexed per channel
        return False, 1, dim, (0, M.stride(0), M.stride(1), 0)
    if M.dim() == 3:
        return True, dim, 1, (M.stride(0), 0, M.stride(1), M.stride(2))
    return True, dim // M.shape[1], M.shape[1], tuple(M.stride())


def selective_scan_bwd(
    dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_states,
    *, wrap: bool, config=None, gather_flip: bool | None = None, bc_copies: int | None = None,
):
    """Backward launch; returns du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state, each in its
    input's dtype (empty for an absent input). ``config`` = (BLOCK_D, BLOCK_L, num_warps) overrides the
    heuristic; its BLOCK_L must be the ``state_chunk`` of the forward that saved ``chunk_states``.
    ``gather_flip`` picks how the reverse scan runs (default ``_BWD_GATHER_FLIP``: a forward scan in
    reversed time between two tl.gather flips; False: Triton's reverse scan). ``bc_copies`` overrides
    _BWD_BC_COPIES."""
    batch, dim, seqlen = u.shape
    dstate = A.shape[1]
    dpg = _common_dpg(dim, B, C)
    BLOCK_D, BLOCK_L, num_warps = bwd_block_sizes(dim, dstate, dpg) if config is None else config
    _check_config(BLOCK_D, dpg, BLOCK_L, BLOCK_L)
    nchunks = (seqlen + BLOCK_L - 1) // BLOCK_L
    if chunk_states.numel() == 0:  # the forward ran without saving: recompute the chunk-start states
        _, _, chunk_states = selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, True, wrap=wrap, state_chunk=BLOCK_L
        )
    torch._check(chunk_states.shape[1] == nchunks + 1, lambda: "chunk_states do not match the kernel's chunk size")
    B_arg, C_arg = _bc_args(B, dim), _bc_args(C, dim)
    f32 = dict(device=u.device, dtype=torch.float32)
    # du, ddelta and dz in u's layout when delta and z share it (the Mamba-1 mixer's channel-major projections give
    # (b, d, l) tensors with strides (l, b l, 1)): the gradients then reach the projections' matmuls without a
    # transpose copy. Otherwise contiguous.
    # Allocated with torch.empty (and a transpose) rather than torch.empty_strided: AOT autograd's CSE merges identical
    # empty_strided calls (it leaves out only aten.empty), and the three gradients then shared one buffer that the
    # compiled graph cloned for each further written argument (two 50 MB copies per Mamba-1 layer and training step
    # at the 130M shape, seen in the Inductor code of a block).
    u_layout = _gradients_in_u_layout(u, delta, z)

    def grad_buffer(dtype):
        if u_layout:
            return torch.empty(dim, batch, seqlen, device=u.device, dtype=dtype).transpose(0, 1)
        return torch.empty(batch, dim, seqlen, device=u.device, dtype=dtype)

    du, ddelta = grad_buffer(u.dtype), grad_buffer(delta.dtype)
    dz = grad_buffer(z.dtype) if z is not None else du
    strides = du.stride()
    # Per-channel sums over time (dA, time-invariant dB/dC) come as NPART per-lane partials (see the kernel):
    # (batch, dim, dstate, NPART + 1), the last column unused.
    NPART = max(1, BLOCK_L // 8)
    parts = (batch * dim * dstate * (NPART + 1),)

    nblocks_d = cdiv(dim, BLOCK_D)
    copies = bc_copies or (min(_BWD_BC_COPIES, nblocks_d) if isinstance(nblocks_d, int) else _BWD_BC_COPIES)

    # Varying dB/dC: fp32 (copies, batch, ngroups, dstate, seqlen) added to atomically, both in one zero-filled
    # buffer (one fill) that the kernel gets once, with C's offset: two views of one buffer as two written kernel
    # arguments made the compiled training step's gradients wrong (torch 2.11, H100). Allocated flat: a size-1 ngroups
    # beside a symbolic seqlen trips Inductor's clone of written kernel arguments on torch 2.11 (pytorch issue
    # 181735). Time-invariant: per-lane partials.
    stride_B, stride_C = (batch * arg[2] * dstate * seqlen + _BWD_BC_COPY_PAD for arg in (B_arg, C_arg))
    n_B, n_C = (copies * stride if arg[0] else 0 for arg, stride in ((B_arg, stride_B), (C_arg, stride_C)))
    dBC = torch.zeros(n_B + n_C, **f32) if B_arg[0] or C_arg[0] else None
    dB = dBC if B_arg[0] else torch.empty(parts, **f32)
    if C_arg[0]:  # with B varying too, the kernel finds C's part in dB's buffer (u: a stand-in it never touches)
        dC = u if B_arg[0] else dBC
    else:
        dC = torch.empty(parts, **f32)
    dA_part = torch.empty(parts, **f32)
    # per (batch row, channel, state) sums of dA and time-invariant dB/dC, written after the loop
    dA = torch.empty(batch, dim, dstate, **f32)
    # (u: a stand-in the kernel never touches, as for the other absent pointers, rather than a buffer it writes)
    dBs, dCs = (torch.empty(batch, dim, dstate, **f32) if not arg[0] else u for arg in (B_arg, C_arg))
    dD, dbias = torch.empty(batch, dim, **f32), torch.empty(batch, dim, **f32)
    dh0 = torch.empty(batch, dim, dstate, **f32)
    gseed = torch.empty(2 * batch * dim * dstate, **f32)  # the carried g, two buffers alternating per tile
    grid = (nblocks_d, batch)
    launcher(_selective_scan_bwd_kernel, wrap)[grid](
        u, delta, A, B, C, u if D is None else D, u if z is None else z,
        u if delta_bias is None else delta_bias, dout, u if dlast_state is None else dlast_state, chunk_states,
        du, ddelta, dz, dA_part, dB, dC, dA, dBs, dCs, dD, dbias, dh0, gseed,
        batch, dim, seqlen, dstate, B_arg[1], C_arg[1], B_arg[2], C_arg[2], copies, stride_B, stride_C, n_B,
        *u.stride(), *delta.stride(), *A.stride(), *B_arg[3], *C_arg[3],
        *_strides1(D), *_strides3(z), *_strides1(delta_bias), *dout.stride(), *_strides3(dlast_state),
        strides[0], strides[1],
        DELTA_SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None, HAS_BIAS=delta_bias is not None,
        HAS_DLAST=dlast_state is not None, B_VARYING=B_arg[0], C_VARYING=C_arg[0],
        BLOCK_D=BLOCK_D, BLOCK_N=block_n(dstate), BLOCK_L=BLOCK_L, NPART=NPART, FAST_MATH=u.device.type == "cuda",
        GATHER_FLIP=_BWD_GATHER_FLIP if gather_flip is None else gather_flip, num_warps=num_warps,
        **_caps(_BWD_MAXNREG),
    )  # fmt: skip

    # The sums over batch rows (dA, time-invariant dB/dC, dD, d delta_bias) and over the varying dB/dC copies, each
    # into a new tensor of its input's shape and dtype (an op's outputs may not alias each other), in one launch.
    def empty():
        return u.new_empty(0)

    def reduction(M, src, n, K, stride=None):  # (source, result, n, K, stride); M None: absent (nothing to sum)
        if M is None:
            return (dA, empty(), 0, 0, 0)
        return (src, torch.empty(M.shape, device=u.device, dtype=M.dtype), n, K, n if stride is None else stride)

    def bc_reduction(M, arg, dM, dMs, stride):
        return reduction(M, dM, M.numel(), copies, stride) if arg[0] else reduction(M, dMs, dim * dstate, batch)

    sums = (
        reduction(A, dA, dim * dstate, batch), bc_reduction(B, B_arg, dB, dBs, stride_B),
        bc_reduction(C, C_arg, dBC[n_B:] if C_arg[0] else dC, dCs, stride_C),
        reduction(D, dD, dim, batch), reduction(delta_bias, dbias, dim, batch),
    )  # fmt: skip
    nprog = sum(cdiv(n, _SUM_BLOCK) for _, _, n, _, _ in sums)
    launcher(_bwd_sums_kernel, wrap)[(nprog,)](*(x for r in sums for x in r), BLOCK=_SUM_BLOCK, num_warps=4)

    return (
        du, ddelta, sums[0][1], sums[1][1], sums[2][1], sums[3][1], dz if z is not None else empty(), sums[4][1],
        empty() if initial_state is None else dh0.to(initial_state.dtype),
    )  # fmt: skip
