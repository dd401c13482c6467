"""Triton kernels for the causal depthwise conv1d (forward, backward) and its decode update.

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * xpad[b, d, t + k]),   xpad = cat(initial_states or 0, x)

Shapes: x, out, dout, dx (batch, dim, seqlen); weight, dweight (dim, width); bias, dbias (dim,);
seq_idx (batch, seqlen) int32; initial_states, final_states (batch, dim, width - 1);
conv_state (cache_batch, dim, state_len); cache_seqlens, conv_state_indices (batch,) int32.

Every kernel tiles (dim, seqlen) as [BLOCK_D, BLOCK_L] and reads tap k as a load shifted by k:
the shifted tiles overlap, so after the first they come from L1/L2 and device memory sees x about once.
For 16-bit x with contiguous time the forward reads int32 pairs of steps instead, where it applies
(``_causal_conv1d_fwd_pairs_kernel``): the odd shifts then need no 2-byte loads, each pair is converted
once, and the same fp32 sums come out (1.08x the copy floor at b8 d1536 l2048 w4 bf16 on an H100, against 1.26x).
Positions are indices into x (``p < 0`` reads initial_states), every access is masked, and all math is fp32.
Launch functions take ``wrap``: True inside the ops (``torch.library.wrap_triton``), False for direct
launches (the tests run them under the Triton interpreter on CPU tensors).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._triton import cdiv, launcher, next_pow2


# ----------------------------------------------------------------------------------------------
# Helpers shared by the forward and backward kernels. Positions ``p`` are x's time indices.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _load_xpad(x_ptr, init_ptr, b, offs_d, p, L, D,
               stride_xb, stride_xd, stride_xl, stride_ib, stride_id, stride_il,
               W: tl.constexpr, HAS_INIT: tl.constexpr):
    """xpad at positions p for channels offs_d, as fp32 [BLOCK_D, len(p)]: x for 0 <= p < L,
    initial_states for -(W-1) <= p < 0 (when given), 0 elsewhere."""
    d_mask = offs_d < D
    in_x = (p >= 0) & (p < L)
    v = tl.load(x_ptr + b * stride_xb + offs_d[:, None] * stride_xd + p[None, :] * stride_xl,
                mask=d_mask[:, None] & in_x[None, :], other=0.0).to(tl.float32)
    if HAS_INIT:
        j = p + (W - 1)
        in_init = (p < 0) & (j >= 0)
        v += tl.load(init_ptr + b * stride_ib + offs_d[:, None] * stride_id + j[None, :] * stride_il,
                     mask=d_mask[:, None] & in_init[None, :], other=0.0).to(tl.float32)
    return v


@triton.jit
def _load_seq(seq_ptr, b, p, L, stride_sb, stride_sl):
    """seq_idx at positions p (-1 outside [0, L): those taps read zeros anyway)."""
    return tl.load(seq_ptr + b * stride_sb + p * stride_sl, mask=(p >= 0) & (p < L), other=-1)


@triton.jit
def _preact(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, b, offs_d, t, L, D,
            stride_xb, stride_xd, stride_xl, stride_wd, stride_ww, stride_sb, stride_sl,
            stride_ib, stride_id, stride_il,
            W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr):
    """bias + sum_k weight[:, k] * xpad[t - (W-1) + k] as fp32 [BLOCK_D, len(t)]; a tap from another
    sequence (seq_idx differs) counts as 0."""
    d_mask = offs_d < D
    acc = tl.zeros((offs_d.shape[0], t.shape[0]), dtype=tl.float32)
    if HAS_SEQ:
        seq_t = _load_seq(seq_ptr, b, t, L, stride_sb, stride_sl)
    for k in tl.static_range(W):
        p = t + (k - (W - 1))  # constexpr offset first: keeps the aligned tap (k = W-1) vectorisable
        v = _load_xpad(x_ptr, init_ptr, b, offs_d, p, L, D, stride_xb, stride_xd, stride_xl,
                       stride_ib, stride_id, stride_il, W, HAS_INIT)
        if HAS_SEQ:
            same = _load_seq(seq_ptr, b, p, L, stride_sb, stride_sl) == seq_t
            v = tl.where(same[None, :], v, 0.0)
        w_k = tl.load(w_ptr + offs_d * stride_wd + k * stride_ww, mask=d_mask, other=0.0).to(tl.float32)
        acc += w_k[:, None] * v
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    return acc


@triton.jit
def _store_final_states(x_ptr, init_ptr, final_ptr, b, offs_d, L, D, stride_xb, stride_xd, stride_xl,
                        stride_ib, stride_id, stride_il, stride_fb, stride_fd, stride_fl,
                        W: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_W: tl.constexpr):
    """final_states[j] = xpad[L - (W-1) + j]: the last W-1 inputs, reaching into initial_states if L < W-1."""
    j = tl.arange(0, BLOCK_W)
    v = _load_xpad(x_ptr, init_ptr, b, offs_d, L - (W - 1) + j, L, D, stride_xb, stride_xd,
                   stride_xl, stride_ib, stride_id, stride_il, W, HAS_INIT)
    tl.store(final_ptr + b * stride_fb + offs_d[:, None] * stride_fd + j[None, :] * stride_fl,
             v.to(final_ptr.dtype.element_ty), mask=(offs_d < D)[:, None] & (j < W - 1)[None, :])


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------
@triton.jit
def _causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, out_ptr, final_ptr, L, D,
    stride_xb, stride_xd, stride_xl, stride_wd, stride_ww, stride_sb, stride_sl,
    stride_ib, stride_id, stride_il, stride_ob, stride_od, stride_ol, stride_fb, stride_fd, stride_fl,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
    HAS_FINAL: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr,
):
    pid_l = tl.program_id(0)  # sequence blocks vary fastest, so a neighbour's halo is still in L2
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d_mask = offs_d < D

    y = _preact(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, b, offs_d, offs_l, L, D,
                stride_xb, stride_xd, stride_xl, stride_wd, stride_ww, stride_sb, stride_sl,
                stride_ib, stride_id, stride_il, W, HAS_BIAS, HAS_SEQ, HAS_INIT)
    if SILU:
        y = y * tl.sigmoid(y)
    tl.store(out_ptr + b * stride_ob + offs_d[:, None] * stride_od + offs_l[None, :] * stride_ol,
             y.to(out_ptr.dtype.element_ty), mask=d_mask[:, None] & (offs_l < L)[None, :])

    if HAS_FINAL:
        if pid_l == tl.num_programs(0) - 1:
            _store_final_states(x_ptr, init_ptr, final_ptr, b, offs_d, L, D, stride_xb, stride_xd, stride_xl,
                                stride_ib, stride_id, stride_il, stride_fb, stride_fd, stride_fl, W, HAS_INIT, BLOCK_W)


# ----------------------------------------------------------------------------------------------
# Forward over 16-bit pairs. A 16-bit x read at W shifted positions costs 2-byte loads for the odd
# shifts and a bf16->fp32 conversion per tap. Read instead as int32 pairs P_j = (x[2j], x[2j+1]): output
# pair m (t = 2m, 2m+1) needs x[2m-(W-1) .. 2m+1], i.e. pairs m-NP+1 .. m with NP = ceil((W-1)/2) + 1
# (W = 4: three pair tiles, the unshifted one as 16-byte vectors), each unpacked once into its two
# elements; both outputs are packed back into one int32 per pair. For contiguous time, 4-byte aligned
# rows, even L, no seq_idx / initial_states (the general kernel above covers the rest).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _unpack_lo_hi(v, IS_BF16: tl.constexpr):
    """The two 16-bit floats of int32 pairs v (little-endian: element 2j in the low half) as fp32."""
    if IS_BF16:
        lo = (v << 16).to(tl.float32, bitcast=True)
        hi = (v & -65536).to(tl.float32, bitcast=True)
    else:
        lo = (v & 65535).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
        hi = ((v >> 16) & 65535).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)
    return lo, hi


@triton.jit
def _pair_tile(xp, j, d_mask, M, IS_BF16: tl.constexpr):
    """Pairs j (0 <= j < M, else zeros) of each channel's row at xp, unpacked as fp32 (lo, hi)."""
    v = tl.load(xp + j[None, :], mask=d_mask[:, None] & ((j >= 0) & (j < M))[None, :], other=0)
    return _unpack_lo_hi(v, IS_BF16)


@triton.jit
def _pack_lo_hi(lo, hi, IS_BF16: tl.constexpr):
    if IS_BF16:
        lo16 = lo.to(tl.bfloat16).to(tl.int16, bitcast=True)
        hi16 = hi.to(tl.bfloat16).to(tl.int16, bitcast=True)
    else:
        lo16 = lo.to(tl.float16).to(tl.int16, bitcast=True)
        hi16 = hi.to(tl.float16).to(tl.int16, bitcast=True)
    return (lo16.to(tl.int32) & 65535) | (hi16.to(tl.int32) << 16)


