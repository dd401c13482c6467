"""Triton kernels for the Mamba-2 SSD chunked scan (see ssd.py for the math and the shape letters).

Forward: chunk_cumsum (dt bias/softplus/clamp fused with the within-chunk cumsum of dt*A) -> chunk_state_passing
(the state each chunk adds and the sequential pass over chunks in one kernel; the states entering each chunk are
stored in C's dtype for 16-bit inputs, as the reference does; for chunks of up to 128, the CUDA path's, the cumsum
is computed inside it: chunk_cumsum_state_passing_fwd, one launch) -> bmm_cb (C B^T once per chunk and group, float32,
instead of once per head) -> chunk_scan (reads C B^T, incoming-state term, D skip and z gate fused; with a gate and
a backward to come it also writes y + D x). Backward: the forward's kept chunk states (ssd.KEEP_STATES; else
chunk_state_passing again, states stored as the forward stores them), the gate's backward (gate_bwd: elementwise
from the kept y + D x, nothing without z; chunk_scan_bwd_dz recomputes y when z is given without it),
chunk_state_passing_bwd (the reverse pass over the chunks, each chunk's outputs adding their gradient to the state
entering it on the way, and the log-decay term of pairs spanning a chunk; with varlen-state gradients, chunk_state in
from-start mode then state_passing_bwd, those gradients added between the two), chunk_scan_bwd_dx (dx, dL/d dt, dD's
partial sums and the within-chunk pair sums of the log-decay gradient), chunk_scan_bwd_dcb (dL/d(C_t . B_s), the group's
heads summed once, in DCB_HEAD_SPLIT parts that dB and dC add as they read them), chunk_scan_bwd_dB / _dC (from it and
the chunk-boundary states; dC also gives dy_t . y_state_t, the pairs whose earlier index lies before the chunk; heads
split over a few programs when there are few chunks; no atomics anywhere, so results are deterministic), dt_bwd (the
log-decay gradient assembled from those pieces, dA, and dt back through clamp, softplus and bias), head_grads (each
head's dA, dt_bias and D gradients summed from their partial sums, one launch).

Layouts: dt_proc, dA_cumsum: (batch, nheads, nchunks, chunk_size) float32; chunk states and their gradients:
(batch, nchunks, nheads, headdim, dstate), contiguous; C B^T: (batch, nchunks, ngroups, chunk_size,
chunk_size). Every launch function takes ``wrap``: True inside the ops (torch.library.wrap_triton), False for
direct launches (the Triton interpreter in the tests). Block sizes come from the shape (no autotuning); all
dot operands are >= 16 wide; math in float32; float32 inputs use exact (ieee) dots, 16-bit inputs bf16/fp16
dots with float32 accumulation. First call: compile_async compiles a pass's kernels concurrently and builds their
launchers.

Measured on an H100 (torch 2.11, triton 3.6), bf16, b8 l2048 h24 p64 g1 n128 chunk 256 with D, z, dt_bias,
softplus (benchmarks/bench_ssd.py has the op's times beside the reference's; the README holds the table).
Since session 24 the op runs these kernels at chunk 128 when asked for 256 (ssd.CUDA_CHUNK_MAX): at 128,
chunk_scan 0.148 ms, bwd_dx 0.249, chunk_state_passing 0.059 (probes ssd_fwd_sweep, ssd_bwd_sweep,
ssd_passing_bwd: chunk_state_passing_bwd 0.088; ssd_db_split: dB 0.052), and the op 0.209 / 0.943 ms forward /
forward+backward as graphs. Session 25 (ssd_fused_cumsum, graphs, alternating): the cumsum inside the passing kernel
0.056 ms against 0.062-0.063 for the two launches (0.199 against 0.209 at b2 l8192 h80); the op 0.201 against
0.208 forward, 0.920-0.922 against 0.937-0.938 forward+backward (0.664-0.666 / 2.868-2.873 against 0.675-0.676 /
2.886-2.888 at l8192). Then chunk_scan's and dx's grids tile-major (SCAN_FWD_CONFIG, DX_TILE_MAJOR): chunk_scan
0.122 ms, dx 0.223, the op 0.185-0.186 / 0.888 (0.595 / 2.743-2.753 at l8192).
The numbers below are at chunk 256.
    Forward kernels: cumsum 0.008 ms, chunk_state_passing 0.065 (chunk_state alone was 0.058, plus a separate
    state passing), bmm_cb 0.013, chunk_scan 0.181 (0.310 with C B^T per head and float32 states).
    chunk_scan variants (benchmarks/probes/ssd_bisect.py): float32 C B^T with 32-wide
    column tiles 0.181, 64-wide 0.192, bf16 C B^T 0.182 / 0.192 (less exact for no gain). One pipeline stage
    is faster (0.162-0.167) but Triton 3.6 miscompiles it with a 16-bit incoming state (relative error 0.9 at
    b1 l777 h4 p32 g2 n64 chunk 64) and, without a C B^T input, faults with an illegal address: keep two.
    Session 23 (ssd_bisect.py with the incoming-state dot movable; the variant was not kept): one stage with the
    default 32-wide column tiles is correct at both of its shapes and takes 0.170 against 0.178 ms, but the
    64-wide one-stage build is still wrong (0.90). A miscompile that depends on the tile width could reach the
    32-wide build at another shape, so two stages stay. With the state dot after the column tiles, one stage
    at 64 wide is correct, 0.174 ms (32 wide: 0.188; two stages: 0.193-0.211): no gain either.
    Tried and removed (sessions 18-19, benchmarks/probes/ssd_fwd_sweep.py --scan-only): for the column tiles wholly
    before a row tile, exp(a_t - a_s) split into a row factor exp(a_t - a_t0) applied after the dots and a column
    factor exp(a_t0 - a_s) folded into x, so C B^T went into the dot as loaded (a per-program check of
    a_t <= a_t0 <= a_s kept both factors at most 1). Slower in every configuration: 0.224 against 0.178 ms at the
    default tiles, 0.196-0.339 against 0.189-0.320 at five others; 0.708 against 0.565 at b2 l8192 h80. The
    per-pair exp and mask it saved were not what the kernel waits on.
    Tried and removed (session 23, commit 7afd17f has the code, its tests and benchmarks/probes/ssd_fused_probe.py):
    the whole forward in one kernel. One program per (chunk, batch, head), a ticket from an atomic counter giving
    chunk-major order; it processes dt, builds its chunk's state, waits on a per-(batch, head) flag for the state
    entering the chunk and passes the state on through the final-state buffer, then computes the chunk's output,
    with C B^T either on the tensor cores per head or read from bmm_cb_fwd. Correct (GPU tests against this
    pipeline, bit-identical over repeated launches), but 255 registers a thread, two programs an SM, and not
    faster: 0.292-0.324 ms against 0.242 at the shape above, 0.241 at best (C B^T read, a 168-register cap,
    the wait before the state's dots, 32-wide state tiles; 0.242-0.41 for its neighbours); at b2 l8192 h80 0.728
    at best against 0.79. C B^T per head costs more dots than the pipeline's whole chunk_scan saves, and reading
    it brings the kernel back to chunk_scan's loop plus the state's dots at lower occupancy.
    Tried and removed (session 26, commit e86b163 has the code, its tests and benchmarks/probes/ssd_seq_fwd.py):
    the forward as one kernel walking the chunks in order, one program per (headdim block, head, batch row) with
    the state in registers and each chunk one 128-wide tile, so no chunk-boundary state reaches memory. Correct
    under the interpreter, but 0.408 ms at best (64-wide headdim blocks, 8 warps, one stage; 0.41-1.53 over
    fifteen configurations) against the pipeline's 0.186 at chunk 128, 1.609 against 0.595 at b2 l8192 h80:
    192-384 programs each waiting on a chain of sixteen chunk steps of about 25 us.
    Tried and removed (session 26, commit c50f4c8 has the code, its tests and benchmarks/probes/ssd_passing_scan.py):
    the state passing and the chunk scan in one grid, programs taking tickets from an atomic counter, the first
    ones walking the chunks as the passing kernel does and counting each chunk's stored state, the others scanning
    chunk-major, each waiting on its chunk's count. Correct (GPU tests, repeated launches bit-identical), but
    0.299 ms against 0.176 for the two launches at chunk 128 (0.977 against 0.585 at b2 l8192 h80): the passing's
    long-lived programs hold scan slots, and the scan's programs wait on a passing that runs slower beside them.
    Tried and removed (session 26, commit e95fa4a has the code, its tests and
    benchmarks/probes/ssd_gate_passing_bwd.py): the gate's backward inside chunk_state_passing_bwd's reverse pass
    (dout, z and the kept pre-gate output read instead of dy; dy and dz formed and stored there), so gate_bwd's
    launch went. 0.364-0.426 ms over five configurations against 0.182 for the two launches at chunk 128 (1.43-1.63
    against 0.63 at b2 l8192 h80): a few hundred programs walking the chunks one after another do not pull
    gate_bwd's 250 MB at its speed.
    Tried and removed (session 28, commit 4a3cc25 has the code, its tests and benchmarks/probes/ssd_pairs.py): the
    log-decay pair sums in chunk_scan_bwd_dcb instead of dx. dcb already forms each head's (dy_t . x_s)
    exp(a_t - a_s) dt_s tile; it took one C_t . B_s dot per tile for the group and stored each head's row and column
    sums of the pair tile as partial sums per tile (dt_bwd added them), so dx lost its third dot (x_s . dy_t) and
    the pair tile. dx: 0.191 ms against 0.222 (0.605 against 0.714 at b2 l8192 h80), as predicted, but dcb took
    0.158 at 16 warps and 0.170 at 8 against 0.056 (0.473 / 0.513 against 0.158): the per-head sums along both
    axes of the tile, inside the loop over heads, cost more than the dot they replace in dx (ptxas: 144 registers at
    8 warps against 95, so one program an SM). The op's graphed forward+backward 0.929-0.930 against 0.862-0.863 on
    two streams, 0.958 against 0.887-0.888 on one (2.826-2.836 / 2.921-2.922 against 2.647-2.650 / 2.731-2.737 at
    l8192). Correct (an interpreter test with NaN-filled outputs; SSD and Mamba-2 training GPU tests passed).
    Tried and removed (session 30, commit f986b77 has the code and benchmarks/probes/ssd_dx_heads.py): dx with a
    loop over heads. One program per (row tile, chunk, block of a group's heads) formed C_t . B_s once, for the whole
    chunk as one 128-wide tile of t, kept it in registers and looped over its heads, each adding only its decay, so
    the pipeliner could load the next head's x, dy and dend while this head's dots ran, and dx's per-head C_t . B_s
    dot went. Correct (outputs within 2e-7 of dx's, 9e-4 at 64-row tiles and 4 warps), but slower at every one of 36
    settings: 0.318 ms at best (12 heads a program, 64-row tiles, 4 warps, 2 stages; 0.32-0.64 for the others)
    against 0.235, 0.988 against 0.733 at b2 l8192 h80; the op's graphed forward+backward 0.954 against 0.861-0.863
    (2.930-2.937 against 2.641-2.647). ptxas: 255 registers with spills at 64-row tiles, 234-250 without at 32.
    The heads per program barely mattered (0.337 at 2, 0.318 at 12): the per-head C_t . B_s dot is not what dx
    waits on.
    Session 30, ncu on an H100 (benchmarks/probes/ssd_ncu.py; durations under ncu's clocks): dx 265 us at 251
    registers, 12.5% occupancy, 1.96 active warps a scheduler and 0.44 eligible, DRAM 24% busy; dC's dbc 75 us at
    255 registers (12.5%); chunk_scan 161 us at 128 (25%), DRAM 47%; the state passes 63 / 101 us at 136 / 165
    registers with 384 programs; gate_bwd DRAM 76%. Register caps (ptxas maxnreg, benchmarks/probes/ssd_caps.py,
    the op's graphed steps, alternating) are slower everywhere: dx at 216 / 192 / 168 / 128 gives forward+backward
    0.874 / 0.887-0.889 / 0.916-0.919 / 0.972-0.973 ms against 0.865-0.866 uncapped (2.681-2.998 against 2.655 at
    b2 l8192 h80); dC at 192 / 168 / 128, 0.898-1.021 against 0.864-0.866; chunk_scan at 112 / 96, forward 0.188 /
    0.191 against 0.185. The outputs were bit-identical: spills cost more than the warps they free.
    Session 31 (benchmarks/probes/ssd_persistent.py, graphs, three rounds): chunk_scan on a persistent grid, a few
    programs an SM walking the tile-major items, so the pipeliner could load the next item during this one's dots.
    Triton 3.6 pipelined nothing across items (flatten=True gave the nested loop's PTX) and the loop held 255
    registers (175 without loop-invariant hoisting), so two programs an SM: 0.225-0.244 ms against 0.122 (0.75-0.81
    against 0.388 at b2 l8192 h80), one an SM 0.434. z and x loaded before the loop: 0.140 (168 registers). Every
    dot of every SSD kernel lowers to wgmma (sm_90 PTX), none to mma.sync.
    Tried and removed (session 34, commit 9607f59 has the op's code and tests, benchmarks/probes/ssd_tma.py its own
    kernels): the whole-tile builds loading and storing their tiles through Hopper's tensor memory accelerator,
    host-built tensor descriptors over 2-D views of the tensors. Kernels alone (graphs, outputs bit for bit the
    same, two calls): the fused state passing 0.051 ms against 0.056 (0.167 against 0.196-0.197 at b2 l8192 h80),
    chunk_scan_fwd with the pre-gate output 0.129 against 0.133-0.134 (0.411-0.414 against 0.422-0.429), dx
    0.190-0.191 against 0.200-0.201 (0.608-0.613 against 0.653-0.658); dx at one stage under a 168-register cap
    0.166-0.167 (0.530-0.531), but Triton 3.6 miscompiles that build as it does the pointer build at one stage (dx
    wrong, then an illegal address, at whole chunks of headdim 32 / dstate 64). The op with them (ssd_tma.py --op in
    that commit, graphs, alternating): forward 0.174-0.175 against 0.180-0.181 ms, forward+backward 0.753-0.757
    against 0.767-0.773 (0.545-0.547 / 2.311-2.319 against 0.583-0.585 / 2.384-2.390 at l8192).
    Why not kept: torch.compile, torch.export and AOTInductor trace the op without Dynamo, and that tracing passes no
    descriptor metadata to Inductor (torch 2.11 and 2.13), which then fails on the descriptor arguments, so only
    untraced launches could take them; and there they cost host time where the op is host-bound: bench_ssd's eager
    forward 0.817 ms against 0.192, forward+backward 2.383 against 1.572 (eleven descriptors a forward built in
    Python and encoded by the launcher; not profiled further). Descriptors built on the device
    (tl.make_tensor_descriptor) trace and compile under Inductor, but each program builds its own: chunk_scan
    0.219 ms, dx 0.330.
    Backward kernels (session 8, benchmarks/probes/ssd_bwd.py, chunk-boundary states and their gradients
    stored in 16 bits): gate_bwd 0.100 with z (nothing without), bwd_dx 0.284-0.314 (with dD's sums), dcb 0.091,
    dB 0.085, dC 0.090, chunk_state_passing recompute 0.064, state_passing_bwd 0.048-0.079, dprev 0.055 (the last
    two 0.092 together in session 23, as chunk_state_passing_bwd 0.066; at b2 l8192 h80 0.298 and 0.235), dt_bwd
    0.022. With float32 states (session 7 and the float32 paths): dx 0.348, dB 0.194, dC 0.220, recompute 0.083,
    state_passing_bwd 0.063. At b2 l8192 h80: gate_bwd 0.32, dx 0.90-0.99, dB 0.18, dC 0.20, dt_bwd
    0.04-0.13, dcb 0.26 (float32 states: dx 1.12, dB 0.56, dC 0.64).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar

import torch
import torch.fx.experimental._config as _fx_config

from . import _plans
from ._triton import cdiv as _cdiv, launcher, next_pow2 as _next_pow2, tl, triton


_TARGET_PROGRAMS = 528  # about 4 per SM of an H100: below it, dB/dC split each group's heads over programs


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, _next_pow2(n))


def _ieee(*tensors) -> bool:
    return any(t.dtype == torch.float32 for t in tensors)


def _size_oblivious(shape):
    """A context in which a new tensor of ``shape``, a chunked layout whose sizes hold the chunk count, is taken as
    contiguous without guards. Traced with a dynamic length, a tensor's contiguity asks of each size whether it is 1,
    and for the chunk count ceil(seqlen / chunk) that became a guard nchunks != 1, which torch.export rejects for a
    length range that reaches down to one chunk (session 35: a Mamba-2 CUDA export with seqlen from 2 failed so; in
    session 36 the backward's recomputed chunk states, made contiguous, did the same). A contiguous tensor is
    contiguous whatever the answer, so the sizes are taken as not 1 without a guard (torch's backed_size_oblivious)
    where any is symbolic; nothing changes where all are ints."""
    if all(isinstance(n, int) for n in shape):
        return contextlib.nullcontext()
    return _fx_config.patch(backed_size_oblivious=True)


def _empty_chunked(*shape, dtype, device) -> torch.Tensor:
    """torch.empty for the chunked layouts (see _size_oblivious)."""
    with _size_oblivious(shape):
        return torch.empty(shape, dtype=dtype, device=device)


def _contiguous_chunked(t: torch.Tensor) -> torch.Tensor:
    """t.contiguous() for a tensor of a chunked layout (see _size_oblivious)."""
    with _size_oblivious(t.shape):
        return t.contiguous()


def _hint(n) -> int:
    """n, or for a SymInt the value it has in the example being traced, read without a guard. Only for launch
    heuristics that tune and never change results (a split of the work over programs): traced with a dynamic
    length, they then neither guard nor specialise on it, so torch.export takes any length range and
    torch.compile(dynamic=True) compiles once (session 36: dB/dC's head split guarded on the chunk count, which
    an export from one chunk up rejected); the code is tuned for the traced length."""
    if isinstance(n, int):
        return n
    from torch.fx.experimental import symbolic_shapes

    # optimization_hint in torch 2.13, hint_int before (torch 2.11 on the GPU machine)
    return (getattr(symbolic_shapes, "optimization_hint", None) or symbolic_shapes.hint_int)(n)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """a @ b accumulated in float32: exact float32 products when IEEE, else in a's (16-bit) dtype."""
    if IEEE:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        out = tl.dot(a, b.to(a.dtype))
    return out


# ----------------------------------------------------------------------------------------------------
# chunk cumsum
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _dt_proc(dt, bias, ok, dt_min, dt_max, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr):
    """dt (float32) + bias, softplus, clamp; 0 where not ok (padding beyond seqlen adds nothing and does not
    decay)."""
    if HAS_BIAS:
        dt += bias
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    if HAS_LIMIT:
        dt = tl.minimum(tl.maximum(dt, dt_min), dt_max)
    return tl.where(ok, dt, 0.0)


@triton.jit
def _chunk_cumsum_fwd_kernel(
    dt_ptr, A_ptr, bias_ptr, dtp_ptr, dacs_ptr,
    seqlen, nheads, dt_min, dt_max,
    s_dt_b, s_dt_l, s_dt_h,
    s_o_b, s_o_h, s_o_c, s_o_l,
    CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    pid_b, pid_c, pid_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_l = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + offs_l
    h_ok = offs_h < nheads
    mask = h_ok[:, None] & (t[None, :] < seqlen)
    dt = tl.load(dt_ptr + pid_b * s_dt_b + t[None, :] * s_dt_l + offs_h[:, None] * s_dt_h, mask=mask,
                 other=0.0).to(tl.float32)
    bias = 0.0
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)[:, None]
    dt = _dt_proc(dt, bias, mask, dt_min, dt_max, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
    A = tl.load(A_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    dA_cs = tl.cumsum(dt * A[:, None], axis=1)
    out = pid_b * s_o_b + offs_h[:, None] * s_o_h + pid_c * s_o_c + offs_l[None, :] * s_o_l
    tl.store(dtp_ptr + out, dt, mask=h_ok[:, None])
    tl.store(dacs_ptr + out, dA_cs, mask=h_ok[:, None])


def chunk_cumsum_fwd(dt, A, dt_bias, chunk_size, dt_softplus, dt_min, dt_max, has_limit, *, wrap):
    batch, seqlen, nheads = dt.shape
    nchunks = _cdiv(seqlen, chunk_size)
    dtp = _empty_chunked(batch, nheads, nchunks, chunk_size, device=dt.device, dtype=torch.float32)
    dA_cs = _empty_chunked(*dtp.shape, device=dt.device, dtype=torch.float32)
    block_h = min(_next_pow2(nheads), max(1, 4096 // chunk_size))
    grid = (batch, nchunks, _cdiv(nheads, block_h))
    _launch(_chunk_cumsum_fwd_kernel, wrap)[grid](
        dt, A, dt_bias if dt_bias is not None else A, dtp, dA_cs,
        seqlen, nheads, float(dt_min), float(min(dt_max, 3.0e38)),
        dt.stride(0), dt.stride(1), dt.stride(2),
        dtp.stride(0), dtp.stride(1), dtp.stride(2), dtp.stride(3),
        CHUNK=chunk_size, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit,
        BLOCK_H=block_h, num_warps=4,
    )
    return dtp, dA_cs


@triton.jit
def _dt_bwd_kernel(
    dt_ptr, bias_ptr, a_ptr, dtp_ptr, ddtx_ptr, extra_ptr, da_ptr, col_ptr, colstate_ptr, row_ptr, dchunk_ptr,
    out_ptr, dA_ptr, dbias_ptr,
    seqlen, nheads, nrows, row_tile, nparts, dt_min, dt_max,
    s_dt_b, s_dt_l, s_dt_h,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_r_b, s_r_h, s_r_c, s_r_k, s_r_l,
    s_k_b, s_k_h, s_k_c, s_k_m,
    s_o_b, s_o_l, s_o_h,
    s_d_b, s_d_c, s_d_h,
    CHUNK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
    HAS_EXTRA: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """The log-decay gradient and the way back to dt, for one chunk and a block of heads. dL/d(dt_k A), dl_k, is
    the sum of the decay-weighted pair terms whose span (s, t] holds k. With k in this chunk: pairs inside it
    (row minus column sums, reverse cumsum), pairs from before it to t >= k (reverse cumsum of da), pairs from
    s < k to after it (exclusive cumsum of colstate) and pairs spanning it whole (dchunk). No cumsum crosses a
    chunk, so nothing cancels at scale. Then dA's partial sum (dl . dt_proc) and dL/d dt_proc = ddt_x (+ extra)
    + dl A, back through the clamp (the gradient passes where min <= dt_proc <= max, like torch.clamp), the
    softplus and the bias: dL/d dt in (batch, seqlen, nheads). row holds nrows partial row sums, the one of row
    tile k written from position k * row_tile on; dchunk, nparts partial sums. With a bias, its gradient's partial
    sum over the chunk goes to dbias (dA's layout), so dL/d dt is written once, in dt's dtype (it was float32, then
    summed over (batch, seqlen) and copied to dt's dtype by torch: two more kernels, about 0.005 ms at b8 l2048
    h24 on an H100)."""
    pid_b, pid_c, pid_h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_l = tl.arange(0, CHUNK)
    t = pid_c * CHUNK + offs_l
    h_ok = offs_h < nheads
    mask = h_ok[:, None] & (t[None, :] < seqlen)
    loc = pid_b * s_a_b + offs_h[:, None] * s_a_h + pid_c * s_a_c + offs_l[None, :] * s_a_l
    w = tl.load(da_ptr + loc, mask=mask, other=0.0) - tl.load(col_ptr + loc, mask=mask, other=0.0)
    row_ptr += pid_b * s_r_b + offs_h[:, None] * s_r_h + pid_c * s_r_c + offs_l[None, :] * s_r_l
    for k in range(nrows):
        w += tl.load(row_ptr + k * s_r_k, mask=mask & (offs_l[None, :] >= k * row_tile), other=0.0)
    colstate = tl.load(colstate_ptr + loc, mask=mask, other=0.0)
    dchunk = tl.zeros((BLOCK_H,), dtype=tl.float32)
    for m in range(nparts):
        dchunk += tl.load(dchunk_ptr + pid_b * s_k_b + offs_h * s_k_h + pid_c * s_k_c + m * s_k_m, mask=h_ok,
                          other=0.0)
    dl = tl.cumsum(w, axis=1, reverse=True) + (tl.cumsum(colstate, axis=1) - colstate) + dchunk[:, None]
    dl = tl.where(mask, dl, 0.0)
    dtp = tl.load(dtp_ptr + loc, mask=mask, other=0.0)
    tl.store(dA_ptr + pid_b * s_d_b + pid_c * s_d_c + offs_h * s_d_h, tl.sum(dl * dtp, axis=1), mask=h_ok)
    A = tl.load(a_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)
    g = tl.load(ddtx_ptr + loc, mask=mask, other=0.0) + dl * A[:, None]
    if HAS_EXTRA:
        g += tl.load(extra_ptr + loc, mask=mask, other=0.0)
    v = tl.load(dt_ptr + pid_b * s_dt_b + t[None, :] * s_dt_l + offs_h[:, None] * s_dt_h, mask=mask,
                other=0.0).to(tl.float32)
    if HAS_BIAS:
        v += tl.load(bias_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)[:, None]
    if HAS_LIMIT:
        if SOFTPLUS:
            sp = tl.where(v <= 20.0, tl.log(1.0 + tl.exp(v)), v)
        else:
            sp = v
        g = tl.where((sp >= dt_min) & (sp <= dt_max), g, 0.0)
    if SOFTPLUS:
        g = g * tl.where(v <= 20.0, tl.sigmoid(v), 1.0)
    tl.store(out_ptr + pid_b * s_o_b + t[None, :] * s_o_l + offs_h[:, None] * s_o_h, g, mask=mask)
    if HAS_BIAS:
        tl.store(dbias_ptr + pid_b * s_d_b + pid_c * s_d_c + offs_h * s_d_h, tl.sum(tl.where(mask, g, 0.0), axis=1),
                 mask=h_ok)


def dt_bwd(dt, dt_bias, A, dtp, ddt_x, ddt_extra, da, col, colstate, row, dchunk, dt_softplus, dt_min, dt_max,
           has_limit, *, block_h=None, num_warps=4, wrap):
    """Returns dL/d dt (dt's dtype, (batch, seqlen, nheads)) and the float32 partial sums of dL/dA and of dL/d
    dt_bias (or None without a bias), one per (batch row, chunk): (batch, nchunks, nheads), for head_grads; from the
    backward's log-decay pieces (see _dt_bwd_kernel): ddt_x, ddt_extra (or None), da, col, colstate in dtp's layout, row
    (batch, nheads, nchunks, nrows, chunk_size), one partial sum per row tile of chunk_size // nrows, and dchunk
    (batch, nheads, nchunks, nparts). Entries past the sequence end, and those of row tile k before position
    k * chunk_size // nrows, are never read."""
    batch, seqlen, nheads = dt.shape
    _, _, nchunks, chunk_size = dtp.shape
    for name, v in (("ddt_x", ddt_x), ("ddt_extra", ddt_extra), ("da", da), ("col", col), ("colstate", colstate)):
        if v is not None and v.stride() != dtp.stride():
            raise ValueError(f"dt_bwd: {name} must have dtp's layout {tuple(dtp.stride())}, got {tuple(v.stride())}")
    out = torch.empty(batch, seqlen, nheads, device=dt.device, dtype=dt.dtype)
    dA = _empty_chunked(batch, nchunks, nheads, device=dt.device, dtype=torch.float32)
    dbias = _empty_chunked(*dA.shape, device=dt.device, dtype=torch.float32) if dt_bias is not None else dA
    block_h = block_h or min(_next_pow2(nheads), max(1, 1024 // chunk_size))
    _launch(_dt_bwd_kernel, wrap)[(batch, nchunks, _cdiv(nheads, block_h))](
        dt, dt_bias if dt_bias is not None else dt, A, dtp, ddt_x, ddt_extra if ddt_extra is not None else dtp,
        da, col, colstate, row, dchunk, out, dA, dbias,
        seqlen, nheads, row.shape[3], chunk_size // row.shape[3], dchunk.shape[3], float(dt_min),
        float(min(dt_max, 3.0e38)),
        *dt.stride(), *dtp.stride(), *row.stride(), *dchunk.stride(), *out.stride(), *dA.stride(),
        CHUNK=chunk_size, HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit,
        HAS_EXTRA=ddt_extra is not None, BLOCK_H=block_h, num_warps=num_warps,
    )
    return out, dA, dbias if dt_bias is not None else None


@triton.jit
def _head_grads_kernel(
    da_ptr, dbias_ptr, dd_ptr, dA_ptr, dbias_out_ptr, dD_ptr, nrows, nrows_d, headdim,
    s_a_r, s_a_h, s_d_r, s_d_h, s_o_h, s_o_p,
    HAS_BIAS: tl.constexpr, HAS_D: tl.constexpr, D_PER_P: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    """One head's parameter gradients from their float32 partial sums: dA and dt_bias over nrows rows, D over nrows_d
    rows (and over headdim where D is one value a head), stored in the outputs' dtypes."""
    h = tl.program_id(0)
    offs_r = tl.arange(0, BLOCK_R)
    acc_a = tl.zeros((BLOCK_R,), dtype=tl.float32)
    acc_b = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for r0 in range(0, nrows, BLOCK_R):
        rows = r0 + offs_r
        at = rows * s_a_r + h * s_a_h
        acc_a += tl.load(da_ptr + at, mask=rows < nrows, other=0.0)
        if HAS_BIAS:
            acc_b += tl.load(dbias_ptr + at, mask=rows < nrows, other=0.0)
    tl.store(dA_ptr + h, tl.sum(acc_a))
    if HAS_BIAS:
        tl.store(dbias_out_ptr + h, tl.sum(acc_b))
    if HAS_D:
        offs_p = tl.arange(0, BLOCK_P)
        p_ok = offs_p < headdim
        acc = tl.zeros((BLOCK_R, BLOCK_P), dtype=tl.float32)
        for r0 in range(0, nrows_d, BLOCK_R):
            rows = r0 + offs_r
            acc += tl.load(dd_ptr + rows[:, None] * s_d_r + h * s_d_h + offs_p[None, :],
                           mask=(rows < nrows_d)[:, None] & p_ok[None, :], other=0.0)
        dsum = tl.sum(acc, axis=0)
        if D_PER_P:
            tl.store(dD_ptr + h * s_o_h + offs_p * s_o_p, dsum, mask=p_ok)
        else:
            tl.store(dD_ptr + h * s_o_h, tl.sum(dsum))


def head_grads(da, dbias, dd, A, dt_bias, D, *, wrap):
    """(dL/dA, dL/d dt_bias or None, dL/dD or None) in A's, dt_bias's and D's dtypes and shapes, from dt_bwd's
    partial sums da and dbias ((batch, nchunks, nheads)) and chunk_scan_bwd_dx's dd ((rows, nheads, headdim) float32,
    or None): one launch, a program a head. torch's sums took 0.026 ms at b8 l2048 h24 and 0.113 at b2 l8192 h80
    (four reduction kernels; dd's alone 0.100 there) on an H100 (benchmarks/probes/ssd_op_profile.py)."""
    nheads = A.shape[0]
    dA = torch.empty(nheads, device=da.device, dtype=A.dtype)
    ddt_bias = torch.empty(nheads, device=da.device, dtype=dt_bias.dtype) if dbias is not None else None
    dD = torch.empty(D.shape, device=da.device, dtype=D.dtype) if dd is not None else None
    # dt_bwd's (batch, nchunks, nheads), contiguous (dbias has its layout), read as (batch * nchunks, nheads) rows:
    # not through a view, which would guard on the chunk count under tracing (see _size_oblivious)
    if da.dim() != 3 or da.stride(2) != 1 or da.stride(0) != da.shape[1] * da.stride(1):
        raise ValueError(f"head_grads: da must be a contiguous (batch, nchunks, nheads) tensor, got shape "
                         f"{tuple(da.shape)} and strides {da.stride()}")
    rows_d, headdim = (dd.shape[0], dd.shape[2]) if dd is not None else (0, 1)
    _launch(_head_grads_kernel, wrap)[(nheads,)](
        da, dbias if dbias is not None else da, dd if dd is not None else da, dA,
        ddt_bias if ddt_bias is not None else dA, dD if dD is not None else dA,
        da.shape[0] * da.shape[1], rows_d, headdim, da.stride(1), da.stride(2),
        *(dd.stride()[:2] if dd is not None else (0, 0)), *((*dD.stride(), 0)[:2] if dD is not None else (0, 0)),
        HAS_BIAS=dbias is not None, HAS_D=dd is not None, D_PER_P=dD is not None and dD.dim() == 2,
        BLOCK_R=64, BLOCK_P=_pow2(headdim),
    )
    return dA, ddt_bias, dD


# ----------------------------------------------------------------------------------------------------
# chunk state: out[c] = sum_s X_s^T w_s Y_s over one chunk (X: (.., headdim), Y: (.., dstate))
#   default:    X = x,  Y = B, w_s = exp(a_last - a_s) dt_s [seq_s == seq_last]   (state a chunk adds; the
#               op's forward uses the fused chunk_state_passing_fwd instead, the probes compare the two)
#   FROM_START: X = dy, Y = C, w_s = exp(a_s) [seq_s == seq of the previous chunk's end] (d state entering it)
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _chunk_state_sum(u_ptr, v_ptr, dtp_ptr, dacs_ptr, seq_ptr, start, limit, a_last, seq_ref, offs_p, offs_n, p_ok,
                     n_ok, s_u_l, s_u_p, s_v_l, s_v_n, s_a_l, s_q_l, FROM_START: tl.constexpr,
                     HAS_SEQ_IDX: tl.constexpr, IEEE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr):
    """sum_t u_t^T w_t v_t over one chunk's steps (start .. start + limit of u and v, whose pointers are at the batch
    and head or group), a (BLOCK_P, BLOCK_N) float32 tile: w_t = exp(a_t) (FROM_START) or exp(a_last - a_t) dt_t,
    zero where seq_t != seq_ref. dtp/dacs at the chunk, seq at the batch row."""
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k in range(0, limit, BLOCK_K):
        t = k + offs_k
        ok = t < limit
        u_t = tl.load(u_ptr + (start + t[None, :]) * s_u_l + offs_p[:, None] * s_u_p, mask=p_ok[:, None] & ok[None, :],
                      other=0.0)
        v_t = tl.load(v_ptr + (start + t[:, None]) * s_v_l + offs_n[None, :] * s_v_n, mask=ok[:, None] & n_ok[None, :],
                      other=0.0).to(tl.float32)
        a = tl.load(dacs_ptr + t * s_a_l, mask=ok, other=0.0)
        if FROM_START:
            w = tl.exp(a)
        else:
            w = tl.exp(a_last - a) * tl.load(dtp_ptr + t * s_a_l, mask=ok, other=0.0)
        if HAS_SEQ_IDX:
            seq = tl.load(seq_ptr + (start + t) * s_q_l, mask=ok, other=-1)
            w = tl.where(seq == seq_ref, w, 0.0)
        w = tl.where(ok, w, 0.0)
        acc += _dot(u_t, (v_t * w[:, None]).to(u_t.dtype), IEEE)
    return acc


@triton.jit
def _pn_block(pid_pn, headdim, dstate, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program pid_pn's (headdim, dstate) block of a state: its offsets and masks."""
    npb = tl.cdiv(headdim, BLOCK_P)
    offs_p = (pid_pn % npb) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (pid_pn // npb) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_p, offs_n, offs_p < headdim, offs_n < dstate


@triton.jit
def _chunk_state_fwd_kernel(
    x_ptr, y_ptr, dtp_ptr, dacs_ptr, seq_ptr, out_ptr,
    seqlen, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_y_b, s_y_l, s_y_g, s_y_n,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_o_b, s_o_c, s_o_h, s_o_p, s_o_n,
    CHUNK: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, FROM_START: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_bc, pid_h, pid_n = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    dtp_ptr += pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    dacs_ptr += pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    seq_ptr += pid_b * s_q_b
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    a_last = tl.load(dacs_ptr + (limit - 1) * s_a_l)
    seq_ref = 0
    if HAS_SEQ_IDX:
        if FROM_START:
            seq_ref = tl.load(seq_ptr + (start - 1) * s_q_l, mask=pid_c > 0, other=0)
        else:
            seq_ref = tl.load(seq_ptr + (start + limit - 1) * s_q_l)
    x_ptr += pid_b * s_x_b + pid_h * s_x_h
    y_ptr += pid_b * s_y_b + (pid_h // heads_per_group) * s_y_g
    acc = _chunk_state_sum(x_ptr, y_ptr, dtp_ptr, dacs_ptr, seq_ptr, start, limit, a_last, seq_ref, offs_p, offs_n,
                           offs_p < headdim, offs_n < dstate, s_x_l, s_x_p, s_y_l, s_y_n, s_a_l, s_q_l, FROM_START,
                           HAS_SEQ_IDX, IEEE, BLOCK_P, BLOCK_N, BLOCK_K)
    out_ptr += pid_b * s_o_b + pid_c * s_o_c + pid_h * s_o_h
    tl.store(out_ptr + offs_p[:, None] * s_o_p + offs_n[None, :] * s_o_n, acc,
             mask=(offs_p[:, None] < headdim) & (offs_n[None, :] < dstate))


def chunk_state_fwd(x, B, dtp, dA_cs, seq_idx, *, from_start=False, wrap):
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk_size = dtp.shape
    out = _empty_chunked(batch, nchunks, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
    block_n = min(128, _pow2(dstate))
    block_k = min(64, chunk_size)
    grid = (batch * nchunks, nheads, _cdiv(dstate, block_n))
    q = seq_idx if seq_idx is not None else dtp
    _launch(_chunk_state_fwd_kernel, wrap)[grid](
        x, B, dtp, dA_cs, q, out,
        seqlen, headdim, dstate, nheads // ngroups,
        *x.stride(), *B.stride(), *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *out.stride(),
        CHUNK=chunk_size, HAS_SEQ_IDX=seq_idx is not None, FROM_START=from_start, IEEE=_ieee(x, B),
        BLOCK_P=_pow2(headdim), BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=2,
    )
    return out


# ----------------------------------------------------------------------------------------------------
# state passing across chunks (sequential in the chunk index). Forward: fused with the chunk states, one
# program walking the chunks of one (batch, head, dstate block) in order, so the state each chunk adds never
# leaves registers. Backward: the reverse pass over the chunks' state gradients.
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _chunk_decay(dacs_ptr, seq_ptr, c, seqlen, s_a_c, s_a_l, s_q_l, CHUNK: tl.constexpr,
                 HAS_SEQ_IDX: tl.constexpr):
    """exp(total log-decay of chunk c), or 0 where chunk c starts a new sequence (its state is reset)."""
    last = tl.minimum(seqlen, (c + 1) * CHUNK) - 1
    scale = tl.exp(tl.load(dacs_ptr + c * s_a_c + (last - c * CHUNK) * s_a_l))
    if HAS_SEQ_IDX:
        scale = tl.where(_continues(seq_ptr, c, tl.load(seq_ptr + last * s_q_l), s_q_l, CHUNK), scale, 0.0)
    return scale


@triton.jit
def _continues(seq_ptr, c, seq_last, s_q_l, CHUNK: tl.constexpr):
    """Whether chunk c ends in the sequence of the token before it (seq_idx 0 before the first chunk): else the
    state entering it does not reach its end."""
    return seq_last == tl.load(seq_ptr + (c * CHUNK - 1) * s_q_l, mask=c > 0, other=0)


@triton.jit
def _chunk_state_passing_fwd_kernel(
    x_ptr, b_ptr, dtp_ptr, dacs_ptr, seq_ptr, init_ptr, prev_ptr, final_ptr, dt_ptr, A_ptr, bias_ptr,
    seqlen, nchunks, headdim, dstate, heads_per_group, dt_min, dt_max,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_i_b, s_i_h, s_i_p, s_i_n,
    s_s_b, s_s_c, s_s_h, s_s_p, s_s_n,
    s_f_b, s_f_h, s_f_p, s_f_n,
    s_dt_b, s_dt_l, s_dt_h,
    CHUNK: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, FUSED_DT: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_LIMIT: tl.constexpr,
):
    """prev[c] = S_in of chunk c (stored in prev's dtype), final = the state after the last chunk; the state a
    chunk adds is sum_s x_s^T exp(a_last - a_s) dt_s [seq_s == seq_last] B_s, as in _chunk_state_fwd_kernel.
    FUSED_DT (one tile a chunk, BLOCK_K == CHUNK): dt_proc and its cumsum come from dt, A and the bias here, as
    _chunk_cumsum_fwd_kernel computes them, and the programs of the first (headdim, dstate) block store them to
    dtp / dacs for the kernels after; else they are read from dtp / dacs."""
    pid_b, pid_h, pid_pn = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p, offs_n, p_ok, n_ok = _pn_block(pid_pn, headdim, dstate, BLOCK_P, BLOCK_N)
    pn_ok = p_ok[:, None] & n_ok[None, :]
    x_ptr += pid_b * s_x_b + pid_h * s_x_h
    b_ptr += pid_b * s_b_b + (pid_h // heads_per_group) * s_b_g
    dtp_ptr += pid_b * s_a_b + pid_h * s_a_h
    dacs_ptr += pid_b * s_a_b + pid_h * s_a_h
    seq_ptr += pid_b * s_q_b
    if HAS_INIT:
        run = tl.load(init_ptr + pid_b * s_i_b + pid_h * s_i_h + offs_p[:, None] * s_i_p + offs_n[None, :] * s_i_n,
                      mask=pn_ok, other=0.0).to(tl.float32)
    else:
        run = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    if FUSED_DT:
        dt_ptr += pid_b * s_dt_b + pid_h * s_dt_h
        A = tl.load(A_ptr + pid_h).to(tl.float32)
        bias = 0.0
        if HAS_BIAS:
            bias = tl.load(bias_ptr + pid_h).to(tl.float32)
        offs_k = tl.arange(0, CHUNK)
    for c in range(nchunks):
        start = c * CHUNK
        limit = tl.minimum(CHUNK, seqlen - start)
        seq_ref = 0
        if HAS_SEQ_IDX:
            seq_ref = tl.load(seq_ptr + (start + limit - 1) * s_q_l)
        if FUSED_DT:
            ok = offs_k < limit
            dtv = tl.load(dt_ptr + (start + offs_k) * s_dt_l, mask=ok, other=0.0).to(tl.float32)
            dtv = _dt_proc(dtv, bias, ok, dt_min, dt_max, HAS_BIAS, SOFTPLUS, HAS_LIMIT)
            a = tl.cumsum(dtv * A, axis=0)
            first = offs_k < tl.where(pid_pn == 0, CHUNK, 0)  # the first state block's programs store
            tl.store(dtp_ptr + c * s_a_c + offs_k * s_a_l, dtv, mask=first)
            tl.store(dacs_ptr + c * s_a_c + offs_k * s_a_l, a, mask=first)
            a_last = tl.sum(tl.where(offs_k == CHUNK - 1, a, 0.0))  # padding past the end holds the last value
            w = tl.exp(a_last - a) * dtv
            if HAS_SEQ_IDX:
                seq = tl.load(seq_ptr + (start + offs_k) * s_q_l, mask=ok, other=-1)
                w = tl.where(seq == seq_ref, w, 0.0)
            w = tl.where(ok, w, 0.0)
            u_t = tl.load(x_ptr + (start + offs_k[None, :]) * s_x_l + offs_p[:, None] * s_x_p,
                          mask=p_ok[:, None] & ok[None, :], other=0.0)
            v_t = tl.load(b_ptr + (start + offs_k[:, None]) * s_b_l + offs_n[None, :] * s_b_n,
                          mask=ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
            acc = _dot(u_t, (v_t * w[:, None]).to(u_t.dtype), IEEE)
            scale = tl.exp(a_last)
            if HAS_SEQ_IDX:
                scale = tl.where(_continues(seq_ptr, c, seq_ref, s_q_l, CHUNK), scale, 0.0)
        else:
            a_last = tl.load(dacs_ptr + c * s_a_c + (limit - 1) * s_a_l)
            acc = _chunk_state_sum(x_ptr, b_ptr, dtp_ptr + c * s_a_c, dacs_ptr + c * s_a_c, seq_ptr, start, limit,
                                   a_last, seq_ref, offs_p, offs_n, p_ok, n_ok, s_x_l, s_x_p, s_b_l, s_b_n, s_a_l,
                                   s_q_l, False, HAS_SEQ_IDX, IEEE, BLOCK_P, BLOCK_N, BLOCK_K)
            scale = _chunk_decay(dacs_ptr, seq_ptr, c, seqlen, s_a_c, s_a_l, s_q_l, CHUNK, HAS_SEQ_IDX)
        tl.store(prev_ptr + pid_b * s_s_b + c * s_s_c + pid_h * s_s_h + offs_p[:, None] * s_s_p
                 + offs_n[None, :] * s_s_n, run, mask=pn_ok)
        run = scale * run + acc
    tl.store(final_ptr + pid_b * s_f_b + pid_h * s_f_h + offs_p[:, None] * s_f_p + offs_n[None, :] * s_f_n, run,
             mask=pn_ok)


def chunk_state_passing_fwd(x, B, dtp, dA_cs, initial_states, seq_idx, *, prev_dtype=torch.float32, block_p=None,
                            block_n=None, block_k=128, num_warps=4, num_stages=2, wrap):
    """(prev: the state entering each chunk, (batch, nchunks, nheads, headdim, dstate) in prev_dtype; final:
    float32 (batch, nheads, headdim, dstate)). Replaces chunk_state_fwd + state_passing_fwd."""
    return _passing_fwd(x, B, dtp, dA_cs, initial_states, seq_idx, None, prev_dtype, block_p, block_n, block_k,
                        num_warps, num_stages, wrap)


FUSED_CUMSUM_MAX_CHUNK = 128  # chunk_cumsum_state_passing_fwd takes a chunk as one tile of the passing kernel


def chunk_cumsum_state_passing_fwd(x, B, dt, A, dt_bias, chunk_size, dt_softplus, dt_min, dt_max, has_limit,
                                   initial_states, seq_idx, *, prev_dtype=torch.float32, block_p=None, block_n=None,
                                   num_warps=4, num_stages=2, wrap):
    """chunk_cumsum_fwd then chunk_state_passing_fwd in one launch (chunk_size <= 128: one tile a chunk): returns
    (dtp, dA_cs, prev, final). The passing kernel's programs compute dt_proc and its cumsum for each chunk as they
    reach it; those of the first state block store them for the kernels after. H100, b8 l2048 h24 at chunk 128:
    see the module docstring."""
    if chunk_size > FUSED_CUMSUM_MAX_CHUNK:
        raise ValueError(f"chunk_cumsum_state_passing_fwd takes a chunk as one tile: chunk_size must be <= "
                         f"{FUSED_CUMSUM_MAX_CHUNK}, got {chunk_size}")
    batch, seqlen, nheads = dt.shape
    nchunks = _cdiv(seqlen, chunk_size)
    dtp = _empty_chunked(batch, nheads, nchunks, chunk_size, device=dt.device, dtype=torch.float32)
    dA_cs = _empty_chunked(*dtp.shape, device=dt.device, dtype=torch.float32)
    prev, final = _passing_fwd(x, B, dtp, dA_cs, initial_states, seq_idx,
                               (dt, A, dt_bias, dt_softplus, dt_min, dt_max, has_limit), prev_dtype, block_p,
                               block_n, chunk_size, num_warps, num_stages, wrap)
    return dtp, dA_cs, prev, final


def _passing_fwd(x, B, dtp, dA_cs, initial_states, seq_idx, dt_args, prev_dtype, block_p, block_n, block_k,
                 num_warps, num_stages, wrap):
    """The launch of _chunk_state_passing_fwd_kernel; dt_args (dt, A, dt_bias, dt_softplus, dt_min, dt_max,
    has_limit), or None to read dtp and dA_cs."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk_size = dtp.shape
    prev = _empty_chunked(batch, nchunks, nheads, headdim, dstate, device=x.device, dtype=prev_dtype)
    final = torch.empty(batch, nheads, headdim, dstate, device=x.device, dtype=torch.float32)
    block_p = block_p or _pow2(headdim)
    # H100, b8 l2048 h24 p64 n128: 16-bit prev 0.065 ms with 64 (0.078 with 128); float32 prev 0.082 ms with
    # 128 (0.114 with 64); the same order at b2 l8192 h80. Session 23 (ssd_fwd_sweep.py --passing-only, graphs):
    # 0.059 ms by default, 0.052-0.056 with three or four stages (0.195-0.212 against 0.208 at l8192), which moved
    # the op's graphed forward by 0.0015 ms (0.241 against 0.2425) and its forward+backward not at all: kept.
    # Session 24, chunk 128 (the op's kernel chunk, ssd.CUDA_CHUNK_MAX): the whole chunk as one 128-step tile
    # 0.059 ms against 0.070 with 64-step tiles (0.204 against 0.247 at l8192); eight other configurations slower.
    block_n = block_n or min(64 if prev_dtype != torch.float32 else 128, _pow2(dstate))
    init = initial_states if initial_states is not None else final
    q = seq_idx if seq_idx is not None else dtp
    fused = dt_args is not None
    dt, A, dt_bias, dt_softplus, dt_min, dt_max, has_limit = dt_args if fused else (dtp, dtp, None, False, 0.0,
                                                                                     0.0, False)
    grid = (batch, nheads, _cdiv(headdim, block_p) * _cdiv(dstate, block_n))
    _launch(_chunk_state_passing_fwd_kernel, wrap)[grid](
        x, B, dtp, dA_cs, q, init, prev, final, dt, A, dt_bias if dt_bias is not None else A,
        seqlen, nchunks, headdim, dstate, nheads // ngroups, float(dt_min), float(min(dt_max, 3.0e38)),
        *x.stride(), *B.stride(), *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *init.stride(), *prev.stride(), *final.stride(),
        *(dt.stride() if fused else (0, 0, 0)),
        CHUNK=chunk_size, HAS_INIT=initial_states is not None, HAS_SEQ_IDX=seq_idx is not None,
        IEEE=_ieee(x, B), BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=min(block_k, chunk_size), FUSED_DT=fused,
        HAS_BIAS=dt_bias is not None, SOFTPLUS=dt_softplus, HAS_LIMIT=has_limit,
        num_warps=num_warps, num_stages=num_stages,
    )
    return prev, final


def _passing_block(dim: int) -> int:
    return min(512, _pow2(dim))


@triton.jit
def _state_passing_bwd_kernel(
    dprev_ptr, dacs_ptr, prev_ptr, dfinal_ptr, seq_ptr, dend_ptr, dinit_ptr, dchunk_ptr,
    seqlen, nchunks, dim, dstate,
    s_s_b, s_s_c, s_s_h,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_f_b, s_f_h, s_f_p, s_f_n,
    s_q_b, s_q_l,
    s_i_b, s_i_h,
    s_k_b, s_k_h, s_k_c, s_k_m,
    CHUNK: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Reverse of state passing: dend[c] = dL/d(state after chunk c); dL/d(state entering c) =
    dprev[c] + scale_c dend[c], which is dend[c-1] (and d initial_states for c == 0). Also, per chunk, this
    block's part of <dend[c], scale_c S_in[c]>: the log-decay gradient of the pairs that span chunk c."""
    pid_b, pid_h, pid_m = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs = pid_m * BLOCK + tl.arange(0, BLOCK)
    ok = offs < dim
    dacs_ptr += pid_b * s_a_b + pid_h * s_a_h
    seq_ptr += pid_b * s_q_b
    dchunk_ptr += pid_b * s_k_b + pid_h * s_k_h + pid_m * s_k_m
    if HAS_DFINAL:
        g = tl.load(dfinal_ptr + pid_b * s_f_b + pid_h * s_f_h + (offs // dstate) * s_f_p + (offs % dstate) * s_f_n,
                    mask=ok, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BLOCK,), dtype=tl.float32)
    base = pid_b * s_s_b + pid_h * s_s_h + offs
    for i in range(nchunks):
        c = nchunks - 1 - i
        tl.store(dend_ptr + base + c * s_s_c, g, mask=ok)
        scale = _chunk_decay(dacs_ptr, seq_ptr, c, seqlen, s_a_c, s_a_l, s_q_l, CHUNK, HAS_SEQ_IDX)
        s_in = tl.load(prev_ptr + base + c * s_s_c, mask=ok, other=0.0).to(tl.float32)
        tl.store(dchunk_ptr + c * s_k_c, scale * tl.sum(g * s_in, axis=0))
        g = tl.load(dprev_ptr + base + c * s_s_c, mask=ok, other=0.0) + scale * g
    if HAS_INIT:
        tl.store(dinit_ptr + pid_b * s_i_b + pid_h * s_i_h + offs, g, mask=ok)


def state_passing_bwd(dprev, dA_cs, prev, dfinal, seq_idx, seqlen, has_init, *, dend_dtype=torch.float32, wrap):
    """Returns dend (gradient of the state after each chunk, stored in dend_dtype; carried in float32), dinit, and
    the per-chunk log-decay term <dend[c], scale_c S_in[c]> in partial sums: (batch, nheads, nchunks, nparts)."""
    batch, nchunks, nheads, headdim, dstate = dprev.shape
    dend = _empty_chunked(*dprev.shape, device=dprev.device, dtype=dend_dtype)
    dinit = torch.empty(batch, nheads, headdim, dstate, device=dprev.device, dtype=torch.float32)
    dim = headdim * dstate
    block = _passing_block(dim)
    nblocks = _cdiv(dim, block)
    dchunk = _empty_chunked(batch, nheads, nchunks, nblocks, device=dprev.device, dtype=torch.float32)
    f = dfinal if dfinal is not None else dinit
    q = seq_idx if seq_idx is not None else dA_cs
    _launch(_state_passing_bwd_kernel, wrap)[(batch, nheads, nblocks)](
        dprev, dA_cs, prev, f, q, dend, dinit, dchunk,
        seqlen, nchunks, dim, dstate,
        dprev.stride(0), dprev.stride(1), dprev.stride(2),
        *dA_cs.stride(),
        *f.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        dinit.stride(0), dinit.stride(1),
        *dchunk.stride(),
        CHUNK=dA_cs.shape[-1], HAS_DFINAL=dfinal is not None, HAS_INIT=has_init,
        HAS_SEQ_IDX=seq_idx is not None, BLOCK=block, num_warps=4,
    )
    return dend, dinit, dchunk


@triton.jit
def _chunk_state_passing_bwd_kernel(
    dy_ptr, c_ptr, dacs_ptr, seq_ptr, prev_ptr, dfinal_ptr, dend_ptr, dinit_ptr, dchunk_ptr,
    seqlen, nchunks, headdim, dstate, heads_per_group,
    s_y_b, s_y_l, s_y_h, s_y_p,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_s_b, s_s_c, s_s_h, s_s_p, s_s_n,
    s_f_b, s_f_h, s_f_p, s_f_n,
    s_i_b, s_i_h, s_i_p, s_i_n,
    s_k_b, s_k_h, s_k_c, s_k_m,
    CHUNK: tl.constexpr, HAS_DFINAL: tl.constexpr, HAS_INIT: tl.constexpr, HAS_SEQ_IDX: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The reverse pass over the chunks with the gradient each chunk's outputs send to its incoming state formed on
    the way, so it never leaves registers: dend[c] = g (the gradient of the state after chunk c), then g = sum_t
    exp(a_t) [seq_t == seq_before] dy_t^T C_t + scale_c g, the gradient of the state entering chunk c (d initial
    states after chunk 0). Also this block's part of <dend[c], scale_c S_in[c]>, as state_passing_bwd gives it.
    prev and dend share a layout: (batch, nchunks, nheads, headdim, dstate)."""
    pid_b, pid_h, pid_pn = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_p, offs_n, p_ok, n_ok = _pn_block(pid_pn, headdim, dstate, BLOCK_P, BLOCK_N)
    pn_ok = p_ok[:, None] & n_ok[None, :]
    dy_ptr += pid_b * s_y_b + pid_h * s_y_h
    c_ptr += pid_b * s_c_b + (pid_h // heads_per_group) * s_c_g
    dacs_ptr += pid_b * s_a_b + pid_h * s_a_h
    seq_ptr += pid_b * s_q_b
    dchunk_ptr += pid_b * s_k_b + pid_h * s_k_h + pid_pn * s_k_m
    states = pid_b * s_s_b + pid_h * s_s_h + offs_p[:, None] * s_s_p + offs_n[None, :] * s_s_n
    if HAS_DFINAL:
        g = tl.load(dfinal_ptr + pid_b * s_f_b + pid_h * s_f_h + offs_p[:, None] * s_f_p + offs_n[None, :] * s_f_n,
                    mask=pn_ok, other=0.0).to(tl.float32)
    else:
        g = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for i in range(nchunks):
        c = nchunks - 1 - i
        start = c * CHUNK
        limit = tl.minimum(CHUNK, seqlen - start)
        tl.store(dend_ptr + states + c * s_s_c, g, mask=pn_ok)
        scale = _chunk_decay(dacs_ptr, seq_ptr, c, seqlen, s_a_c, s_a_l, s_q_l, CHUNK, HAS_SEQ_IDX)
        s_in = tl.load(prev_ptr + states + c * s_s_c, mask=pn_ok, other=0.0).to(tl.float32)
        tl.store(dchunk_ptr + c * s_k_c, scale * tl.sum(tl.sum(g * s_in, axis=1), axis=0))
        seq_ref = 0
        if HAS_SEQ_IDX:
            seq_ref = tl.load(seq_ptr + (start - 1) * s_q_l, mask=c > 0, other=0)
        # from the start of the chunk: no dt is read (dacs stands in for it) and a_last is unused
        acc = _chunk_state_sum(dy_ptr, c_ptr, dacs_ptr + c * s_a_c, dacs_ptr + c * s_a_c, seq_ptr, start, limit, 0.0,
                               seq_ref, offs_p, offs_n, p_ok, n_ok, s_y_l, s_y_p, s_c_l, s_c_n, s_a_l, s_q_l, True,
                               HAS_SEQ_IDX, IEEE, BLOCK_P, BLOCK_N, BLOCK_K)
        g = acc + scale * g
    if HAS_INIT:
        tl.store(dinit_ptr + pid_b * s_i_b + pid_h * s_i_h + offs_p[:, None] * s_i_p + offs_n[None, :] * s_i_n, g,
                 mask=pn_ok)


# H100, 16-bit states (benchmarks/probes/ssd_passing_bwd.py, session 23): 0.066 ms at b8 l2048 h24 p64 n128
# against 0.092 for the two kernels, 0.236 against 0.297 at b2 l8192 h80; 64-step tiles with two stages took
# 0.114 and 0.430, 128-step ones 0.098 and 0.366. Four stages: 0.064 and 0.227 then; in session 24, at chunk 128
# (the op's kernel chunk), 0.088 against 0.092 and 0.313 against 0.324.
PASSING_BWD_CONFIG = dict(block_p=64, block_n=64, block_k=32, num_warps=4, num_stages=4)


def chunk_state_passing_bwd(dy, C, dA_cs, prev, dfinal, seq_idx, has_init, *, dend_dtype=torch.float32, config=None,
                            wrap):
    """chunk_state_fwd(dy, C, from_start=True) followed by state_passing_bwd, in one kernel (seq_idx included; the
    gradients of packed sequences' varlen states take the two kernels, which add their part to dprev between
    them). prev: the states entering the chunks, (batch, nchunks, nheads, headdim, dstate). Returns (dend, dinit,
    dchunk) as state_passing_bwd does."""
    batch, seqlen, nheads, headdim = dy.shape
    ngroups, dstate = C.shape[2], C.shape[3]
    _, _, nchunks, chunk_size = dA_cs.shape
    cfg = {**PASSING_BWD_CONFIG, **(config or {})}
    block_p, block_n = min(cfg["block_p"], _pow2(headdim)), min(cfg["block_n"], _pow2(dstate))
    dend = _empty_chunked(batch, nchunks, nheads, headdim, dstate, device=dy.device, dtype=dend_dtype)
    dinit = torch.empty(batch, nheads, headdim, dstate, device=dy.device, dtype=torch.float32)
    nparts = _cdiv(headdim, block_p) * _cdiv(dstate, block_n)
    dchunk = _empty_chunked(batch, nheads, nchunks, nparts, device=dy.device, dtype=torch.float32)
    prev = _contiguous_chunked(prev)  # dend's strides address both
    f = dfinal if dfinal is not None else dinit
    q = seq_idx if seq_idx is not None else dA_cs
    _launch(_chunk_state_passing_bwd_kernel, wrap)[(batch, nheads, nparts)](
        dy, C, dA_cs, q, prev, f, dend, dinit, dchunk,
        seqlen, nchunks, headdim, dstate, nheads // ngroups,
        *dy.stride(), *C.stride(), *dA_cs.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *prev.stride(), *f.stride(), *dinit.stride(), *dchunk.stride(),
        CHUNK=chunk_size, HAS_DFINAL=dfinal is not None, HAS_INIT=has_init, HAS_SEQ_IDX=seq_idx is not None,
        IEEE=_ieee(dy, C), BLOCK_P=block_p, BLOCK_N=block_n, BLOCK_K=min(cfg["block_k"], chunk_size),
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return dend, dinit, dchunk


# ----------------------------------------------------------------------------------------------------
# chunk scan: y_t = exp(a_t) C_t S_in^T + sum_{s<=t} (C_t . B_s) exp(a_t - a_s) dt_s x_s
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _bmm_cb_kernel(
    c_ptr, b_ptr, cb_ptr,
    seqlen, dstate,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_o_b, s_o_c, s_o_g, s_o_t, s_o_s,
    CHUNK: tl.constexpr, IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """cb[t, s] = C_t . B_s within one chunk and group, for the tiles on or below the diagonal (the others are
    never read); rows or columns past the sequence end are zero."""
    pid_bc, pid_g, pid_ts = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    ntiles: tl.constexpr = CHUNK // BLOCK_T
    pid_t, pid_s = pid_ts // ntiles, pid_ts % ntiles
    if pid_s <= pid_t:
        start = pid_c * CHUNK
        limit = tl.minimum(CHUNK, seqlen - start)
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_s = pid_s * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_n = tl.arange(0, BLOCK_N)
        n_ok = offs_n < dstate
        c_t = tl.load(c_ptr + pid_b * s_c_b + (start + offs_t[:, None]) * s_c_l + pid_g * s_c_g
                      + offs_n[None, :] * s_c_n, mask=(offs_t[:, None] < limit) & n_ok[None, :], other=0.0)
        b_s = tl.load(b_ptr + pid_b * s_b_b + (start + offs_s[None, :]) * s_b_l + pid_g * s_b_g
                      + offs_n[:, None] * s_b_n, mask=n_ok[:, None] & (offs_s[None, :] < limit), other=0.0)
        cb = _dot(c_t, b_s.to(c_t.dtype), IEEE)
        tl.store(cb_ptr + pid_b * s_o_b + pid_c * s_o_c + pid_g * s_o_g + offs_t[:, None] * s_o_t
                 + offs_s[None, :] * s_o_s, cb, mask=(offs_t[:, None] < CHUNK) & (offs_s[None, :] < CHUNK))


def bmm_cb_fwd(C, B, chunk_size, *, dtype=torch.float32, block_t=None, wrap):
    """C B^T of every chunk: (batch, nchunks, ngroups, chunk_size, chunk_size), computed once per group (its
    heads share it). float32 by default, as the reference keeps it: a bf16 copy saved 3% of chunk_scan's time
    on an H100 and raised its error by half."""
    batch, seqlen, ngroups, dstate = C.shape
    nchunks = _cdiv(seqlen, chunk_size)
    cb = _empty_chunked(batch, nchunks, ngroups, chunk_size, chunk_size, device=C.device, dtype=dtype)
    block_t = min(block_t or BLOCK_T_MAX, chunk_size)
    ntiles = chunk_size // block_t
    _launch(_bmm_cb_kernel, wrap)[(batch * nchunks, ngroups, ntiles * ntiles)](
        C, B, cb, seqlen, dstate,
        *C.stride(), *B.stride(), *cb.stride(),
        CHUNK=chunk_size, IEEE=_ieee(B, C), BLOCK_T=block_t, BLOCK_N=_pow2(dstate), num_warps=4,
    )
    return cb


@triton.jit
def _chunk_scan_y(
    x_ptr, b_ptr, c_ptr, cb_ptr, dtp_ptr, dacs_ptr, seq_ptr, prev_ptr,
    pid_c, start, limit, t0, headdim, dstate,
    s_x_l, s_x_p, s_b_l, s_b_n, s_c_l, s_c_n, s_cb_t, s_cb_s, s_a_l, s_q_l, s_s_p, s_s_n,
    HAS_SEQ_IDX: tl.constexpr, HAS_CB: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN: tl.constexpr = False,
):
    """SSM part of y for rows t0 .. t0+BLOCK_T of one chunk and head (pointers already at that chunk/head/group;
    seq_ptr at the batch row). C B^T is read from cb_ptr when HAS_CB, else computed per tile. Returns (the
    incoming-state part, the whole), (BLOCK_T, BLOCK_P) float32 tiles. EVEN: no bounds checks (see _even)."""
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    t_ok = offs_t < limit
    n_ok = offs_n < dstate
    p_ok = offs_p < headdim
    if EVEN:
        t_ok = tl.full([BLOCK_T], True, tl.int1)
        n_ok = tl.full([BLOCK_N], True, tl.int1)
        p_ok = tl.full([BLOCK_P], True, tl.int1)
    a_t = tl.load(dacs_ptr + offs_t * s_a_l, mask=t_ok, other=0.0)
    c_t = tl.load(c_ptr + offs_t[:, None] * s_c_l + offs_n[None, :] * s_c_n, mask=t_ok[:, None] & n_ok[None, :],
                  other=0.0)
    # Incoming state: a float32 state takes a float32 (tf32 for 16-bit C) dot; a 16-bit one (the forward of
    # 16-bit inputs, as the reference stores it) a 16-bit dot.
    s_t = tl.load(prev_ptr + offs_n[:, None] * s_s_n + offs_p[None, :] * s_s_p,
                  mask=n_ok[:, None] & p_ok[None, :], other=0.0)
    if s_t.dtype == tl.float32:
        acc = _dot(c_t.to(tl.float32), s_t, IEEE)
    else:
        acc = _dot(c_t, s_t, IEEE)
    scale = tl.exp(a_t)
    if HAS_SEQ_IDX:
        seq_t = tl.load(seq_ptr + (start + offs_t) * s_q_l, mask=t_ok, other=-1)
        seq_before = tl.load(seq_ptr + (start - 1) * s_q_l, mask=pid_c > 0, other=0)
        scale = tl.where(seq_t == seq_before, scale, 0.0)
    acc = acc * scale[:, None]
    acc_state = acc
    hi = tl.minimum(t0 + BLOCK_T, limit)
    for s0 in range(0, hi, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_ok = offs_s < limit
        if EVEN:
            s_ok = tl.full([BLOCK_S], True, tl.int1)
        if HAS_CB:
            cb = tl.load(cb_ptr + offs_t[:, None] * s_cb_t + offs_s[None, :] * s_cb_s,
                         mask=t_ok[:, None] & s_ok[None, :], other=0.0).to(tl.float32)
        else:
            b_s = tl.load(b_ptr + offs_s[None, :] * s_b_l + offs_n[:, None] * s_b_n,
                          mask=n_ok[:, None] & s_ok[None, :], other=0.0)
            cb = _dot(c_t, b_s.to(c_t.dtype), IEEE)
        a_s = tl.load(dacs_ptr + offs_s * s_a_l, mask=s_ok, other=0.0)
        dt_s = tl.load(dtp_ptr + offs_s * s_a_l, mask=s_ok, other=0.0)
        keep = (offs_t[:, None] >= offs_s[None, :]) & s_ok[None, :]
        if HAS_SEQ_IDX:
            seq_s = tl.load(seq_ptr + (start + offs_s) * s_q_l, mask=s_ok, other=-2)
            keep = keep & (seq_t[:, None] == seq_s[None, :])
        # where, not a product with exp(-inf): a tile of cb above the diagonal may be unwritten memory.
        cb = tl.where(keep, cb * tl.exp(a_t[:, None] - a_s[None, :]) * dt_s[None, :], 0.0)
        x_s = tl.load(x_ptr + offs_s[:, None] * s_x_l + offs_p[None, :] * s_x_p,
                      mask=s_ok[:, None] & p_ok[None, :], other=0.0)
        acc += _dot(cb.to(x_s.dtype), x_s, IEEE)
    return acc_state, acc


@triton.jit
def _tile_pids(TILE_MAJOR: tl.constexpr):
    """(chunk row of batch * nchunks, head, tile, number of tiles) of a grid (batch * nchunks, nheads, tiles), or
    with TILE_MAJOR of (tiles, nheads, batch * nchunks)."""
    if TILE_MAJOR:
        return tl.program_id(2), tl.program_id(1), tl.program_id(0), tl.num_programs(0)
    return tl.program_id(0), tl.program_id(1), tl.program_id(2), tl.num_programs(2)


@triton.jit
def _chunk_scan_fwd_kernel(
    x_ptr, b_ptr, c_ptr, cb_ptr, dtp_ptr, dacs_ptr, seq_ptr, prev_ptr, d_ptr, z_ptr, out_ptr, pre_ptr,
    seqlen, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_cb_b, s_cb_c, s_cb_g, s_cb_t, s_cb_s,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_s_b, s_s_c, s_s_h, s_s_p, s_s_n,
    s_d_h, s_d_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_o_b, s_o_l, s_o_h, s_o_p,
    CHUNK: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, HAS_CB: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, KEEP_PRE: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    TILE_MAJOR: tl.constexpr, EVEN: tl.constexpr,
):
    """out = (y + D x) silu(z); with KEEP_PRE, also y + D x (out's strides) for the backward's dz. Grid (batch *
    nchunks, nheads, row tiles), or with TILE_MAJOR (row tiles, nheads, batch * nchunks): a chunk's heads and row
    tiles in neighbouring programs."""
    pid_bc, pid_h, pid_t, ntiles = _tile_pids(TILE_MAJOR)
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    # Longest row tiles first: tile i walks i + 1 column tiles.
    t0 = (ntiles - 1 - pid_t) * BLOCK_T
    g = pid_h // heads_per_group
    x_ptr += pid_b * s_x_b + start * s_x_l + pid_h * s_x_h
    _, acc = _chunk_scan_y(
        x_ptr, b_ptr + pid_b * s_b_b + start * s_b_l + g * s_b_g, c_ptr + pid_b * s_c_b + start * s_c_l + g * s_c_g,
        cb_ptr + pid_b * s_cb_b + pid_c * s_cb_c + g * s_cb_g,
        dtp_ptr + pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c,
        dacs_ptr + pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c,
        seq_ptr + pid_b * s_q_b, prev_ptr + pid_b * s_s_b + pid_c * s_s_c + pid_h * s_s_h,
        pid_c, start, limit, t0, headdim, dstate,
        s_x_l, s_x_p, s_b_l, s_b_n, s_c_l, s_c_n, s_cb_t, s_cb_s, s_a_l, s_q_l, s_s_p, s_s_n,
        HAS_SEQ_IDX, HAS_CB, IEEE, BLOCK_T, BLOCK_S, BLOCK_P, BLOCK_N, EVEN,
    )
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    mask = (offs_t[:, None] < limit) & (offs_p[None, :] < headdim)
    if EVEN:
        mask = tl.full([BLOCK_T, BLOCK_P], True, tl.int1)
    if HAS_D:
        x_t = tl.load(x_ptr + offs_t[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask, other=0.0)
        d = tl.load(d_ptr + pid_h * s_d_h + offs_p * s_d_p, mask=offs_p < headdim, other=0.0).to(tl.float32)
        acc += x_t.to(tl.float32) * d[None, :]
    rows = pid_b * s_o_b + (start + offs_t[:, None]) * s_o_l + pid_h * s_o_h + offs_p[None, :] * s_o_p
    if HAS_Z:
        if KEEP_PRE:
            tl.store(pre_ptr + rows, acc, mask=mask)
        z = tl.load(z_ptr + pid_b * s_z_b + (start + offs_t[:, None]) * s_z_l + pid_h * s_z_h + offs_p[None, :] * s_z_p,
                    mask=mask, other=0.0).to(tl.float32)
        acc = acc * z * tl.sigmoid(z)
    tl.store(out_ptr + rows, acc, mask=mask)


BLOCK_T_MAX = 64  # row tiles of the chunk-scan kernels (and C B^T's tiles); the interpreter tests use 16


def _even(seqlen: int, chunk_size: int, headdim: int, block_p: int, dstate: int, block_n: int) -> bool:
    """Whether a chunk-scan kernel's tiles are all whole: every chunk full and the head and state dimensions
    exactly their blocks. (Symbolic sizes, under tracing, say no unless they are known.)"""
    return (isinstance(seqlen, int) and seqlen % chunk_size == 0 and headdim == block_p and dstate == block_n)


def _scan_blocks(chunk_size: int, headdim: int, dstate: int):
    block_t = min(BLOCK_T_MAX, chunk_size)
    return block_t, _pow2(headdim), _pow2(dstate)


def _d_strides(D):
    if D is None:
        return 0, 0
    return (D.stride(0), D.stride(1)) if D.dim() == 2 else (D.stride(0), 0)


# num_stages must stay 2: see the module docstring (a Triton 3.6 miscompile with one stage).
# tile_major: a chunk's heads and row tiles in neighbouring programs, which read the same C B^T and C tiles and, for
# a head's row tiles, the same state and x tiles, from L2 (session 25, benchmarks/probes/ssd_grid_order.py, H100,
# graphs): 0.122-0.123 ms against 0.139-0.140 chunk-major, 0.391-0.398 against 0.461-0.463 at b2 l8192 h80; the
# op's forward 0.185-0.186 against 0.201-0.202 ms. The same outputs bit for bit.
SCAN_FWD_CONFIG = dict(block_t=64, block_s=32, num_warps=4, num_stages=2, tile_major=True)
# chunk_scan_fwd without bounds checks where none can fail (see _even): 1752 sm_90 SASS instructions against 1936
# at b8 l2048 h24 (triton 3.6). Session 31 (ssd_even.py, as DX_EVEN): 0.119-0.120 ms against 0.122-0.125 (0.377-0.388
# against 0.388-0.396 at l8192); the op with both, forward 0.182 against 0.185 (0.581-0.585 against 0.595-0.599),
# forward+backward 0.843-0.844 against 0.861 (2.594-2.603 against 2.653-2.654).
SCAN_EVEN = True


def _tile_grid(batch_chunks: int, nheads: int, ntiles: int, tile_major: bool):
    """The grid of the chunk-scan kernels (see _tile_pids); chunk-major where batch * nchunks exceeds the 65535
    programs a grid's third dimension can take."""
    if tile_major and batch_chunks <= 65535:
        return (ntiles, nheads, batch_chunks), True
    return (batch_chunks, nheads, ntiles), False


def chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, seq_idx, *, cb=None, pre_gate=None, config=None, wrap):
    """out = (y + D x) silu(z). cb: bmm_cb_fwd's C B^T, or None to compute it per tile; pre_gate: a tensor like
    out to receive y + D x (with z only), or None; config: tile sizes and launch options (SCAN_FWD_CONFIG's
    keys), the default from the shape."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk_size = dtp.shape
    cfg = {**SCAN_FWD_CONFIG, **(config or {})}
    block_t, block_s = min(cfg["block_t"], chunk_size), min(cfg["block_s"], chunk_size)
    out = torch.empty_like(x)
    if pre_gate is not None and (pre_gate.shape != out.shape or pre_gate.stride() != out.stride()):
        raise ValueError(f"pre_gate must have out's shape {tuple(out.shape)} and strides {out.stride()}, got "
                         f"{tuple(pre_gate.shape)} and {pre_gate.stride()}")
    q = seq_idx if seq_idx is not None else dtp
    zz = z if z is not None else x
    c5 = cb if cb is not None else prev  # any 5-d tensor: never read without HAS_CB
    grid, tile_major = _tile_grid(batch * nchunks, nheads, _cdiv(chunk_size, block_t), cfg["tile_major"])
    even = cfg.get("even")
    if even is None:
        even = SCAN_EVEN and _even(seqlen, chunk_size, headdim, _pow2(headdim), dstate, _pow2(dstate))
    _launch(_chunk_scan_fwd_kernel, wrap)[grid](
        x, B, C, c5, dtp, dA_cs, q, prev, D if D is not None else dtp, zz, out,
        pre_gate if pre_gate is not None else out,
        seqlen, headdim, dstate, nheads // ngroups,
        *x.stride(), *B.stride(), *C.stride(), *c5.stride()[:3], *(cb.stride()[3:] if cb is not None else (0, 0)),
        *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *prev.stride(), *_d_strides(D), *zz.stride(), *out.stride(),
        CHUNK=chunk_size, HAS_SEQ_IDX=seq_idx is not None, HAS_CB=cb is not None, HAS_D=D is not None,
        HAS_Z=z is not None, KEEP_PRE=pre_gate is not None and z is not None, IEEE=_ieee(x, B, C), BLOCK_T=block_t,
        BLOCK_S=block_s, BLOCK_P=_pow2(headdim), BLOCK_N=_pow2(dstate), TILE_MAJOR=tile_major, EVEN=even,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out


@triton.jit
def _gate_grads(dout, out_x, z):
    """For out = out_x silu(z): (dy, dz) with dy = dout silu(z) rounded to dout's dtype (and used so everywhere),
    dz = dout out_x silu'(z) in float32."""
    z = z.to(tl.float32)
    sig = tl.sigmoid(z)
    dout32 = dout.to(tl.float32)
    return (dout32 * z * sig).to(dout.dtype), dout32 * out_x.to(tl.float32) * sig * (1.0 + z * (1.0 - sig))


@triton.jit
def _chunk_scan_bwd_dz_kernel(
    x_ptr, b_ptr, c_ptr, dtp_ptr, dacs_ptr, seq_ptr, prev_ptr, d_ptr, z_ptr, dout_ptr,
    dy_ptr, dz_ptr,
    seqlen, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_s_b, s_s_c, s_s_h, s_s_p, s_s_n,
    s_d_h, s_d_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_g_b, s_g_l, s_g_h, s_g_p,
    CHUNK: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, HAS_D: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """For a z gate: recomputes y (C B^T per tile: reading bmm_cb_fwd's was slower, 0.409 against 0.392 ms at
    b8 l2048 h24 on an H100), then dy = dout silu(z) (rounded to dout's dtype) and dz."""
    pid_bc, pid_h, pid_t = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    t0 = pid_t * BLOCK_T
    g = pid_h // heads_per_group
    x_ptr += pid_b * s_x_b + start * s_x_l + pid_h * s_x_h
    dacs_ptr += pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    _, y = _chunk_scan_y(
        x_ptr, b_ptr + pid_b * s_b_b + start * s_b_l + g * s_b_g, c_ptr + pid_b * s_c_b + start * s_c_l + g * s_c_g,
        c_ptr, dtp_ptr + pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c, dacs_ptr,
        seq_ptr + pid_b * s_q_b, prev_ptr + pid_b * s_s_b + pid_c * s_s_c + pid_h * s_s_h,
        pid_c, start, limit, t0, headdim, dstate,
        s_x_l, s_x_p, s_b_l, s_b_n, s_c_l, s_c_n, 0, 0, s_a_l, s_q_l, s_s_p, s_s_n,
        HAS_SEQ_IDX, False, IEEE, BLOCK_T, BLOCK_T, BLOCK_P, BLOCK_N,
    )
    offs_t = t0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    t_ok = offs_t < limit
    mask = t_ok[:, None] & (offs_p[None, :] < headdim)
    rows = pid_b * s_g_b + (start + offs_t[:, None]) * s_g_l + pid_h * s_g_h + offs_p[None, :] * s_g_p
    dout = tl.load(dout_ptr + rows, mask=mask, other=0.0)
    x_t = tl.load(x_ptr + offs_t[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask, other=0.0).to(tl.float32)
    if HAS_D:
        d = tl.load(d_ptr + pid_h * s_d_h + offs_p * s_d_p, mask=offs_p < headdim, other=0.0).to(tl.float32)
    zrows = pid_b * s_z_b + (start + offs_t[:, None]) * s_z_l + pid_h * s_z_h + offs_p[None, :] * s_z_p
    z = tl.load(z_ptr + zrows, mask=mask, other=0.0)
    if HAS_D:
        out_x = y + x_t * d[None, :]
    else:
        out_x = y
    dy, dz = _gate_grads(dout, out_x, z)
    tl.store(dz_ptr + zrows, dz, mask=mask)
    tl.store(dy_ptr + rows, dy, mask=mask)


def chunk_scan_bwd_dz(dout, x, B, C, dtp, dA_cs, prev, D, z, seq_idx, *, wrap):
    """For a z gate, with y recomputed: returns dy and dz."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk_size = dtp.shape
    block_t, block_p, block_n = _scan_blocks(chunk_size, headdim, dstate)
    ntiles = _cdiv(chunk_size, block_t)
    dout = dout.contiguous()
    z = z.contiguous()
    dy = torch.empty_like(dout)
    dz = torch.empty_like(z)
    q = seq_idx if seq_idx is not None else dtp
    _launch(_chunk_scan_bwd_dz_kernel, wrap)[(batch * nchunks, nheads, ntiles)](
        x, B, C, dtp, dA_cs, q, prev, D if D is not None else dtp, z, dout,
        dy, dz,
        seqlen, headdim, dstate, nheads // ngroups,
        *x.stride(), *B.stride(), *C.stride(), *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *prev.stride(), *_d_strides(D), *z.stride(), *dout.stride(),
        CHUNK=chunk_size, HAS_SEQ_IDX=seq_idx is not None, HAS_D=D is not None, IEEE=_ieee(x, B, C),
        BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4, num_stages=2,
    )
    return dy, dz


@triton.jit
def _gate_bwd_kernel(
    dout_ptr, z_ptr, pre_ptr, dy_ptr, dz_ptr,
    nrows, seqlen, headdim,
    s_g_b, s_g_l, s_g_h, s_g_p,
    s_z_b, s_z_l, s_z_h, s_z_p,
    s_o_b, s_o_l, s_o_h, s_o_p,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
):
    """One head and BLOCK_L (batch, time) rows of out = out_x silu(z): dy = dout silu(z) (rounded to dout's
    dtype, and used so everywhere), dz = dout out_x silu'(z)."""
    pid_r, pid_h = tl.program_id(0), tl.program_id(1)
    offs_r = pid_r * BLOCK_L + tl.arange(0, BLOCK_L)
    offs_p = tl.arange(0, BLOCK_P)
    r_ok = offs_r < nrows
    mask = r_ok[:, None] & (offs_p[None, :] < headdim)
    bb, ll = offs_r // seqlen, offs_r % seqlen
    grow = (bb * s_g_b + ll * s_g_l)[:, None] + pid_h * s_g_h + offs_p[None, :] * s_g_p
    dout = tl.load(dout_ptr + grow, mask=mask, other=0.0)
    zrow = (bb * s_z_b + ll * s_z_l)[:, None] + pid_h * s_z_h + offs_p[None, :] * s_z_p
    z = tl.load(z_ptr + zrow, mask=mask, other=0.0)
    out_x = tl.load(pre_ptr + (bb * s_o_b + ll * s_o_l)[:, None] + pid_h * s_o_h + offs_p[None, :] * s_o_p,
                    mask=mask, other=0.0)
    dy, dz = _gate_grads(dout, out_x, z)
    tl.store(dz_ptr + zrow, dz, mask=mask)
    tl.store(dy_ptr + grow, dy, mask=mask)


@triton.jit
def _gate_bwd_flat_kernel(dout_ptr, z_ptr, pre_ptr, dy_ptr, dz_ptr, numel, BLOCK: tl.constexpr):
    """_gate_bwd_kernel over contiguous tensors of one layout, as flat arrays: BLOCK elements a program."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    dout = tl.load(dout_ptr + offs, mask=ok, other=0.0)
    z = tl.load(z_ptr + offs, mask=ok, other=0.0)
    out_x = tl.load(pre_ptr + offs, mask=ok, other=0.0)
    dy, dz = _gate_grads(dout, out_x, z)
    tl.store(dz_ptr + offs, dz, mask=ok)
    tl.store(dy_ptr + offs, dy, mask=ok)


# gate_bwd over flat arrays where dout, z and the pre-gate output are all contiguous (the usual case: the pre-gate
# output is allocated like out), GATE_FLAT_BLOCK values a program; else a program per head and block of (batch,
# time) rows. Session 32, H100 (benchmarks/probes/ssd_gate_flat.py, graphs, alternating): 0.086 ms against 0.096
# (0.280 against 0.314 at b2 l8192 h80), outputs bit for bit the same; the op's forward+backward 0.813-0.815 against
# 0.827-0.829 (2.552 against 2.577).
GATE_FLAT = True
GATE_FLAT_BLOCK = 2048


def gate_bwd(dout, z, pre_gate, *, block_l=64, flat=None, wrap):
    """Returns dy (dout itself without z; no launch) and dz (or None), from the kept pre-gate output (the
    forward's y + D x). dD's sums are taken by chunk_scan_bwd_dx, which reads dy and x anyway. flat: GATE_FLAT's
    choice by default (taken only where pre_gate is contiguous)."""
    dout = dout.contiguous()
    if z is None:
        return dout, None
    batch, seqlen, nheads, headdim = z.shape
    nrows = batch * seqlen
    z = z.contiguous()  # dz is written with z's strides
    dy, dz = torch.empty_like(dout), torch.empty_like(z)
    if (GATE_FLAT if flat is None else flat) and pre_gate.is_contiguous():
        _launch(_gate_bwd_flat_kernel, wrap)[(_cdiv(z.numel(), GATE_FLAT_BLOCK),)](
            dout, z, pre_gate, dy, dz, z.numel(), BLOCK=GATE_FLAT_BLOCK, num_warps=4)
        return dy, dz
    _launch(_gate_bwd_kernel, wrap)[(_cdiv(nrows, block_l), nheads)](
        dout, z, pre_gate, dy, dz,
        nrows, seqlen, headdim,
        *dout.stride(), *z.stride(), *pre_gate.stride(),
        BLOCK_L=block_l, BLOCK_P=_pow2(headdim), num_warps=4,
    )
    return dy, dz


# ----------------------------------------------------------------------------------------------------
# backward of the scan: dx, dB, dC
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _chunk_scan_bwd_dx_kernel(
    x_ptr, b_ptr, c_ptr, dtp_ptr, dacs_ptr, seq_ptr, dy_ptr, dend_ptr, d_ptr, extra_ptr,
    dx_ptr, ddt_ptr, col_ptr, colstate_ptr, row_ptr, dd_ptr,
    seqlen, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_b_b, s_b_l, s_b_g, s_b_n,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_s_b, s_s_c, s_s_h, s_s_p, s_s_n,
    s_g_b, s_g_l, s_g_h, s_g_p,
    s_d_h, s_d_p,
    s_e_b, s_e_l, s_e_h, s_e_p,
    s_r_b, s_r_h, s_r_c, s_r_k, s_r_l,
    s_dd_r, s_dd_h, s_dd_k,
    s_dx_b, s_dx_l, s_dx_h, s_dx_p,
    CHUNK: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, HAS_D: tl.constexpr, HAS_EXTRA: tl.constexpr,
    IEEE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    TILE_MAJOR: tl.constexpr, EVEN: tl.constexpr,
):
    """Rows s: G_s B_s = exp(a_last - a_s) dend B_s + sum_{t>=s} (B_s . C_t) exp(a_t - a_s) dy_t;
    dx_s = dt_s G_s B_s + D dy_s; dL/d dt_s = x_s . G_s B_s; with D, this block's sums over s of dy_s x_s (dD).
    Log-decay terms, from the pair values P_ts = (C_t . B_s) exp(a_t - a_s) dt_s (dy_t . x_s) of this chunk
    (one float32 tile gives both sums, so they cancel exactly where they should): column sums over t (col),
    row sums over s per block of s (row, summed later), and x_s . dx_s of the state part (colstate)."""
    pid_bc, pid_h, pid_s, _ = _tile_pids(TILE_MAJOR)
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    s0 = pid_s * BLOCK_T
    g = pid_h // heads_per_group
    x_ptr += pid_b * s_x_b + start * s_x_l + pid_h * s_x_h
    b_ptr += pid_b * s_b_b + start * s_b_l + g * s_b_g
    c_ptr += pid_b * s_c_b + start * s_c_l + g * s_c_g
    a_off = pid_b * s_a_b + pid_h * s_a_h + pid_c * s_a_c
    dtp_ptr += a_off
    dacs_ptr += a_off
    seq_ptr += pid_b * s_q_b
    dy_ptr += pid_b * s_g_b + start * s_g_l + pid_h * s_g_h
    row_ptr += pid_b * s_r_b + pid_h * s_r_h + pid_c * s_r_c + pid_s * s_r_k
    offs_s = s0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    s_ok = offs_s < limit
    n_ok = offs_n < dstate
    p_ok = offs_p < headdim
    if EVEN:  # every chunk whole, headdim == BLOCK_P, dstate == BLOCK_N: no bounds to check
        s_ok = tl.full([BLOCK_T], True, tl.int1)
        n_ok = tl.full([BLOCK_N], True, tl.int1)
        p_ok = tl.full([BLOCK_P], True, tl.int1)
    mask = s_ok[:, None] & p_ok[None, :]
    a_s = tl.load(dacs_ptr + offs_s * s_a_l, mask=s_ok, other=0.0)
    dt_s = tl.load(dtp_ptr + offs_s * s_a_l, mask=s_ok, other=0.0)
    a_last = tl.load(dacs_ptr + (limit - 1) * s_a_l)
    x_s = tl.load(x_ptr + offs_s[:, None] * s_x_l + offs_p[None, :] * s_x_p, mask=mask, other=0.0)
    b_s = tl.load(b_ptr + offs_s[:, None] * s_b_l + offs_n[None, :] * s_b_n, mask=s_ok[:, None] & n_ok[None, :],
                  other=0.0)
    e_t = tl.load(dend_ptr + pid_b * s_s_b + pid_c * s_s_c + pid_h * s_s_h + offs_n[:, None] * s_s_n
                  + offs_p[None, :] * s_s_p, mask=n_ok[:, None] & p_ok[None, :], other=0.0)
    acc = _dot(b_s.to(e_t.dtype), e_t, IEEE)  # 16-bit dend (16-bit inputs): a 16-bit dot
    scale = tl.exp(a_last - a_s)
    if HAS_SEQ_IDX:
        seq_s = tl.load(seq_ptr + (start + offs_s) * s_q_l, mask=s_ok, other=-1)
        seq_last = tl.load(seq_ptr + (start + limit - 1) * s_q_l)
        scale = tl.where(seq_s == seq_last, scale, 0.0)
    acc = acc * tl.where(s_ok, scale, 0.0)[:, None]
    x32 = x_s.to(tl.float32)
    tl.store(colstate_ptr + a_off + offs_s * s_a_l, dt_s * tl.sum(acc * x32, axis=1), mask=s_ok)
    col = tl.zeros((BLOCK_T,), dtype=tl.float32)
    for t0 in range(s0, limit, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_ok = offs_t < limit
        if EVEN:
            t_ok = tl.full([BLOCK_T], True, tl.int1)
        # C_t . B_s per head, not read from bmm_cb_fwd's tiles (fp32, read transposed): 0.364 ms against 0.399
        # at b8 l2048 h24, 1.155 against 1.255 at b2 l8192 h80 (H100, benchmarks/probes/ssd_bwd.py). Session 23:
        # 32-wide column tiles under the 64-row tiles, with three stages, took 0.302 against 0.305 ms (0.971
        # against 0.972 at l8192; two stages 0.354, 16 wide 0.357) and left the op's graphed forward+backward at
        # 1.080 ms: not kept. Session 24, at chunk 128 (commit 6c910b6 has the code): read from
        # bmm_cb_fwd(B, C, upper=True), computed once per group and coalesced, dx took 0.281 ms with the bmm against
        # 0.233 (0.881 against 0.746 at l8192), and the op's forward+backward 1.008 against 0.959: removed.
        c_t = tl.load(c_ptr + offs_t[None, :] * s_c_l + offs_n[:, None] * s_c_n,
                      mask=n_ok[:, None] & t_ok[None, :], other=0.0)
        cb = _dot(b_s, c_t.to(b_s.dtype), IEEE)
        a_t = tl.load(dacs_ptr + offs_t * s_a_l, mask=t_ok, other=0.0)
        keep = (offs_t[None, :] >= offs_s[:, None]) & t_ok[None, :]
        if HAS_SEQ_IDX:
            seq_t = tl.load(seq_ptr + (start + offs_t) * s_q_l, mask=t_ok, other=-2)
            keep = keep & (seq_s[:, None] == seq_t[None, :])
        cb = tl.where(keep, cb * tl.exp(a_t[None, :] - a_s[:, None]), 0.0)
        dy_t = tl.load(dy_ptr + offs_t[:, None] * s_g_l + offs_p[None, :] * s_g_p, mask=t_ok[:, None] & p_ok[None, :],
                       other=0.0)
        acc += _dot(cb.to(dy_t.dtype), dy_t, IEEE)
        pair = cb * dt_s[:, None] * _dot(x_s, tl.trans(dy_t), IEEE)  # P_ts, stored transposed: (s, t)
        col += tl.sum(pair, axis=1)
        tl.store(row_ptr + offs_t * s_r_l, tl.sum(pair, axis=0), mask=t_ok)
    tl.store(col_ptr + a_off + offs_s * s_a_l, col, mask=s_ok)
    tl.store(ddt_ptr + a_off + offs_s * s_a_l, tl.sum(acc * x32, axis=1), mask=s_ok)
    dx = acc * dt_s[:, None]
    rows = pid_b * s_dx_b + (start + offs_s[:, None]) * s_dx_l + pid_h * s_dx_h + offs_p[None, :] * s_dx_p
    if HAS_EXTRA:
        dx += tl.load(extra_ptr + pid_b * s_e_b + (start + offs_s[:, None]) * s_e_l + pid_h * s_e_h
                      + offs_p[None, :] * s_e_p, mask=mask, other=0.0)
    if HAS_D:
        d = tl.load(d_ptr + pid_h * s_d_h + offs_p * s_d_p, mask=p_ok, other=0.0).to(tl.float32)
        dy_s = tl.load(dy_ptr + offs_s[:, None] * s_g_l + offs_p[None, :] * s_g_p, mask=mask, other=0.0)
        dx += dy_s.to(tl.float32) * d[None, :]
        tl.store(dd_ptr + pid_bc * s_dd_r + pid_h * s_dd_h + pid_s * s_dd_k + offs_p,
                 tl.sum(dy_s.to(tl.float32) * x32, axis=0), mask=p_ok)
    tl.store(dx_ptr + rows, dx, mask=mask)


# Session 25, tile-major (ssd_bwd_sweep, do_bench, b8 l2048 h24 / b2 l8192 h80): dx's defaults (64-row blocks, 4
# warps, 2 stages) 0.237 / 0.734 ms; one stage 0.241 / 0.756; 32-row blocks 0.280-0.467 / 0.866-1.504; 8 warps or
# 3 stages 0.367-0.470 / 1.176-1.531.
# dx's grid as chunk_scan's (see SCAN_FWD_CONFIG): 0.223 ms against 0.236 chunk-major, 0.716 against 0.755 at b2
# l8192 h80 (ssd_grid_order, session 25); with both, the op's forward+backward 0.888 against 0.922 ms (2.743-2.753
# against 2.872 at l8192), alternating in one run.
DX_TILE_MAJOR = True
# dx without bounds checks where none can fail (see _even): its sm_90 SASS at b8 l2048 h24 has 2056 instructions
# against 2384 (triton 3.6), and dx is issue-bound (session 30's ncu). Session 31, H100, graphs
# (benchmarks/probes/ssd_even.py): 0.208-0.209 ms against 0.224-0.225 (0.671 against 0.717-0.721 at b2 l8192 h80),
# outputs bit for bit the same; the op's forward+backward 0.847-0.849 against 0.861.
DX_EVEN = True
# Two stages stay, uncapped. Session 31 (benchmarks/probes/ssd_dx_occupancy.py, H100, graphs, three rounds): at two
# stages dx takes 91 KB of shared memory, which alone holds it to two programs an SM whatever its registers (so
# session 30's caps, at two stages, could only lose: capped at 168, 0.234 ms); at one stage 41 KB, and capped at 168
# registers (80 B of spills) three programs fit: dx 0.176 ms against 0.208 (0.564 against 0.670 at b2 l8192 h80),
# bit for bit the same outputs at both shapes, and the op's forward+backward 0.816 against 0.846 (2.478-2.479 against
# 2.586-2.593). One stage uncapped 0.197 (0.627), capped at 152 / 128 0.184 / 0.202. But Triton 3.6 miscompiles dx at
# one stage, as it does chunk_scan (module docstring): dx off by 100% at b1 l777 h4 p32 g2 n64 chunk 64
# (test_cuda_matches_oracle), and an illegal memory access in the Mamba-2 training GPU tests (headdim 32, dstate 64,
# chunk 64). benchmarks/probes/ssd_dx_one_stage.py, capped or not: wrong at every shape with a partial last chunk
# (relative error 0.85-2.8, headdim 64 / dstate 128 too), an illegal address at whole chunks with headdim 32 /
# dstate 64, bit for bit right only at whole chunks with headdim 64 / dstate 128 (the benchmark shapes). Not kept.
# A variant reloading x after the loop instead of holding it in float32 (177 registers at one stage uncapped):
# 0.213, capped at 168 / 152 / 128 0.184 / 0.181 / 0.187 (another host).


def chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, seq_idx, *, dx_extra=None, num_stages=2, num_warps=4,
                      tile_major=None, block_t=None, even=None, maxnreg=None, wrap):
    """Returns dx (x's dtype, contiguous), dL/d dt_proc, the log-decay pieces (see the kernel): col,
    colstate in dA_cumsum layout, row in partial sums, one per block of s (dt_bwd sums them), and dD's partial sums
    (float32 (batch * nchunks * row tiles, nheads, headdim), for head_grads; None without D). x is read with its own
    strides: the Mamba-2 block's x is a slice of the in-projection's rows, and copying it contiguous cost a 50 MB
    copy per layer and training step at the 130M shape. maxnreg: a ptxas register cap, for probes (direct launches
    only)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    _, _, nchunks, chunk_size = dtp.shape
    block_t0, block_p, block_n = _scan_blocks(chunk_size, headdim, dstate)
    block_t = min(block_t or block_t0, chunk_size)
    nblocks = _cdiv(chunk_size, block_t)
    dx = torch.empty(batch, seqlen, nheads, headdim, device=x.device, dtype=x.dtype)
    # Unwritten: positions past the sequence end, and row tile k's before position k * block_t (see dt_bwd).
    ddt = _empty_chunked(*dA_cs.shape, device=x.device, dtype=torch.float32)
    col = _empty_chunked(*dA_cs.shape, device=x.device, dtype=torch.float32)
    colstate = _empty_chunked(*dA_cs.shape, device=x.device, dtype=torch.float32)
    row = _empty_chunked(batch, nheads, nchunks, nblocks, chunk_size, device=x.device, dtype=torch.float32)
    # dD's partial sums, a row per (chunk, row tile): (batch * nchunks * nblocks, nheads, headdim), for head_grads
    # (allocated as such: a view of a (batch * nchunks, nblocks, ...) tensor would guard on the chunk count, see
    # _size_oblivious)
    dd = _empty_chunked(batch * nchunks * nblocks, nheads, headdim, device=x.device, dtype=torch.float32)
    q = seq_idx if seq_idx is not None else dtp
    e = dx_extra if dx_extra is not None else dtp
    grid, tile_major = _tile_grid(batch * nchunks, nheads, nblocks,
                                  DX_TILE_MAJOR if tile_major is None else tile_major)
    if even is None:
        even = DX_EVEN and _even(seqlen, chunk_size, headdim, block_p, dstate, block_n)
    _launch(_chunk_scan_bwd_dx_kernel, wrap)[grid](
        x, B, C, dtp, dA_cs, q, dy, dend, D if D is not None else dtp, e,
        dx, ddt, col, colstate, row, dd,
        seqlen, headdim, dstate, nheads // ngroups,
        *x.stride(), *B.stride(), *C.stride(), *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *dend.stride(), *dy.stride(), *_d_strides(D),
        *(e.stride() if dx_extra is not None else (0, 0, 0, 0)),
        *row.stride(), nblocks * dd.stride(0), dd.stride(1), dd.stride(0), *dx.stride(),
        CHUNK=chunk_size, HAS_SEQ_IDX=seq_idx is not None, HAS_D=D is not None, HAS_EXTRA=dx_extra is not None,
        IEEE=_ieee(x, B, C), BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, TILE_MAJOR=tile_major, EVEN=even,
        num_warps=num_warps, num_stages=num_stages, **({"maxnreg": maxnreg} if maxnreg and not wrap else {}),
    )
    return dx, ddt, col, colstate, row, dd if D is not None else None


@triton.jit
def _chunk_scan_bwd_dcb_kernel(
    x_ptr, dtp_ptr, dacs_ptr, seq_ptr, dy_ptr, dcb_ptr,
    seqlen, headdim, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_g_b, s_g_l, s_g_h, s_g_p,
    s_o_k, s_o_b, s_o_c, s_o_g, s_o_t, s_o_s,
    CHUNK: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, HSPLIT: tl.constexpr,
):
    """dcb[k, t, s] = sum over heads k, k + HSPLIT, ... of the group of (dy_t . x_s) exp(a_t - a_s) dt_s, for
    s <= t in one chunk and group: the gradient of C_t . B_s is the sum over k of the HSPLIT parts. One program
    per part and tile on or below the diagonal (the others are not written); pairs across a sequence boundary and
    rows or columns past the sequence end are zero."""
    pid_ts, pid_gk, pid_bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    pid_g, pid_k = pid_gk // HSPLIT, pid_gk % HSPLIT
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    ntiles: tl.constexpr = CHUNK // BLOCK_T
    pid_t, pid_s = pid_ts // ntiles, pid_ts % ntiles
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    if (pid_s <= pid_t) & (pid_t * BLOCK_T < limit):
        offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_s = pid_s * BLOCK_T + tl.arange(0, BLOCK_T)
        offs_p = tl.arange(0, BLOCK_P)
        t_ok = offs_t < limit
        s_ok = offs_s < limit
        p_ok = offs_p < headdim
        keep = (offs_t[:, None] >= offs_s[None, :]) & t_ok[:, None] & s_ok[None, :]
        if HAS_SEQ_IDX:
            seq_ptr += pid_b * s_q_b
            seq_t = tl.load(seq_ptr + (start + offs_t) * s_q_l, mask=t_ok, other=-1)
            seq_s = tl.load(seq_ptr + (start + offs_s) * s_q_l, mask=s_ok, other=-2)
            keep = keep & (seq_t[:, None] == seq_s[None, :])
        acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float32)
        for hh in range(pid_k, heads_per_group, HSPLIT):
            h = pid_g * heads_per_group + hh
            a_off = pid_b * s_a_b + h * s_a_h + pid_c * s_a_c
            a_t = tl.load(dacs_ptr + a_off + offs_t * s_a_l, mask=t_ok, other=0.0)
            a_s = tl.load(dacs_ptr + a_off + offs_s * s_a_l, mask=s_ok, other=0.0)
            dt_s = tl.load(dtp_ptr + a_off + offs_s * s_a_l, mask=s_ok, other=0.0)
            dy_t = tl.load(dy_ptr + pid_b * s_g_b + (start + offs_t[:, None]) * s_g_l + h * s_g_h
                           + offs_p[None, :] * s_g_p, mask=t_ok[:, None] & p_ok[None, :], other=0.0)
            x_s = tl.load(x_ptr + pid_b * s_x_b + (start + offs_s[None, :]) * s_x_l + h * s_x_h
                          + offs_p[:, None] * s_x_p, mask=p_ok[:, None] & s_ok[None, :], other=0.0)
            m = _dot(dy_t, x_s.to(dy_t.dtype), IEEE)
            acc += m * tl.exp(tl.where(keep, a_t[:, None] - a_s[None, :], float("-inf"))) * dt_s[None, :]
        tl.store(dcb_ptr + pid_k * s_o_k + pid_b * s_o_b + pid_c * s_o_c + pid_g * s_o_g + offs_t[:, None] * s_o_t
                 + offs_s[None, :] * s_o_s, tl.where(keep, acc, 0.0))


# The parts a group's heads are split into (dB and dC add them as they read them); 1: one program walks them all.
# Session 26, H100 (benchmarks/probes/ssd_dcb_split.py, graphs), splits 1 / 2 / 3 / 4 / 6 / 8: dcb 0.061 / 0.056 /
# 0.064 / 0.064 / 0.071 / 0.079 ms with dcb + dB + dC 0.189 / 0.188 / 0.226 / 0.224 / 0.274 / 0.336 at b8 l2048 h24;
# dcb 0.185 / 0.158 / 0.174 / 0.169 / 0.179 / 0.187 with the three 0.530 / 0.510 / 0.619 / 0.580 / 0.705 / 0.851 at
# b2 l8192 h80. The op's forward+backward with splits 1 / 2 / 4, alternating: 0.890-0.891 / 0.889-0.891 /
# 0.927 ms, and 2.761 / 2.732-2.742 / 2.801-2.803 at l8192.
DCB_HEAD_SPLIT = 2


# 8 warps: H100, b8 l2048 h24 0.091 ms against 0.122 with 4 (b2 l8192 h80: 0.258 against 0.369); 128-row tiles,
# 3 stages or 1 stage were slower (benchmarks/probes/ssd_bwd_sweep.py).
def chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, ngroups, seq_idx, *, block_t=None, num_warps=8, num_stages=2, hsplit=None,
                       wrap):
    """dL/d(C_t . B_s) summed over each group's heads, as hsplit parts (each over every hsplit-th head) whose sum it
    is: (hsplit, batch, nchunks, ngroups, chunk_size, chunk_size) float32, written on and below the diagonal tiles
    (block_t wide, BLOCK_T_MAX by default) that hold rows before the sequence end. dB and dC read the diagonal tiles
    of BLOCK_T_MAX: block_t may not be narrower. hsplit: DCB_HEAD_SPLIT's by default."""
    batch, seqlen, nheads, headdim = x.shape
    _, _, nchunks, chunk_size = dtp.shape
    block_t0, block_p, _ = _scan_blocks(chunk_size, headdim, 16)
    block_t = min(block_t or block_t0, chunk_size)
    if block_t < block_t0:
        raise ValueError(f"chunk_scan_bwd_dcb: block_t {block_t} is narrower than the {block_t0}-row tiles dB and dC "
                         f"read (the tiles above its diagonal would be left unwritten)")
    ntiles = chunk_size // block_t
    hsplit = max(1, min(nheads // ngroups, hsplit or DCB_HEAD_SPLIT))
    dcb = _empty_chunked(hsplit, batch, nchunks, ngroups, chunk_size, chunk_size, device=x.device, dtype=torch.float32)
    q = seq_idx if seq_idx is not None else dtp
    # Tiles of one chunk in neighbouring programs: each x and dy tile is read by several of them (from L2).
    _launch(_chunk_scan_bwd_dcb_kernel, wrap)[(ntiles * ntiles, ngroups * hsplit, batch * nchunks)](
        x, dtp, dA_cs, q, dy, dcb,
        seqlen, headdim, nheads // ngroups,
        *x.stride(), *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *dy.stride(), *dcb.stride(),
        CHUNK=chunk_size, HAS_SEQ_IDX=seq_idx is not None, IEEE=_ieee(x, dy), BLOCK_T=block_t, BLOCK_P=block_p,
        HSPLIT=hsplit, num_warps=num_warps, num_stages=num_stages,
    )
    return dcb


@triton.jit
def _chunk_scan_bwd_dbc_kernel(
    x_ptr, u_ptr, c_ptr, dcb_ptr, dtp_ptr, dacs_ptr, seq_ptr, dy_ptr, st_ptr, out_ptr, da_ptr,
    seqlen, headdim, dstate, heads_per_group,
    s_x_b, s_x_l, s_x_h, s_x_p,
    s_u_b, s_u_l, s_u_g, s_u_n,
    s_c_b, s_c_l, s_c_g, s_c_n,
    s_cb_k, s_cb_b, s_cb_c, s_cb_g, s_cb_t, s_cb_s,
    s_a_b, s_a_h, s_a_c, s_a_l,
    s_q_b, s_q_l,
    s_s_b, s_s_c, s_s_h, s_s_p, s_s_n,
    s_g_b, s_g_l, s_g_h, s_g_p,
    s_o_k, s_o_b, s_o_l, s_o_g, s_o_n,
    CHUNK: tl.constexpr, HAS_SEQ_IDX: tl.constexpr, IS_DB: tl.constexpr, IEEE: tl.constexpr, SPLIT: tl.constexpr,
    N_BLOCKS: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
    DCB_PARTS: tl.constexpr,
):
    """Rows r of one chunk and group. With dcb[t, s] the gradient of C_t . B_s (heads summed):
    dC (IS_DB False, u = B, st = state entering the chunk):
        dC_r = sum_h exp(a_r) dy_r S_in + sum_{s<=r} dcb[r, s] B_s
    dB (IS_DB True, u = C, st = dend, the gradient of the state after the chunk):
        dB_r = sum_h exp(a_last - a_r) dt_r x_r dend + sum_{t>=r} dcb[t, r] C_t
    dC also stores, per head, dy_r . (the part of y_r from the state entering the chunk) = exp(a_r) C_r . (dy_r
    S_in), which its state term has at hand: the log-decay gradient of the pairs whose earlier index lies
    before the chunk.
    SPLIT programs share a group's heads (and the column tiles) when there are few chunks; their partial sums
    are added afterwards. N_BLOCKS programs (dB only: dC's log-decay term sums over all of dstate) each take a
    block of BLOCK_N columns of dstate, with nothing to add afterwards. dcb comes as DCB_PARTS parts (stride
    s_cb_k), added here as they are read."""
    pid_r, pid_gk, pid_bc = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    per_group: tl.constexpr = SPLIT * N_BLOCKS
    pid_g, pid_kn = pid_gk // per_group, pid_gk % per_group
    pid_k, pid_nb = pid_kn // N_BLOCKS, pid_kn % N_BLOCKS  # heads pid_k, pid_k + SPLIT, ... of group pid_g
    nchunks = tl.cdiv(seqlen, CHUNK)
    pid_b, pid_c = pid_bc // nchunks, pid_bc % nchunks
    start = pid_c * CHUNK
    limit = tl.minimum(CHUNK, seqlen - start)
    r0 = pid_r * BLOCK_T
    offs_r = r0 + tl.arange(0, BLOCK_T)
    offs_p = tl.arange(0, BLOCK_P)
    offs_n = pid_nb * BLOCK_N + tl.arange(0, BLOCK_N)
    r_ok = offs_r < limit
    p_ok = offs_p < headdim
    n_ok = offs_n < dstate
    u_ptr += pid_b * s_u_b + start * s_u_l + pid_g * s_u_g
    dcb_ptr += pid_b * s_cb_b + pid_c * s_cb_c + pid_g * s_cb_g
    seq_ptr += pid_b * s_q_b
    if HAS_SEQ_IDX:
        seq_r = tl.load(seq_ptr + (start + offs_r) * s_q_l, mask=r_ok, other=-1)
        if IS_DB:
            seq_ref = tl.load(seq_ptr + (start + limit - 1) * s_q_l)
        else:
            seq_ref = tl.load(seq_ptr + (start - 1) * s_q_l, mask=pid_c > 0, other=0)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    if not IS_DB:
        c_r = tl.load(c_ptr + pid_b * s_c_b + (start + offs_r[:, None]) * s_c_l + pid_g * s_c_g
                      + offs_n[None, :] * s_c_n, mask=r_ok[:, None] & n_ok[None, :], other=0.0).to(tl.float32)
    for hh in range(pid_k, heads_per_group, SPLIT):
        h = pid_g * heads_per_group + hh
        a_off = pid_b * s_a_b + h * s_a_h + pid_c * s_a_c
        a_r = tl.load(dacs_ptr + a_off + offs_r * s_a_l, mask=r_ok, other=0.0)
        if IS_DB:
            v_r = tl.load(x_ptr + pid_b * s_x_b + (start + offs_r[:, None]) * s_x_l + h * s_x_h
                          + offs_p[None, :] * s_x_p, mask=r_ok[:, None] & p_ok[None, :], other=0.0)
            a_last = tl.load(dacs_ptr + a_off + (limit - 1) * s_a_l)
            scale = tl.exp(a_last - a_r) * tl.load(dtp_ptr + a_off + offs_r * s_a_l, mask=r_ok, other=0.0)
        else:
            v_r = tl.load(dy_ptr + pid_b * s_g_b + (start + offs_r[:, None]) * s_g_l + h * s_g_h
                          + offs_p[None, :] * s_g_p, mask=r_ok[:, None] & p_ok[None, :], other=0.0)
            scale = tl.exp(a_r)
        if HAS_SEQ_IDX:
            scale = tl.where(seq_r == seq_ref, scale, 0.0)
        st = tl.load(st_ptr + pid_b * s_s_b + pid_c * s_s_c + h * s_s_h + offs_p[:, None] * s_s_p
                     + offs_n[None, :] * s_s_n, mask=p_ok[:, None] & n_ok[None, :], other=0.0)
        term = _dot(v_r.to(st.dtype), st, IEEE) * scale[:, None]  # 16-bit st (16-bit inputs): a 16-bit dot
        acc += term
        if not IS_DB:
            tl.store(da_ptr + a_off + offs_r * s_a_l, tl.sum(term * c_r, axis=1), mask=r_ok)
    # Column tiles: s <= r for dC (tiles 0 .. r0), t >= r for dB (tiles r0 .. limit), split like the heads.
    if IS_DB:
        lo, hi = r0, limit
    else:
        lo, hi = 0, tl.minimum(r0 + BLOCK_T, limit)
    for k0 in range(lo + pid_k * BLOCK_T, hi, SPLIT * BLOCK_T):
        offs_k = k0 + tl.arange(0, BLOCK_T)
        k_ok = offs_k < limit
        if IS_DB:  # dcb[k, r], k = t (later)
            tile = dcb_ptr + offs_k[None, :] * s_cb_t + offs_r[:, None] * s_cb_s
        else:  # dcb[r, k], k = s (earlier)
            tile = dcb_ptr + offs_r[:, None] * s_cb_t + offs_k[None, :] * s_cb_s
        m = tl.load(tile, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        for part in tl.static_range(1, DCB_PARTS):
            m += tl.load(tile + part * s_cb_k, mask=r_ok[:, None] & k_ok[None, :], other=0.0)
        u_k = tl.load(u_ptr + offs_k[:, None] * s_u_l + offs_n[None, :] * s_u_n, mask=k_ok[:, None] & n_ok[None, :],
                      other=0.0)
        acc += _dot(m.to(u_k.dtype), u_k, IEEE)
    out_ptr += pid_k * s_o_k
    tl.store(out_ptr + pid_b * s_o_b + (start + offs_r[:, None]) * s_o_l + pid_g * s_o_g + offs_n[None, :] * s_o_n,
             acc, mask=r_ok[:, None] & n_ok[None, :])


# dB's programs split dstate's columns rather than a group's heads when the GPU needs more programs: no float32
# partial sums and no add afterwards. H100, chunk 128 (benchmarks/probes/ssd_db_split.py, session 24, graphs): dB
# 0.052 against 0.071 ms (the add included), 0.155 against 0.174 at b2 l8192 h80; the op's forward+backward 0.940
# against 0.957, 2.893 against 2.913. dC keeps the head split: its log-decay term sums over all of dstate.
DB_SPLITS_DSTATE = True


def _bwd_dbc(x, U, C, dcb, dtp, dA_cs, dy, st, seq_idx, is_db, out_like, da, num_stages, wrap):
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = U.shape[2], U.shape[3]
    _, _, nchunks, chunk_size = dtp.shape
    block_t, block_p, block_n = _scan_blocks(chunk_size, headdim, dstate)
    nblocks = _cdiv(chunk_size, block_t)
    heads_per_group = nheads // ngroups
    # Enough programs for the GPU (~4 per SM of an H100) without atomics: split a group's heads, or for dB its
    # dstate columns (no partial sums to add afterwards).
    split = max(1, min(heads_per_group, _TARGET_PROGRAMS // max(1, _hint(batch * nchunks * ngroups * nblocks))))
    n_blocks = 1
    if is_db and split >= 2 and block_n >= 32 and DB_SPLITS_DSTATE:
        n_blocks, split, block_n = 2, split // 2, block_n // 2
    if split == 1:
        out = torch.empty(out_like.shape, device=x.device, dtype=out_like.dtype)[None]
    else:
        out = torch.empty((split, *out_like.shape), device=x.device, dtype=torch.float32)
    q = seq_idx if seq_idx is not None else dtp
    _launch(_chunk_scan_bwd_dbc_kernel, wrap)[(nblocks, ngroups * split * n_blocks, batch * nchunks)](
        x, U, C, dcb, dtp, dA_cs, q, dy, st, out, da if da is not None else dtp,
        seqlen, headdim, dstate, nheads // ngroups,
        *x.stride(), *U.stride(), *C.stride(), *dcb.stride(), *dtp.stride(),
        q.stride(0), q.stride(1) if seq_idx is not None else 0,
        *st.stride(), *dy.stride(), *out.stride(),
        CHUNK=chunk_size, HAS_SEQ_IDX=seq_idx is not None, IS_DB=is_db, IEEE=_ieee(x, U, dy), SPLIT=split,
        N_BLOCKS=n_blocks, BLOCK_T=block_t, BLOCK_P=block_p, BLOCK_N=block_n, DCB_PARTS=dcb.shape[0], num_warps=4,
        num_stages=num_stages,
    )
    return out[0] if split == 1 else _sum_parts(out, out_like.dtype, wrap)


@triton.jit
def _sum_parts_kernel(src_ptr, dst_ptr, numel, part_stride, PARTS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < numel
    acc = tl.load(src_ptr + offs, mask=ok, other=0.0)
    for k in tl.static_range(1, PARTS):
        acc += tl.load(src_ptr + k * part_stride + offs, mask=ok, other=0.0)
    tl.store(dst_ptr + offs, acc, mask=ok)


def _sum_parts(parts, dtype, wrap):
    """parts (contiguous float32, (k, ...)) summed over k in one pass, rounded once to dtype as it is written.
    torch's sum(0) then .to() took two kernels and about 0.031 ms for dB and dC together at b8 l2048 h24 on an
    H100 (a leading dimension of 2 reduces slowly); an elementwise add 0.016 (torch.profiler, session 24), but
    torch's binary ops do not run on fake CUDA tensors in a CPU-only build, where the kernel-list test traces."""
    out = torch.empty(parts.shape[1:], device=parts.device, dtype=dtype)
    numel = out.numel()
    block = 1024
    _launch(_sum_parts_kernel, wrap)[(_cdiv(numel, block),)](
        parts, out, numel, parts.stride(0), PARTS=parts.shape[0], BLOCK=block, num_warps=4,
    )
    return out


def _dbc_stages(st) -> int:
    # H100, b8 l2048 h24 p64 n128, dB / dC: float32 states 0.194 / 0.220 ms with one pipeline stage against
    # 0.300 / 0.303 with two; 16-bit states 0.085 / 0.089 with two against 0.089 / 0.092 with one (b2 l8192
    # h80: 0.176 / 0.198 against 0.195 / 0.206).
    return 1 if st.dtype == torch.float32 else 2


def chunk_scan_bwd_dB(x, B, C, dcb, dtp, dA_cs, dy, dend, seq_idx, *, num_stages=None, wrap):
    return _bwd_dbc(x, C, C, dcb, dtp, dA_cs, dy, dend, seq_idx, True, B, None, num_stages or _dbc_stages(dend), wrap)


def chunk_scan_bwd_dC(x, B, C, dcb, dtp, dA_cs, dy, prev, seq_idx, *, num_stages=None, wrap):
    """Returns dC and the log-decay term dy_t . y_state_t in dA_cumsum layout (unwritten past the sequence end,
    where dt_bwd does not read)."""
    # written for every head and row before the sequence end
    da = _empty_chunked(*dA_cs.shape, device=dA_cs.device, dtype=dA_cs.dtype)
    return _bwd_dbc(x, B, C, dcb, dtp, dA_cs, dy, prev, seq_idx, False, C, da, num_stages or _dbc_stages(prev),
                    wrap), da


# ----------------------------------------------------------------------------------------------------
# first call: compile a pass's kernels concurrently instead of one after another at their first launch
# ----------------------------------------------------------------------------------------------------

_recording: ContextVar[list | None] = ContextVar("ssd_recording", default=None)
_pool: ThreadPoolExecutor | None = None


def _launch(kernel, wrap: bool):
    """launcher(kernel, wrap) (recorded while a launch plan is, see _plans), except inside record_launches, where
    the launch is recorded and nothing runs."""
    jobs = _recording.get()
    if jobs is not None:
        return _Recorder(kernel, jobs)
    plan = _plans.recording()
    return launcher(kernel, wrap) if plan is None else plan.launcher(kernel, launcher(kernel, wrap))


class _Recorder:
    def __init__(self, kernel, jobs: list):
        self.kernel, self.jobs = kernel, jobs

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.jobs.append((self.kernel, grid, args, kwargs))


def record_launches(fn, *args, **kwargs) -> list:
    """The launches ``fn(*args, **kwargs)`` makes, as (kernel, grid, args, kwargs), without running any: call it
    with meta tensors (Triton specialises a meta tensor like an aligned one: its data_ptr is 0)."""
    jobs: list = []
    token = _recording.set(jobs)
    try:
        fn(*args, **kwargs)
    finally:
        _recording.reset(token)
    return jobs


def _spec_key(job):
    """What Triton specialises a launch on, roughly: dtypes, ints equal to 1 or divisible by 16, constexprs."""
    kernel, _, args, kwargs = job
    spec = tuple(a.dtype if isinstance(a, torch.Tensor) else (a == 1, a % 16 == 0) if isinstance(a, int) else type(a)
                 for a in args)
    return kernel, spec, tuple(sorted(kwargs.items()))


def compile_async(jobs: list, device: torch.device, seen: set) -> list[Future]:
    """Compiles each recorded launch not in ``seen`` (which it extends) in a thread pool (``kernel.warmup``: no
    launch), with its binary loaded and its launcher built (see _warmup). Triton's MLIR and LLVM passes release the
    GIL, and ptxas and the launchers' C compiler are subprocesses, so the compiles overlap."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="ssd-compile")
    futures = []
    for job in jobs:
        key = _spec_key(job)
        if key not in seen:
            seen.add(key)
            futures.append(_pool.submit(_warmup, device, *job))
    return futures


def _warmup(device, kernel, grid, args, kwargs):
    """Compiles one launch, then loads its binary and builds its launcher, which Triton otherwise does at the first
    launch, on the calling thread: in Triton 3.6 the launcher is C code compiled per kernel signature, so a first
    forward+backward's dozen launchers were built one after another (session 36, H100: the first call took about
    the sum of the kernels' compile times, see benchmarks/probes/ssd_compile_times.py)."""
    with torch.cuda.device(device):
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        init = getattr(compiled, "_init_handles", None)  # None where a compile hook built nothing
        if init is not None:
            init()


def wait(futures: list[Future]) -> None:
    """Waits for compile_async's compiles; a failed one is left to the launch, which compiles (and raises) itself."""
    for f in futures:
        try:
            f.result()
        except Exception:  # noqa: BLE001
            pass