@triton.jit
def _pair_program(L, D, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """A pair kernel's tile: (pid_m, batch row (int64), channels, pair indices, channel mask, number of pairs)."""
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    return pid_m, b, offs_d, pid_m * BLOCK_M + tl.arange(0, BLOCK_M), offs_d < D, L // 2


@triton.jit
def _pair_rows(ptr, b, offs_d, stride_b, stride_d):
    """Row starts of a 16-bit (batch, dim, seqlen) tensor with contiguous time, as int32 pointers to its pairs
    ([BLOCK_D, 1]; strides in elements, even)."""
    return ptr.to(tl.pointer_type(tl.int32)) + (b * stride_b + offs_d[:, None] * stride_d) // 2


@triton.jit
def _tap(w_ptr, offs_d, k, stride_wd, stride_ww, d_mask):
    return tl.load(w_ptr + offs_d * stride_wd + k * stride_ww, mask=d_mask, other=0.0).to(tl.float32)[:, None]


@triton.jit
def _pre_pairs(xp, w_ptr, bias_ptr, offs_d, d_mask, offs_m, M, stride_wd, stride_ww,
               QO: tl.constexpr, W: tl.constexpr, HAS_BIAS: tl.constexpr, IS_BF16: tl.constexpr):
    """Pre-activations (even, odd) at steps 2(m + QO) and 2(m + QO) + 1 for the pairs m in offs_m, as fp32
    [BLOCK_D, BLOCK_M]; xp points at each channel's row of int32 pairs. Taps are added in the general kernel's
    order (k ascending, bias last), so the sums are its sums, bit for bit."""
    NP: tl.constexpr = W // 2 + 1  # ceil((W - 1) / 2) + 1
    even = tl.zeros((offs_d.shape[0], offs_m.shape[0]), dtype=tl.float32)
    odd = tl.zeros((offs_d.shape[0], offs_m.shape[0]), dtype=tl.float32)
    for q in tl.static_range(NP):
        j = offs_m + (QO + q - (NP - 1))  # pair index; its elements sit at offsets r0 = 2 (q - NP + 1), r0 + 1
        lo, hi = _pair_tile(xp, j, d_mask, M, IS_BF16)
        for k in tl.static_range(W):  # tap k of output 2m reads x[2m + k - (W-1)], of output 2m+1 one further
            if k - (W - 1) == 2 * (q - (NP - 1)):
                even += _tap(w_ptr, offs_d, k, stride_wd, stride_ww, d_mask) * lo
            if k - (W - 1) == 2 * (q - (NP - 1)) + 1:
                even += _tap(w_ptr, offs_d, k, stride_wd, stride_ww, d_mask) * hi
            if k - (W - 1) + 1 == 2 * (q - (NP - 1)):
                odd += _tap(w_ptr, offs_d, k, stride_wd, stride_ww, d_mask) * lo
            if k - (W - 1) + 1 == 2 * (q - (NP - 1)) + 1:
                odd += _tap(w_ptr, offs_d, k, stride_wd, stride_ww, d_mask) * hi
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
        even += bias
        odd += bias
    return even, odd


@triton.jit
def _causal_conv1d_fwd_pairs_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, final_ptr, L, D,
    stride_xb, stride_xd, stride_wd, stride_ww, stride_ob, stride_od, stride_fb, stride_fd, stride_fl,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_FINAL: tl.constexpr, SILU: tl.constexpr, IS_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # strides of x and out in elements (even); L even; BLOCK_M output pairs per tile
    pid_m, b, offs_d, offs_m, d_mask, M = _pair_program(L, D, BLOCK_D, BLOCK_M)
    xp = _pair_rows(x_ptr, b, offs_d, stride_xb, stride_xd)
    even, odd = _pre_pairs(xp, w_ptr, bias_ptr, offs_d, d_mask, offs_m, M, stride_wd, stride_ww,
                           0, W, HAS_BIAS, IS_BF16)
    if SILU:
        even = even * tl.sigmoid(even)
        odd = odd * tl.sigmoid(odd)
    op = _pair_rows(out_ptr, b, offs_d, stride_ob, stride_od)
    tl.store(op + offs_m[None, :], _pack_lo_hi(even, odd, IS_BF16), mask=d_mask[:, None] & (offs_m < M)[None, :])

    if HAS_FINAL:
        if pid_m == tl.num_programs(0) - 1:  # no initial_states here: x_ptr stands in for their pointer
            _store_final_states(x_ptr, x_ptr, final_ptr, b, offs_d, L, D, stride_xb, stride_xd, 1,
                                0, 0, 0, stride_fb, stride_fd, stride_fl, W, False, BLOCK_W)


def _static(n, default: int) -> int:
    """A size as a plain int when it is one (eager, static shapes), else ``default``: block sizes must
    not depend on symbolic sizes, or tracing would specialise on them."""
    return n if isinstance(n, int) else default


def _fwd_blocks(x: torch.Tensor, backward: bool = False) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of the general kernels by x's layout."""
    L = _static(x.shape[2], 1 << 20)
    if x.stride(2) == 1 or x.stride(1) != 1:  # time-contiguous rows: long runs along the sequence
        # 8 x 256 measured best of 8 shapes on an H100 (b8 d1536 l2048: 1.26x the copy floor). A second
        # sweep (9 block shapes and warp counts, CUDA-graph replay) gave 1.261-1.363x, this one 1.263x:
        # block sizes alone do not reach 1.25x. A third (session 3): 4 x 1024 with 8 warps 1.259x, this one 1.262x;
        # a MUFU ex2 + rcp.approx silu was slower in every configuration (1.29-1.32x). 16-bit x now takes
        # the pair kernel instead where it applies (1.08x).
        block_l = min(256, max(16, next_pow2(L)))
        return 2048 // block_l, block_l
    # Channel-last (Mamba-2's xBC: 1792 channels of a (b, l, 3352) row, b8 l2048 bf16, H100, session 4,
    # benchmarks/probes/conv_probe.py): forward 128 x 16 0.091 ms (64 x 32 0.131, 256 x 8 0.103, 32 x 64
    # 0.117); backward 32 x 64 0.400 ms (64 x 32 0.522, 128 x 16 0.596, 256 x 8 0.931). The same tensor
    # time-contiguous: 0.049 / 0.264.
    return (32, 64) if backward else (128, 16)


_FWD_PAIRS = True  # the pair kernel where it applies


def _pairs_blocks(L) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_M) of the pair kernel: 1024 steps (512 pairs) x 2 channels at length 2048. b8 d1536
    l2048 w4 bf16 on an H100 (session 4, CUDA-graph replay, copy floor 0.034 ms): 2 x 1024 steps 1.076x the
    floor, 4 x 512 1.085x, 8 x 256 1.092x, 4 x 1024 (8 warps) 1.097x, 16 x 128 1.123x; the general kernel
    1.262x in the same run."""
    block_l = min(1024, max(16, next_pow2(_static(L, 1 << 20))))
    return max(1, 2048 // block_l), block_l // 2


def _pairs_apply(x, out, seq_idx, initial_states, *more) -> bool:
    """Whether the pair kernels can run: 16-bit x, and out (and ``more``) of x's dtype, all with contiguous time
    and rows at even element offsets (4-byte aligned pairs), even static length, no seq_idx / initial_states."""
    if x.dtype not in (torch.bfloat16, torch.float16) or seq_idx is not None or initial_states is not None:
        return False
    tensors = (x, out, *more)
    sizes = [x.shape[2]] + [n for t in tensors for n in (t.stride(0), t.stride(1), t.storage_offset())]
    return (all(t.dtype == x.dtype and t.stride(2) == 1 for t in tensors)
            and all(isinstance(n, int) and n % 2 == 0 for n in sizes))


def causal_conv1d_fwd(x, weight, bias, seq_idx, initial_states, return_final_states: bool, silu: bool,
                      *, wrap: bool = True, block_d: int | None = None, block_l: int | None = None,
                      num_warps: int = 4, pairs: bool | None = None, rows: bool | None = None,
                      rows_config: tuple[int, int, int, int, int] | None = None):
    """Returns (out, final_states); final_states is an empty tensor unless requested. ``pairs`` forces the
    16-bit pair kernel on (where it applies) or off; None: ``_FWD_PAIRS``. ``rows`` likewise for the row kernel
    on channel-last x (``_FWD_ROWS``), with ``rows_config`` = (BLOCK_D, R, SEG, VEC, num_warps)."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    out = torch.empty_like(x)  # keeps x's layout (channel-last in, channel-last out)
    bias = bias.contiguous() if bias is not None else None  # every kernel indexes bias densely
    if return_final_states:
        final_states = x.new_empty(batch, dim, width - 1)
    else:
        final_states = x.new_empty(0)
    if ((_FWD_ROWS if rows is None else rows) and not return_final_states
            and _rows_apply(width, seq_idx, initial_states, x, out)):
        cfg = _rows_config(backward=False) if rows_config is None else rows_config
        launcher(_causal_conv1d_fwd_rows_kernel, wrap)[(cdiv(seqlen, cfg[2]), cdiv(dim, cfg[0]), batch)](
            x, weight, _or_dummy(bias, weight), out, seqlen, dim, x.stride(0), x.stride(2), *weight.stride(),
            out.stride(0), out.stride(2), W=width, HAS_BIAS=bias is not None, SILU=silu, BLOCK_D=cfg[0], R=cfg[1],
            SEG=cfg[2], VEC=cfg[3], num_warps=cfg[4],
        )
        return out, final_states
    if (_FWD_PAIRS if pairs is None else pairs) and _pairs_apply(x, out, seq_idx, initial_states):
        bd, bm = _pairs_blocks(seqlen)
        block_d, block_m = block_d or bd, block_l // 2 if block_l else bm
        grid = (cdiv(seqlen // 2, block_m), cdiv(dim, block_d), batch)
        launcher(_causal_conv1d_fwd_pairs_kernel, wrap)[grid](
            x, weight, _or_dummy(bias, weight), out, final_states if return_final_states else out, seqlen, dim,
            x.stride(0), x.stride(1), *weight.stride(), out.stride(0), out.stride(1),
            *_strides(final_states if return_final_states else None, 3),
            W=width, HAS_BIAS=bias is not None, HAS_FINAL=return_final_states, SILU=silu,
            IS_BF16=x.dtype == torch.bfloat16, BLOCK_D=block_d, BLOCK_M=block_m,
            BLOCK_W=max(2, next_pow2(width - 1)), num_warps=num_warps,
        )
        return out, final_states
    bd, bl = _fwd_blocks(x)
    block_d, block_l = block_d or bd, block_l or bl
    # Absent tensors are stood in for by weight (read) or out (written), never by x: under torch.compile each
    # argument that needs a copy (x with a stride the kernel was not traced with, say) is copied once per time
    # it is passed.
    seq, init = _or_dummy(seq_idx, weight), _or_dummy(initial_states, weight)
    fin = final_states if return_final_states else out
    grid = (cdiv(seqlen, block_l), cdiv(dim, block_d), batch)
    launcher(_causal_conv1d_fwd_kernel, wrap)[grid](
        x, weight, _or_dummy(bias, weight), seq, init, out, fin, seqlen, dim,
        *x.stride(), *weight.stride(), *_strides(seq_idx, 2), *_strides(initial_states, 3),
        *out.stride(), *_strides(final_states if return_final_states else None, 3),
        W=width, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        HAS_FINAL=return_final_states, SILU=silu,
        BLOCK_D=block_d, BLOCK_L=block_l, BLOCK_W=max(2, next_pow2(width - 1)),
        num_warps=num_warps,
    )
    return out, final_states


# ----------------------------------------------------------------------------------------------
# Backward, two kernels over the same tiles:
#   1. dy = dout * act'(y) (y recomputed from x) into an fp32 buffer, and the dweight / dbias partials
#        dweight[k] = sum_{b,t} dy[t] * xpad[t - (W-1) + k],  dbias = sum_{b,t} dy[t]
#      reduced per (batch, sequence block) into fp32 partials that torch sums afterwards (deterministic,
#      no atomics);
#   2. dxpad[s] = sum_j weight[W-1-j] * dy[s + j] (same sequence) + dfinal_states[s - (L - (W-1))],
#      which is dx for s >= 0 and dinitial_states for s < 0.
# Storing dy costs one fp32 write and read, but every tap of kernel 2 is then one load, where
# recomputing dy at the W shifted positions costs W*W loads per element: that single-kernel variant
# measured 0.40 ms on an H100 at b8 d1536 l2048 w4 bf16 (8x its floor). With this split the whole
# forward+backward measured 0.262 ms there (CUDA-graph replay, 2026-11-22), against 0.408 ms for the reference.
# Where the pair forward applies, the backward is now one kernel over 16-bit pairs instead (further below),
# which recomputes dy from int32 pair loads: 0.113 ms against 0.228 for these two kernels (session 12).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _dsilu(g, y):
    """g * silu'(y), the gradient through silu at pre-activation y (both backward paths)."""
    sig = tl.sigmoid(y)
    return g * sig * (1.0 + y * (1.0 - sig))


@triton.jit
def _causal_conv1d_bwd_dy_kernel(
    x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, dout_ptr, dy_ptr, dw_part_ptr, db_part_ptr, L, D,
    stride_xb, stride_xd, stride_xl, stride_wd, stride_ww, stride_sb, stride_sl,
    stride_ib, stride_id, stride_il, stride_gb, stride_gd, stride_gl, stride_yb, stride_yd, stride_yl,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr,
    SILU: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d_mask = offs_d < D
    tile_mask = d_mask[:, None] & (offs_l < L)[None, :]

    dy = tl.load(dout_ptr + b * stride_gb + offs_d[:, None] * stride_gd + offs_l[None, :] * stride_gl,
                 mask=tile_mask, other=0.0).to(tl.float32)
    if SILU:
        y = _preact(x_ptr, w_ptr, bias_ptr, seq_ptr, init_ptr, b, offs_d, offs_l, L, D,
                    stride_xb, stride_xd, stride_xl, stride_wd, stride_ww, stride_sb, stride_sl,
                    stride_ib, stride_id, stride_il, W, HAS_BIAS, HAS_SEQ, HAS_INIT)
        dy = _dsilu(dy, y)
    tl.store(dy_ptr + b * stride_yb + offs_d[:, None] * stride_yd + offs_l[None, :] * stride_yl, dy, mask=tile_mask)

    part = (b * tl.num_programs(0) + pid_l) * D
    if HAS_SEQ:
        seq_t = _load_seq(seq_ptr, b, offs_l, L, stride_sb, stride_sl)
    for k in tl.static_range(W):
        p = offs_l + (k - (W - 1))
        v = _load_xpad(x_ptr, init_ptr, b, offs_d, p, L, D, stride_xb, stride_xd, stride_xl,
                       stride_ib, stride_id, stride_il, W, HAS_INIT)
        if HAS_SEQ:
            v = tl.where((_load_seq(seq_ptr, b, p, L, stride_sb, stride_sl) == seq_t)[None, :], v, 0.0)
        tl.store(dw_part_ptr + (part + offs_d) * W + k, tl.sum(dy * v, axis=1), mask=d_mask)
    if HAS_BIAS:
        tl.store(db_part_ptr + part + offs_d, tl.sum(dy, axis=1), mask=d_mask)


@triton.jit
def _dxpad(w_ptr, seq_ptr, dy_ptr, dfinal_ptr, b, offs_d, s, L, D,
           stride_wd, stride_ww, stride_sb, stride_sl, stride_fb, stride_fd, stride_fl,
           stride_yb, stride_yd, stride_yl, W: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_DFINAL: tl.constexpr):
    """Gradient of xpad at positions s (fp32 [BLOCK_D, len(s)]) from the stored dy."""
    d_mask = offs_d < D
    acc = tl.zeros((offs_d.shape[0], s.shape[0]), dtype=tl.float32)
    if HAS_SEQ:
        seq_s = _load_seq(seq_ptr, b, s, L, stride_sb, stride_sl)
    for j in tl.static_range(W):
        t = s + j  # output t reads position s through tap k = W-1-j
        g = tl.load(dy_ptr + b * stride_yb + offs_d[:, None] * stride_yd + t[None, :] * stride_yl,
                    mask=d_mask[:, None] & ((t >= 0) & (t < L))[None, :], other=0.0)
        if HAS_SEQ:
            g = tl.where((_load_seq(seq_ptr, b, t, L, stride_sb, stride_sl) == seq_s)[None, :], g, 0.0)
        w_k = tl.load(w_ptr + offs_d * stride_wd + (W - 1 - j) * stride_ww, mask=d_mask, other=0.0)
        acc += w_k.to(tl.float32)[:, None] * g
    if HAS_DFINAL:
        jf = s - (L - (W - 1))  # final_states[jf] = xpad[s]
        acc += tl.load(dfinal_ptr + b * stride_fb + offs_d[:, None] * stride_fd + jf[None, :] * stride_fl,
                       mask=d_mask[:, None] & ((jf >= 0) & (jf < W - 1))[None, :], other=0.0).to(tl.float32)
    return acc


@triton.jit
def _causal_conv1d_bwd_dx_kernel(
    w_ptr, seq_ptr, dy_ptr, dfinal_ptr, dx_ptr, dinit_ptr, L, D,
    stride_wd, stride_ww, stride_sb, stride_sl, stride_fb, stride_fd, stride_fl,
    stride_dxb, stride_dxd, stride_dxl, stride_dib, stride_did, stride_dil, stride_yb, stride_yd, stride_yl,
    W: tl.constexpr, HAS_SEQ: tl.constexpr, HAS_INIT: tl.constexpr, HAS_DFINAL: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_W: tl.constexpr,
):
    pid_l = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)
    d_mask = offs_d < D

    dx = _dxpad(w_ptr, seq_ptr, dy_ptr, dfinal_ptr, b, offs_d, offs_l, L, D, stride_wd, stride_ww,
                stride_sb, stride_sl, stride_fb, stride_fd, stride_fl, stride_yb, stride_yd, stride_yl,
                W, HAS_SEQ, HAS_DFINAL)
    tl.store(dx_ptr + b * stride_dxb + offs_d[:, None] * stride_dxd + offs_l[None, :] * stride_dxl,
             dx.to(dx_ptr.dtype.element_ty), mask=d_mask[:, None] & (offs_l < L)[None, :])

    if HAS_INIT:
        if pid_l == 0:  # positions -(W-1) .. -1 are initial_states
            j = tl.arange(0, BLOCK_W)
            dinit = _dxpad(w_ptr, seq_ptr, dy_ptr, dfinal_ptr, b, offs_d, j - (W - 1), L, D, stride_wd, stride_ww,
                           stride_sb, stride_sl, stride_fb, stride_fd, stride_fl, stride_yb, stride_yd, stride_yl,
                W, HAS_SEQ, HAS_DFINAL)
            tl.store(dinit_ptr + b * stride_dib + offs_d[:, None] * stride_did + j[None, :] * stride_dil,
                     dinit.to(dinit_ptr.dtype.element_ty), mask=d_mask[:, None] & (j < W - 1)[None, :])


# ----------------------------------------------------------------------------------------------
# Backward in one kernel over 16-bit pairs, where the pair forward applies (and no gradient reaches the final
# states). Output pair m (s = 2m, 2m+1) needs dy at steps 2m .. 2m + W: NQ = W//2 + 1 pairs of dy, each
# recomputed from x (``_pre_pairs`` at pair offset QO) and dout. The recomputed pre-activations cost NQ x NP
# int32 loads of x per pair, mostly from L1, where the two-kernel path writes and reads dy in fp32 (four
# bytes per element each way): 0.113 ms against 0.228 at b8 d1536 l2048 w4 bf16 on an H100 (timings in
# _bwd_pairs_blocks). dx follows the two-kernel path's arithmetic (the same dy, the taps added in the same
# order), so under the interpreter it is the same bit for bit; compiled, ptxas contracts multiplies and adds into
# FMAs differently in the two kernels, and dx can differ by a 16-bit rounding step. dweight / dbias partials
# come from the pair's own dy (QO = 0).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _dy_pairs(xp, gp, w_ptr, bias_ptr, offs_d, d_mask, offs_m, M, stride_wd, stride_ww,
              QO: tl.constexpr, W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
              IS_BF16: tl.constexpr):
    """dy = dout * act'(pre) at steps 2(m + QO) and 2(m + QO) + 1, as fp32 (even, odd); 0 past the sequence."""
    j = offs_m + QO
    g = tl.load(gp + j[None, :], mask=d_mask[:, None] & (j < M)[None, :], other=0)
    ge, go = _unpack_lo_hi(g, IS_BF16)
    if SILU:
        pe, po = _pre_pairs(xp, w_ptr, bias_ptr, offs_d, d_mask, offs_m, M, stride_wd, stride_ww,
                            QO, W, HAS_BIAS, IS_BF16)
        ge = _dsilu(ge, pe)
        go = _dsilu(go, po)
    return ge, go


@triton.jit
def _causal_conv1d_bwd_pairs_kernel(
    x_ptr, w_ptr, bias_ptr, dout_ptr, dx_ptr, dw_part_ptr, db_part_ptr, L, D,
    stride_xb, stride_xd, stride_wd, stride_ww, stride_gb, stride_gd, stride_dxb, stride_dxd,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, IS_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    # strides of x, dout and dx in elements (even); L even; BLOCK_M pairs per tile
    NQ: tl.constexpr = W // 2 + 1  # dy pairs at offsets 0 .. NQ-1 cover steps 2m .. 2m + W
    pid_m, b, offs_d, offs_m, d_mask, M = _pair_program(L, D, BLOCK_D, BLOCK_M)
    xp = _pair_rows(x_ptr, b, offs_d, stride_xb, stride_xd)
    gp = _pair_rows(dout_ptr, b, offs_d, stride_gb, stride_gd)

    # dx[s] = sum_j weight[W-1-j] * dy[s + j], j ascending (the two-kernel order): step 2m + o reaches dx[2m]
    # through j = o and dx[2m+1] through j = o - 1
    dy_e, dy_o = _dy_pairs(xp, gp, w_ptr, bias_ptr, offs_d, d_mask, offs_m, M, stride_wd, stride_ww,
                           0, W, HAS_BIAS, SILU, IS_BF16)
    dx_e = _tap(w_ptr, offs_d, W - 1, stride_wd, stride_ww, d_mask) * dy_e
    dx_e += _tap(w_ptr, offs_d, W - 2, stride_wd, stride_ww, d_mask) * dy_o
    dx_o = _tap(w_ptr, offs_d, W - 1, stride_wd, stride_ww, d_mask) * dy_o
    for qo in tl.static_range(1, NQ):
        ge, go = _dy_pairs(xp, gp, w_ptr, bias_ptr, offs_d, d_mask, offs_m, M, stride_wd, stride_ww,
                           qo, W, HAS_BIAS, SILU, IS_BF16)
        if 2 * qo <= W - 1:
            dx_e += _tap(w_ptr, offs_d, W - 1 - 2 * qo, stride_wd, stride_ww, d_mask) * ge
        if 2 * qo + 1 <= W - 1:
            dx_e += _tap(w_ptr, offs_d, W - 2 - 2 * qo, stride_wd, stride_ww, d_mask) * go
        if 2 * qo <= W:
            dx_o += _tap(w_ptr, offs_d, W - 2 * qo, stride_wd, stride_ww, d_mask) * ge
        if 2 * qo + 1 <= W:
            dx_o += _tap(w_ptr, offs_d, W - 1 - 2 * qo, stride_wd, stride_ww, d_mask) * go
    dxp = _pair_rows(dx_ptr, b, offs_d, stride_dxb, stride_dxd)
    tl.store(dxp + offs_m[None, :], _pack_lo_hi(dx_e, dx_o, IS_BF16), mask=d_mask[:, None] & (offs_m < M)[None, :])

    # dweight[k] partial = sum over the tile of dy[2m] x[2m + k - (W-1)] + dy[2m+1] x[2m + 1 + k - (W-1)]
    part = (b * tl.num_programs(0) + pid_m) * D
    for k in tl.static_range(W):
        # x[2m + k - (W-1)] sits k + W + 1 (>= 0) steps after 2(m - W)
        if (k + W + 1) % 2 == 0:  # both steps are pair m + (k + W + 1)/2 - W
            j = offs_m + ((k + W + 1) // 2 - W)
            xa, xb = _pair_tile(xp, j, d_mask, M, IS_BF16)
        else:  # the high half of pair j, then the low half of pair j + 1
            j = offs_m + ((k + W) // 2 - W)
            _, xa = _pair_tile(xp, j, d_mask, M, IS_BF16)
            xb, _ = _pair_tile(xp, j + 1, d_mask, M, IS_BF16)
        tl.store(dw_part_ptr + (part + offs_d) * W + k, tl.sum(dy_e * xa + dy_o * xb, axis=1), mask=d_mask)
    if HAS_BIAS:
        tl.store(db_part_ptr + part + offs_d, tl.sum(dy_e + dy_o, axis=1), mask=d_mask)


# ----------------------------------------------------------------------------------------------
# The same backward with each thread owning a run of RUN consecutive pairs (2 RUN steps) of one channel, loaded as
# 16-byte vectors and split into per-step register tiles ([BLOCK_D, NT] each, one element per thread). The steps a run
# needs from its neighbours (x: HALO pairs before and after, for the pre-activations; dout: HALO pairs after, for dy at
# the W-1 steps past the run that its dx reads) come from small vector loads of their own. So dy is computed once per
# step plus W - 1 steps of halo per run (1.19x the steps at RUN 8, W 4), where the pair kernel recomputes it for three
# pair offsets (3x), and dweight reads the x steps already in registers. The sums are the pair kernel's: dy the same
# expression, dx its taps in the same order; dweight / dbias are summed in another order. Local SASS for sm_90 (triton
# 3.6, 130M training launch, 4 pairs a thread in both): 576 instructions against the pair kernel's 936, 22 MUFU against
# 40, no spills; Triton keeps the splits, joins and reshapes in registers (no layout conversion but the five per-channel
# sums' at the end). On an H100 at b8 d1536 l2048 w4 bf16: 0.063-0.065 ms against 0.113 for the pair kernel (timings in
# _bwd_runs_blocks), and Mamba-1's graphed 130M training step 71.7-72.5 ms against 72.7-73.6 with the pair kernel
# (session 21, benchmarks/probes/train_ab.py, rounds alternating in one process).
# ----------------------------------------------------------------------------------------------
@triton.jit
def _unstack4(v):
    """[A, B, 4] -> its four [A, B] slices along the last axis, in order."""
    e, o = tl.split(tl.reshape(v, (v.shape[0], v.shape[1], 2, 2)))  # e = slices 0, 2; o = 1, 3
    e0, e1 = tl.split(e)
    o0, o1 = tl.split(o)
    return e0, o0, e1, o1


@triton.jit
def _stack4(v0, v1, v2, v3):
    """The inverse of _unstack4."""
    j = tl.join(tl.join(v0, v2), tl.join(v1, v3))  # [A, B, 2 (i), 2 (j)] = v[2 i + j]
    return tl.reshape(j, (v0.shape[0], v0.shape[1], 4))


@triton.jit
def _steps(v, IS_BF16: tl.constexpr):
    """The steps of int32 pair tiles v (a tuple of [A, B] tiles) as fp32 tiles, two per pair, in time order."""
    out = ()
    for i in tl.static_range(len(v)):
        lo, hi = _unpack_lo_hi(v[i], IS_BF16)
        out = out + (lo, hi)
    return out


@triton.jit
def _causal_conv1d_bwd_runs_kernel(
    x_ptr, w_ptr, bias_ptr, dout_ptr, dx_ptr, dw_part_ptr, db_part_ptr, L, D,
    stride_xb, stride_xd, stride_wd, stride_ww, stride_gb, stride_gd, stride_dxb, stride_dxd,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, IS_BF16: tl.constexpr,
    BLOCK_D: tl.constexpr, NT: tl.constexpr, NV: tl.constexpr,
):
    # strides of x, dout and dx in elements (even); L even. A program: BLOCK_D channels x NT runs of RUN = 4 NV pairs,
    # each read as NV 16-byte vectors (4 pairs: Triton keeps a 16-byte vector in one thread, so the splits into
    # steps stay in registers).
    RUN: tl.constexpr = 4 * NV
    HALO: tl.constexpr = 2  # pairs: ceil((W - 1) / 2) <= 2 for W <= 4
    S0: tl.constexpr = 2 * HALO  # index of the run's first step in the tuple of x steps
    pid_m, b, offs_d, offs_m, d_mask, M = _pair_program(L, D, BLOCK_D, NT * RUN)
    run = pid_m * (NT * RUN) + tl.arange(0, NT)[None, :, None] * RUN  # first pair of each run, [1, NT, 1]
    dm = d_mask[:, None, None]
    xp = _pair_rows(x_ptr, b, offs_d, stride_xb, stride_xd)[:, :, None]  # [BLOCK_D, 1, 1]
    gp = _pair_rows(dout_ptr, b, offs_d, stride_gb, stride_gd)[:, :, None]
    j2 = run + tl.arange(0, HALO)[None, None, :]
    x_pairs = tl.split(tl.load(xp + j2 - HALO, mask=dm & (j2 >= HALO) & (j2 - HALO < M), other=0))
    g_pairs = ()
    for v in tl.static_range(NV):
        j4 = run + 4 * v + tl.arange(0, 4)[None, None, :]
        x_pairs = x_pairs + _unstack4(tl.load(xp + j4, mask=dm & (j4 < M), other=0))
        g_pairs = g_pairs + _unstack4(tl.load(gp + j4, mask=dm & (j4 < M), other=0))
    x_pairs = x_pairs + tl.split(tl.load(xp + j2 + RUN, mask=dm & (j2 + RUN < M), other=0))
    g_pairs = g_pairs + tl.split(tl.load(gp + j2 + RUN, mask=dm & (j2 + RUN < M), other=0))
    # steps s0 - 2 HALO .. s0 + 2 (RUN + HALO) - 1 of x, and s0 .. s0 + 2 (RUN + HALO) - 1 of dout (s0 = 2 run)
    xs = _steps(x_pairs, IS_BF16)
    gs = _steps(g_pairs, IS_BF16)

    taps = ()
    for k in tl.static_range(W):
        taps = taps + (_tap(w_ptr, offs_d, k, stride_wd, stride_ww, d_mask),)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)[:, None]
    # dy at the run's 2 RUN steps and the W - 1 after them (0 past the sequence: dout reads 0 there)
    dy = ()
    for t in tl.static_range(2 * RUN + W - 1):
        g = gs[t]
        if SILU:
            pre = taps[0] * xs[S0 + t - (W - 1)]
            for k in tl.static_range(1, W):
                pre += taps[k] * xs[S0 + t - (W - 1) + k]
            if HAS_BIAS:
                pre += bias
            g = _dsilu(g, pre)
        dy = dy + (g,)
    # dx[s] = sum_j weight[W-1-j] dy[s + j], j ascending
    dx = ()
    for t in tl.static_range(2 * RUN):
        acc = taps[W - 1] * dy[t]
        for j in tl.static_range(1, W):
            acc += taps[W - 1 - j] * dy[t + j]
        dx = dx + (acc,)
    dxp = _pair_rows(dx_ptr, b, offs_d, stride_dxb, stride_dxd)[:, :, None]
    for v in tl.static_range(NV):
        p = ()
        for i in tl.static_range(4 * v, 4 * v + 4):
            p = p + (_pack_lo_hi(dx[2 * i], dx[2 * i + 1], IS_BF16),)
        j4 = run + 4 * v + tl.arange(0, 4)[None, None, :]
        tl.store(dxp + j4, _stack4(p[0], p[1], p[2], p[3]), mask=dm & (j4 < M))

    # dweight[k] partial = sum over the run's steps s of dy[s] x[s + k - (W-1)]
    part = (b * tl.num_programs(0) + pid_m) * D
    for k in tl.static_range(W):
        acc = dy[0] * xs[S0 + k - (W - 1)]
        for t in tl.static_range(1, 2 * RUN):
            acc += dy[t] * xs[S0 + t + k - (W - 1)]
        tl.store(dw_part_ptr + (part + offs_d) * W + k, tl.sum(acc, axis=1), mask=d_mask)
    if HAS_BIAS:
        acc = dy[0]
        for t in tl.static_range(1, 2 * RUN):
            acc += dy[t]
        tl.store(db_part_ptr + part + offs_d, tl.sum(acc, axis=1), mask=d_mask)


# ----------------------------------------------------------------------------------------------
# Backward of channel-last x (Mamba-2's xBC, a slice of the in-projection's rows) in one kernel that walks time
# row by row. A row is BLOCK_D contiguous channels, VEC of them per thread; a block of R rows is loaded as one
# [BLOCK_D, R] tile whose rows sit in each thread's registers (one block ahead), and each step takes one row: the
# pre-activation from a window of the last W-1 x rows, dy = dout * act'(pre), dx for the row W-1 steps back from a
# window of the last W-1 dy rows, and per-channel dweight / dbias sums in registers. No fp32 dy goes through
# memory and nothing is reduced across threads until the end. A program walks one segment of SEG steps, plus one
# block past its end for the dy rows that its last W-1 dx rows need (recomputed by the next segment too). The
# arithmetic is the two-kernel path's (the same dy, the taps added in the same order), so dx is the same bit for
# bit under the interpreter; dweight / dbias are summed in another order. Timings in _rows_config.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _row(tile, sel):
    """Row j of a [BLOCK_D, R] tile held in each thread's registers (sel = offs_r == j, j static): folds to
    register moves."""
    return tl.sum(tl.where(sel, tile, -0.0), axis=1)


@triton.jit
def _row_program(L, D, BLOCK_D: tl.constexpr, R: tl.constexpr, SEG: tl.constexpr, VEC: tl.constexpr):
    """This program's segment index, batch row (int64), channels (VEC contiguous per thread: VEC-wide loads), row
    offsets in a block, channel mask, and its steps [s0, s1)."""
    pid_s = tl.program_id(0)
    offs_d = tl.max_contiguous(tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D), VEC)
    s0 = pid_s * SEG
    return pid_s, tl.program_id(2).to(tl.int64), offs_d, tl.arange(0, R), offs_d < D, s0, tl.minimum(s0 + SEG, L)


@triton.jit
def _row_taps(w_ptr, bias_ptr, offs_d, d_mask, stride_wd, stride_ww, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Taps a, b, c, d (weight[:, k] for k = W-4 .. W-1, those below 0 unused; they meet x[t-3] .. x[t]) and the
    bias (zeros without one), fp32 [BLOCK_D] each."""
    w_d = tl.load(w_ptr + offs_d * stride_wd + (W - 1) * stride_ww, mask=d_mask, other=0.0).to(tl.float32)
    w_c = tl.load(w_ptr + offs_d * stride_wd + (W - 2) * stride_ww, mask=d_mask, other=0.0).to(tl.float32)
    w_b = w_c
    w_a = w_c
    if W >= 3:
        w_b = tl.load(w_ptr + offs_d * stride_wd + (W - 3) * stride_ww, mask=d_mask, other=0.0).to(tl.float32)
    if W >= 4:
        w_a = tl.load(w_ptr + offs_d * stride_wd + (W - 4) * stride_ww, mask=d_mask, other=0.0).to(tl.float32)
    bias = tl.zeros(offs_d.shape, tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    return w_a, w_b, w_c, w_d, bias


@triton.jit
def _x_window(x_row, s0, stride_xl, offs_d, d_mask):
    """x rows s0-3, s0-2, s0-1 as fp32 [BLOCK_D] (zeros before the sequence)."""
    xa = tl.load(x_row + (s0 - 3) * stride_xl, mask=d_mask & (offs_d * 0 + s0 - 3 >= 0), other=0.0).to(tl.float32)
    xb = tl.load(x_row + (s0 - 2) * stride_xl, mask=d_mask & (offs_d * 0 + s0 - 2 >= 0), other=0.0).to(tl.float32)
    xc = tl.load(x_row + (s0 - 1) * stride_xl, mask=d_mask & (offs_d * 0 + s0 - 1 >= 0), other=0.0).to(tl.float32)
    return xa, xb, xc


@triton.jit
def _row_pre(w_a, w_b, w_c, w_d, bias, xa, xb, xc, x_t, W: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The pre-activation of step t from the window x[t-3] .. x[t], in the general kernels' order (taps k
    ascending from zero, then the bias), so the same fp32 sums come out."""
    pre = tl.zeros(x_t.shape, tl.float32)
    if W >= 4:
        pre += w_a * xa
    if W >= 3:
        pre += w_b * xb
    pre += w_c * xc
    pre += w_d * x_t
    if HAS_BIAS:
        pre += bias
    return pre


@triton.jit
def _row_tiles(x_row, g_row, r0, L, stride_xl, stride_gl, offs_r, d_mask, HAS_G: tl.constexpr):
    """x (and, with HAS_G, dout) rows r0 .. r0+R-1 as [BLOCK_D, R] tiles in their dtype (zeros past L; dout
    stands in as x without HAS_G)."""
    mask = d_mask[:, None] & (r0 + offs_r < L)[None, :]
    X = tl.load(x_row[:, None] + (r0 + offs_r)[None, :] * stride_xl, mask=mask, other=0.0)
    G = X
    if HAS_G:
        G = tl.load(g_row[:, None] + (r0 + offs_r)[None, :] * stride_gl, mask=mask, other=0.0)
    return X, G


@triton.jit
def _causal_conv1d_bwd_rows_kernel(
    x_ptr, w_ptr, bias_ptr, dout_ptr, dx_ptr, dw_part_ptr, db_part_ptr, L, D,
    stride_xb, stride_xl, stride_wd, stride_ww, stride_gb, stride_gl, stride_dxb, stride_dxl,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, R: tl.constexpr, SEG: tl.constexpr, VEC: tl.constexpr,
):
    # x, dout and dx have contiguous channels (stride 1); W <= 4
    pid_s, b, offs_d, offs_r, d_mask, s0, s1 = _row_program(L, D, BLOCK_D, R, SEG, VEC)
    x_row = x_ptr + b * stride_xb + offs_d
    g_row = dout_ptr + b * stride_gb + offs_d
    dx_row = dx_ptr + b * stride_dxb + offs_d
    w_a, w_b, w_c, w_d, bias = _row_taps(w_ptr, bias_ptr, offs_d, d_mask, stride_wd, stride_ww, W, HAS_BIAS)
    # windows: x[t-3], x[t-2], x[t-1] and dy[t-3], dy[t-2], dy[t-1] (dy before s0 feeds no stored dx row)
    xa, xb, xc = _x_window(x_row, s0, stride_xl, offs_d, d_mask)
    ya = tl.zeros([BLOCK_D], tl.float32)
    yb = tl.zeros([BLOCK_D], tl.float32)
    yc = tl.zeros([BLOCK_D], tl.float32)
    dw_a = tl.zeros([BLOCK_D], tl.float32)
    dw_b = tl.zeros([BLOCK_D], tl.float32)
    dw_c = tl.zeros([BLOCK_D], tl.float32)
    dw_d = tl.zeros([BLOCK_D], tl.float32)
    db = tl.zeros([BLOCK_D], tl.float32)
    tile_offs = offs_d[:, None] * 0 + offs_r[None, :]  # row offsets within a block

    X_nxt, G_nxt = _row_tiles(x_row, g_row, s0, L, stride_xl, stride_gl, offs_r, d_mask, True)
    for r0 in range(s0, s1 + R, R):  # the segment's blocks, then one past its end (R >= W - 1 rows)
        X, G = X_nxt, G_nxt
        X_nxt, G_nxt = _row_tiles(x_row, g_row, r0 + R, L, stride_xl, stride_gl, offs_r, d_mask, True)
        for j in tl.static_range(R):
            sel = tile_offs == j
            x_t = _row(X.to(tl.float32), sel)
            dy = _row(G.to(tl.float32), sel)
            if SILU:
                dy = _dsilu(dy, _row_pre(w_a, w_b, w_c, w_d, bias, xa, xb, xc, x_t, W, HAS_BIAS))
            t = r0 + j
            # this segment's rows only: dweight[k] += dy[t] x[t - (W-1) + k], dbias += dy[t]
            dy_own = tl.where(offs_d * 0 + t < s1, dy, 0.0)
            if W >= 4:
                dw_a += dy_own * xa
            if W >= 3:
                dw_b += dy_own * xb
            dw_c += dy_own * xc
            dw_d += dy_own * x_t
            db += dy_own
            # dx[s] = sum_j weight[W-1-j] dy[s + j] for s = t - (W-1), j ascending (the two-kernel order)
            dxs = tl.zeros([BLOCK_D], tl.float32)
            if W >= 4:
                dxs += w_d * ya
                dxs += w_c * yb
                dxs += w_b * yc
                dxs += w_a * dy
            elif W == 3:
                dxs += w_d * yb
                dxs += w_c * yc
                dxs += w_b * dy
            else:
                dxs += w_d * yc
                dxs += w_c * dy
            s = offs_d * 0 + t - (W - 1)
            tl.store(dx_row + s * stride_dxl, dxs.to(dx_ptr.dtype.element_ty), mask=d_mask & (s >= s0) & (s < s1))
            xa, xb, xc = xb, xc, x_t
            ya, yb, yc = yb, yc, dy
    part = (b * tl.num_programs(0) + pid_s) * D + offs_d
    if W >= 4:
        tl.store(dw_part_ptr + part * W + (W - 4), dw_a, mask=d_mask)
    if W >= 3:
        tl.store(dw_part_ptr + part * W + (W - 3), dw_b, mask=d_mask)
    tl.store(dw_part_ptr + part * W + (W - 2), dw_c, mask=d_mask)
    tl.store(dw_part_ptr + part * W + (W - 1), dw_d, mask=d_mask)
    if HAS_BIAS:
        tl.store(db_part_ptr + part, db, mask=d_mask)


@triton.jit
def _causal_conv1d_fwd_rows_kernel(
    x_ptr, w_ptr, bias_ptr, out_ptr, L, D, stride_xb, stride_xl, stride_wd, stride_ww, stride_ob, stride_ol,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
    BLOCK_D: tl.constexpr, R: tl.constexpr, SEG: tl.constexpr, VEC: tl.constexpr,
):
    # The forward of the row walk above: x and out with contiguous channels (stride 1), W <= 4; the same fp32 sums
    # as the general kernel.
    _, b, offs_d, offs_r, d_mask, s0, s1 = _row_program(L, D, BLOCK_D, R, SEG, VEC)
    x_row = x_ptr + b * stride_xb + offs_d
    o_row = out_ptr + b * stride_ob + offs_d
    w_a, w_b, w_c, w_d, bias = _row_taps(w_ptr, bias_ptr, offs_d, d_mask, stride_wd, stride_ww, W, HAS_BIAS)
    xa, xb, xc = _x_window(x_row, s0, stride_xl, offs_d, d_mask)
    tile_offs = offs_d[:, None] * 0 + offs_r[None, :]
    X_nxt, _ = _row_tiles(x_row, x_row, s0, L, stride_xl, stride_xl, offs_r, d_mask, False)
    for r0 in range(s0, s1, R):
        X = X_nxt
        X_nxt, _ = _row_tiles(x_row, x_row, r0 + R, L, stride_xl, stride_xl, offs_r, d_mask, False)
        Y = tl.zeros([BLOCK_D, R], tl.float32)
        for j in tl.static_range(R):
            sel = tile_offs == j
            x_t = _row(X.to(tl.float32), sel)
            y = _row_pre(w_a, w_b, w_c, w_d, bias, xa, xb, xc, x_t, W, HAS_BIAS)
            if SILU:
                y = y * tl.sigmoid(y)
            Y = tl.where(sel, y[:, None], Y)
            xa, xb, xc = xb, xc, x_t
        tl.store(o_row[:, None] + (r0 + offs_r)[None, :] * stride_ol, Y.to(out_ptr.dtype.element_ty),
                 mask=d_mask[:, None] & (r0 + offs_r < s1)[None, :])


# The row kernels wherever they apply (channel-last x: Mamba-2's xBC). H100, b8 l2048, 1792 of 3352 channels, w4
# bf16 silu bias (session 14, benchmarks/probes/conv_probe.py --parts m2): forward 0.052 ms against 0.091 for the
# general kernel, backward 0.098 against 0.399; out and dx equal bit for bit.
_FWD_ROWS = True
_BWD_ROWS = True


def _rows_config(backward: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_D, R, SEG, VEC, num_warps) of the row kernels: 128 channels per warp, 4 per thread (8-byte loads of
    16-bit x), rows in blocks of 8, segments of 128 steps, for both directions. Eleven shapes swept on the H100
    (session 14, the input above), fwd / bwd ms: this one 0.052 / 0.098; R4 SEG64 0.050 / 0.123; SEG256
    0.063 / 0.089; SEG64 0.054 / 0.115; 256 channels over 2 warps 0.051 / 0.097; 256 channels at 8 per thread
    0.059 / 0.184 (R4: 0.096); R16 0.069 / 0.132; R4 SEG32 0.051 / 0.143; 64 channels at 2 per thread
    0.051 / 0.105. None beat this one in both directions by more than 0.01 ms."""
    return 128, 8, 128, 4, 1


def _rows_apply(width, seq_idx, initial_states, *tensors) -> bool:
    """Whether the row kernels can run: all ``tensors`` with contiguous channels (stride 1) and strided time,
    width 2..4, no seq_idx or initial states (the caller checks the final states)."""
    return (seq_idx is None and initial_states is None and 2 <= width <= 4
            and all(t.stride(1) == 1 and t.stride(2) != 1 for t in tensors))


_BWD_PAIRS = True  # the one-kernel pair backward where it applies
_BWD_RUNS = True  # there, the run-per-thread kernel (_causal_conv1d_bwd_runs_kernel); False: the pair kernel


def _bwd_pairs_blocks(L) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_M) of the pair backward: 256 steps (128 pairs) x 4 channels at length 2048. b8 d1536 l2048
    w4 bf16 silu bias on an H100 (session 12, benchmarks/probes/conv_probe.py --parts bwd, CUDA-graph replay, floor
    0.050 ms for reading x and dout and writing dx): 4 x 256 steps 0.113 ms, 2 x 1024 (the forward's blocks) 0.129,
    2 x 512 0.134, 8 x 256 0.148, 4 x 512 0.150, 16 x 128 0.152, 2 x 1024 with 8 warps 0.149; the two-kernel path
    0.228-0.229. Session 16, same probe and shape, not kept: the channel-last row walk (_causal_conv1d_bwd_rows_kernel)
    run on time-contiguous x (a block's R steps contiguous in each thread, one channel per thread, dx gathered into
    a tile and stored a block late; dx the same bits as the two-kernel path on the GPU) took 0.113 ms at best
    (R 16, segments of 512 steps, 64 or 128 channels a program) against 0.113 for this kernel; R 8: 0.149-0.325
    (segments of 128-2048), R 4: 0.320; R 32 spills (255 registers, 1.7 KB). Each load touches 16-32 bytes
    of a channel's row per DRAM page (channels 32 KB apart in the Mamba-1 mixer's layout)."""
    block_l = min(256, max(16, next_pow2(_static(L, 1 << 20))))
    return max(1, 1024 // block_l), block_l // 2


_BWD_RUNS_NV = 2  # 16-byte vectors (4 pairs) per run
_BWD_RUNS_NT = 128  # runs per channel and program, at most


def _bwd_runs_blocks(L) -> tuple[int, int, int, int]:
    """(BLOCK_D, NT, NV, num_warps) of the run-per-thread backward: NT runs of 4 NV pairs per channel, one per
    thread, 128 threads. b8 d1536 l2048 w4 bf16 silu bias on an H100 (session 21, benchmarks/probes/conv_probe.py
    --parts runs, two calls, CUDA-graph replay, medians of three rounds alternating; floor 0.050 ms), ms
    time-contiguous / in the Mamba-1 mixer's channel-major x, against 0.113 / 0.113 for the pair kernel:

        (1, 128, 2, 4) 0.063 / 0.065 (the default: a channel's 2048 steps in one program)
        (1, 64, 2, 2) 0.064 / 0.066    (2, 64, 2, 4) 0.066 / 0.068    (1, 64, 4, 2) 0.066 / 0.068
        (2, 32, 2, 2) 0.071 / 0.072    (4, 64, 2, 8) 0.073 / 0.074    (2, 64, 4, 4) 0.077 / 0.074
        (4, 32, 4, 4) 0.075 / 0.077    (4, 32, 2, 4) 0.073 / 0.075    (8, 16, 2, 4) 0.078 / 0.080
        (1, 128, 1, 4) 0.077 / 0.079   (2, 32, 1, 2) 0.077 / 0.077    (4, 32, 1, 4) 0.082 / 0.082
        (2, 64, 1, 4) 0.083 / 0.083    (4, 64, 1, 8) 0.095 / 0.095    (8, 16, 1, 4) 0.102 / 0.103
        (8, 32, 1, 8) 0.107 / 0.108

    dx within a 16-bit rounding step of the pair kernel's (ptxas contracts differently), dweight within 2e-7."""
    nv = _BWD_RUNS_NV
    nt = min(_BWD_RUNS_NT, max(2, next_pow2(cdiv(_static(L, 1 << 20) // 2, 4 * nv))))
    return max(1, 128 // nt), nt, nv, 4


def causal_conv1d_bwd(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu: bool,
                      *, wrap: bool = True, block_d: int | None = None, block_l: int | None = None,
                      num_warps: int = 4, pairs: bool | None = None, rows: bool | None = None,
                      rows_config: tuple[int, int, int, int, int] | None = None, runs: bool | None = None,
                      runs_config: tuple[int, int, int, int] | None = None):
    """Returns (dx, dweight, dbias, dinitial_states); dbias / dinitial_states are empty tensors when
    bias / initial_states are None. ``pairs`` forces the one-kernel pair backward on (where it applies) or
    off; None: ``_BWD_PAIRS``; ``runs`` picks its run-per-thread variant (None: ``_BWD_RUNS``), with
    ``runs_config`` = (BLOCK_D, NT, NV, num_warps) in place of ``_bwd_runs_blocks``. ``rows`` likewise for the
    row-walking channel-last backward (``_BWD_ROWS``), with ``rows_config`` = (BLOCK_D, R, SEG, VEC, num_warps) in
    place of ``_rows_config()``."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    bias = bias.contiguous() if bias is not None else None
    dx = torch.empty_like(x)
    if ((_BWD_PAIRS if pairs is None else pairs) and dfinal_states is None
            and _pairs_apply(x, dx, seq_idx, initial_states, dout)):
        if _BWD_RUNS if runs is None else runs:  # the run-per-thread kernel
            block_d, nt, nv, num_warps = runs_config or _bwd_runs_blocks(seqlen)
            kernel, blocks = _causal_conv1d_bwd_runs_kernel, dict(NT=nt, NV=nv)
            n_m = cdiv(seqlen // 2, nt * 4 * nv)
        else:  # the pair kernel
            bd, bm = _bwd_pairs_blocks(seqlen)
            block_d, block_m = block_d or bd, block_l // 2 if block_l else bm
            kernel, blocks = _causal_conv1d_bwd_pairs_kernel, dict(BLOCK_M=block_m)
            n_m = cdiv(seqlen // 2, block_m)
        dw_part, db_part = _partials(x, batch * n_m, width)
        launcher(kernel, wrap)[(n_m, cdiv(dim, block_d), batch)](
            x, weight, _or_dummy(bias, weight), dout, dx, dw_part, db_part, seqlen, dim,
            x.stride(0), x.stride(1), *weight.stride(), dout.stride(0), dout.stride(1), dx.stride(0), dx.stride(1),
            W=width, HAS_BIAS=bias is not None, SILU=silu, IS_BF16=x.dtype == torch.bfloat16,
            BLOCK_D=block_d, **blocks, num_warps=num_warps,
        )
        return (dx, *_sum_partials(dw_part, db_part, weight, bias, x), x.new_empty(0))
    if ((_BWD_ROWS if rows is None else rows) and dfinal_states is None
            and _rows_apply(width, seq_idx, initial_states, x, dx, dout)):
        cfg = _rows_config(backward=True) if rows_config is None else rows_config
        if cfg[1] < width - 1:  # the block past a segment's end must hold the W-1 dy rows its last dx rows read
            raise ValueError(f"rows_config: R = {cfg[1]} must be at least width - 1 = {width - 1}")
        n_s = cdiv(seqlen, cfg[2])
        dw_part, db_part = _partials(x, batch * n_s, width)
        launcher(_causal_conv1d_bwd_rows_kernel, wrap)[(n_s, cdiv(dim, cfg[0]), batch)](
            x, weight, _or_dummy(bias, weight), dout, dx, dw_part, db_part, seqlen, dim,
            x.stride(0), x.stride(2), *weight.stride(), dout.stride(0), dout.stride(2), dx.stride(0), dx.stride(2),
            W=width, HAS_BIAS=bias is not None, SILU=silu, BLOCK_D=cfg[0], R=cfg[1], SEG=cfg[2], VEC=cfg[3],
            num_warps=cfg[4],
        )
        return (dx, *_sum_partials(dw_part, db_part, weight, bias, x), x.new_empty(0))
    bd, bl = _fwd_blocks(x, backward=True)
    block_d, block_l = block_d or bd, block_l or bl
    n_l = cdiv(seqlen, block_l)
    grid = (n_l, cdiv(dim, block_d), batch)
    # dy in x's layout, so the kernels' tiles read and write it along the same contiguous axis as x
    if x.stride(1) == 1 and x.stride(2) != 1:  # channel-last
        dy = torch.empty(batch, seqlen, dim, device=x.device, dtype=torch.float32).transpose(1, 2)
    else:
        dy = torch.empty(batch, dim, seqlen, device=x.device, dtype=torch.float32)
    dw_part, db_part = _partials(x, batch * n_l, width)
    launcher(_causal_conv1d_bwd_dy_kernel, wrap)[grid](
        x, weight, _or_dummy(bias, weight), _or_dummy(seq_idx, weight), _or_dummy(initial_states, weight), dout,
        dy, dw_part, db_part, seqlen, dim,
        *x.stride(), *weight.stride(), *_strides(seq_idx, 2), *_strides(initial_states, 3), *dout.stride(),
        *dy.stride(), W=width, HAS_BIAS=bias is not None, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        SILU=silu, BLOCK_D=block_d, BLOCK_L=block_l, num_warps=num_warps,
    )
    dinit = torch.empty_like(initial_states) if initial_states is not None else x.new_empty(0)
    launcher(_causal_conv1d_bwd_dx_kernel, wrap)[grid](
        weight, _or_dummy(seq_idx, weight), dy, _or_dummy(dfinal_states, weight), dx,
        dinit if initial_states is not None else dx, seqlen, dim,
        *weight.stride(), *_strides(seq_idx, 2), *_strides(dfinal_states, 3), *dx.stride(),
        *_strides(dinit if initial_states is not None else None, 3), *dy.stride(),
        W=width, HAS_SEQ=seq_idx is not None, HAS_INIT=initial_states is not None,
        HAS_DFINAL=dfinal_states is not None, BLOCK_D=block_d, BLOCK_L=block_l,
        BLOCK_W=max(2, next_pow2(width - 1)), num_warps=num_warps,
    )
    return (dx, *_sum_partials(dw_part, db_part, weight, bias, x), dinit)


def _partials(x, rows: int, width: int):
    """fp32 per-block partial sums of dweight (rows, dim, width) and dbias (rows, dim), one row per (batch row,
    sequence block), as every backward kernel writes them."""
    f32 = dict(device=x.device, dtype=torch.float32)
    return torch.empty(rows, x.shape[1], width, **f32), torch.empty(rows, x.shape[1], **f32)


def _sum_partials(dw_part, db_part, weight, bias, x):
    """(dweight, dbias) from the partial sums, in the parameters' dtypes (dbias empty without a bias)."""
    return dw_part.sum(0).to(weight.dtype), db_part.sum(0).to(bias.dtype) if bias is not None else x.new_empty(0)


# ----------------------------------------------------------------------------------------------
# Decode update. xnew = cat(window, x) where window holds the W-1 inputs before x, read from
# conv_state: its last W-1 entries (shift register) or the W-1 entries before cache_seqlens % S
# (circular buffer). out[i] = act(bias + sum_k weight[k] * xnew[i + k]).
# The state is read completely before it is written (barriers between), since rows update in place.
# ----------------------------------------------------------------------------------------------
@triton.jit
def _causal_conv1d_update_kernel(
    x_ptr, state_ptr, w_ptr, bias_ptr, seqlens_ptr, indices_ptr, out_ptr, L, D, S, cache_batch,
    stride_xb, stride_xd, stride_xl, stride_cb, stride_cd, stride_cl, stride_wd, stride_ww,
    stride_ob, stride_od, stride_ol,
    W: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, CIRCULAR: tl.constexpr,
    HAS_INDICES: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = offs_d < D
    if HAS_INDICES:
        row = tl.load(indices_ptr + b).to(tl.int64)
    else:
        row = b
    # padding (< 0) and out-of-range rows: out = 0, no write. Kept per channel, as a block: the
    # interpreter mishandles a scalar bool combined with a block mask.
    row_d = row + tl.zeros((BLOCK_D,), dtype=tl.int64)
    valid = (row_d >= 0) & (row_d < cache_batch)
    state_ok = d_mask & valid  # channels whose cache row is read and written
    row = tl.where(row < 0, 0, tl.where(row < cache_batch, row, 0))
    if CIRCULAR:
        start = tl.load(seqlens_ptr + b).to(tl.int64) % S
        start = tl.where(start < 0, start + S, start)
    else:
        start = S  # the window is the last W-1 entries, as if the buffer began at S
    state_row = state_ptr + row * stride_cb + offs_d[:, None] * stride_cd
    x_row = x_ptr + b * stride_xb + offs_d[:, None] * stride_xd

    bias = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    for t0 in range(0, L, BLOCK_T):
        offs_t = t0 + tl.arange(0, BLOCK_T)
        t_mask = offs_t < L
        acc = tl.zeros((BLOCK_D, BLOCK_T), dtype=tl.float32) + bias[:, None]
        for k in tl.static_range(W):
            q = offs_t + k  # index into xnew
            from_state = q < W - 1
            spos = (start - (W - 1) + q + S) % S
            v = tl.load(state_row + spos[None, :] * stride_cl,
                        mask=state_ok[:, None] & (from_state & t_mask)[None, :], other=0.0).to(tl.float32)
            v += tl.load(x_row + (q - (W - 1))[None, :] * stride_xl,
                         mask=d_mask[:, None] & ((~from_state) & t_mask)[None, :], other=0.0).to(tl.float32)
            w_k = tl.load(w_ptr + offs_d * stride_wd + k * stride_ww, mask=d_mask, other=0.0).to(tl.float32)
            acc += w_k[:, None] * v
        if SILU:
            acc = acc * tl.sigmoid(acc)
        acc = tl.where(valid[:, None], acc, 0.0)
        tl.store(out_ptr + b * stride_ob + offs_d[:, None] * stride_od + offs_t[None, :] * stride_ol,
                 acc.to(out_ptr.dtype.element_ty), mask=d_mask[:, None] & t_mask[None, :])

    tl.debug_barrier()  # every window read above happens before the writes below
    for s0 in range(0, S, BLOCK_S):
        offs_s = s0 + tl.arange(0, BLOCK_S)
        s_mask = offs_s < S
        if CIRCULAR:
            # position offs_s receives token i = (offs_s - start) mod S, the last such i < L when
            # several tokens wrap onto it (only the newest survives)
            off = (offs_s - start + S) % S
            write = off < L
            i_last = off + ((L - 1 - off) // S) * S
            v = tl.load(x_row + i_last[None, :] * stride_xl,
                        mask=state_ok[:, None] & (write & s_mask)[None, :], other=0.0)
            tl.store(state_row + offs_s[None, :] * stride_cl, v.to(state_ptr.dtype.element_ty),
                     mask=state_ok[:, None] & (write & s_mask)[None, :])
        else:
            # shift register: new[p] = cat(state, x)[p + L]; reads lie ahead of this chunk's writes
            src = offs_s + L
            from_state = src < S
            v = tl.load(state_row + src[None, :] * stride_cl,
                        mask=state_ok[:, None] & (from_state & s_mask)[None, :], other=0.0).to(tl.float32)
            v += tl.load(x_row + (src - S)[None, :] * stride_xl,
                         mask=state_ok[:, None] & ((~from_state) & s_mask)[None, :], other=0.0).to(tl.float32)
            tl.debug_barrier()
            tl.store(state_row + offs_s[None, :] * stride_cl, v.to(state_ptr.dtype.element_ty),
                     mask=state_ok[:, None] & s_mask[None, :])


def causal_conv1d_update(x, conv_state, weight, bias, silu: bool, cache_seqlens, conv_state_indices,
                         *, wrap: bool = True):
    """x: (batch, dim, seqlen). Updates conv_state in place and returns out (batch, dim, seqlen)."""
    batch, dim, seqlen = x.shape
    cache_batch, _, state_len = conv_state.shape
    width = weight.shape[1]
    out = torch.empty_like(x)
    bias = bias.contiguous() if bias is not None else None  # dense vectors: the kernel indexes them by b / d
    cache_seqlens = cache_seqlens.contiguous() if cache_seqlens is not None else None
    conv_state_indices = conv_state_indices.contiguous() if conv_state_indices is not None else None
    block_t = min(16, max(2, next_pow2(_static(seqlen, 16))))
    block_s = min(32, max(2, next_pow2(_static(state_len, 32))))
    block_d = 64
    grid = (batch, cdiv(dim, block_d))
    launcher(_causal_conv1d_update_kernel, wrap)[grid](
        x, conv_state, weight, _or_dummy(bias, weight), _or_dummy(cache_seqlens, weight),
        _or_dummy(conv_state_indices, weight), out, seqlen, dim, state_len, cache_batch,
        *x.stride(), *conv_state.stride(), *weight.stride(), *out.stride(),
        W=width, HAS_BIAS=bias is not None, SILU=silu, CIRCULAR=cache_seqlens is not None,
        HAS_INDICES=conv_state_indices is not None, BLOCK_D=block_d, BLOCK_T=block_t, BLOCK_S=block_s,
        num_warps=4,
    )
    return out


def _or_dummy(t, like):
    """A tensor to pass for an absent pointer argument (never read: its HAS_* flag is off)."""
    return t if t is not None else like


def _strides(t, n: int):
    return tuple(t.stride()) if t is not None else (0,) * n
