"""Causal depthwise conv1d (Mamba's short convolution) and its decode update.

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k]),   act = id or silu

with x[t < 0] read from initial_states (or 0), and, with seq_idx, a tap reading another packed sequence
counting as 0. Shapes:

    x, out:                        (batch, dim, seqlen)   any strides (channel-last x too)
    weight:                        (dim, width)           width >= 2 (any width; Mamba uses 4)
    bias:                          (dim,)
    seq_idx:                       (batch, seqlen)        int32
    initial_states, final_states:  (batch, dim, width - 1)
    decode: x, out                 (batch, dim) or (batch, dim, seqlen)
            conv_state             (cache_batch, dim, state_len), state_len >= width - 1, updated in place
            cache_seqlens          (batch,) int32: conv_state is a circular buffer written from cache_seqlens % state_len
            conv_state_indices     (batch,) int32: cache row per batch row; < 0 (or >= cache_batch) = padding

Math is fp32 whatever the input dtypes; out and final_states have x's dtype (final_states are inputs,
so this is exact). ``mamba_compile::causal_conv1d_fwd`` / ``_bwd`` / ``_update`` are triton_ops: plain
torch on CPU (also what tracing sees), Triton kernels from ``causal_conv1d_triton`` on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.library import triton_op

from ._checks import FLOAT_DTYPES, check_choice, check_row_span, check_same_device, check_tensor
from ._eager import plain_eager

ACTIVATIONS = (None, "silu", "swish")
# float64 is accepted on CPU (gradcheck); there the math runs in float64 when any input is float64
CPU_DTYPES = FLOAT_DTYPES + (torch.float64,)


# ----------------------------------------------------------------------------------------------
# Public functions
# ----------------------------------------------------------------------------------------------
def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    return_final_states: bool = False,
    activation: str | None = None,
):
    """Causal depthwise conv1d over x (batch, dim, seqlen); returns out, or (out, final_states)."""
    check_choice("activation", activation, ACTIVATIONS)
    _check_conv(x, weight, bias, seq_idx, initial_states, return_final_states)
    args = (x, weight, bias, seq_idx, initial_states, return_final_states, activation is not None)
    if x.device.type == "cuda" and _plain_eager(x, weight, bias, seq_idx, initial_states):
        out, final_states = _EagerConv.apply(*args)
    else:
        out, final_states = torch.ops.mamba_compile.causal_conv1d_fwd(*args)
    return (out, final_states) if return_final_states else out


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    cache_seqlens: torch.Tensor | None = None,
    conv_state_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Decode step: convolves the new token(s) x with the window held in conv_state, updating it in place.

    Padding rows (conv_state_indices < 0, like the reference, or >= cache_batch) give zeros and
    leave every cache row untouched. Not differentiable (decode only).
    """
    check_choice("activation", activation, ACTIVATIONS)
    check_tensor("x", x, dtypes=None)
    if x.dim() not in (2, 3):
        raise ValueError(f"x must have shape (batch, dim) or (batch, dim, seqlen), got {tuple(x.shape)}")
    x3 = x.unsqueeze(-1) if x.dim() == 2 else x
    _check_update(x3, conv_state, weight, bias, cache_seqlens, conv_state_indices)
    out = torch.ops.mamba_compile.causal_conv1d_update(
        x3, conv_state, weight, bias, activation is not None, cache_seqlens, conv_state_indices
    )
    return out.squeeze(-1) if x.dim() == 2 else out


# ----------------------------------------------------------------------------------------------
# Validation: one function per op, run by the public function and again inside the op body
# ----------------------------------------------------------------------------------------------
def _dtypes(x: torch.Tensor):
    return CPU_DTYPES if x.device.type == "cpu" else FLOAT_DTYPES


def _acc_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_width(weight: torch.Tensor) -> None:
    check_tensor("weight", weight, shape=(None, None), letters="(dim, width)", dtypes=_dtypes(weight))
    if weight.shape[1] < 2:
        raise ValueError(f"weight must have shape (dim, width) with width >= 2, got {tuple(weight.shape)}")


def _check_conv(x, weight, bias, seq_idx, initial_states, return_final_states: bool) -> None:
    check_tensor("x", x, shape=(None, None, None), letters="(batch, dim, seqlen)", dtypes=_dtypes(x))
    batch, dim, seqlen = x.shape
    _check_width(weight)
    width = weight.shape[1]
    check_tensor("weight", weight, shape=(dim, width), letters="(dim, width)", dtypes=_dtypes(x))
    check_tensor("bias", bias, shape=(dim,), letters="(dim,)", dtypes=_dtypes(x), optional=True)
    check_tensor("seq_idx", seq_idx, shape=(batch, seqlen), letters="(batch, seqlen)",
                 dtypes=(torch.int32,), optional=True)
    check_tensor("initial_states", initial_states, shape=(batch, dim, width - 1),
                 letters="(batch, dim, width - 1)", dtypes=_dtypes(x), optional=True)
    if seq_idx is not None and (initial_states is not None or return_final_states):
        # as in the reference: with packed sequences, which sequence a state belongs to is ambiguous
        raise ValueError("seq_idx cannot be combined with initial_states or return_final_states")
    check_same_device(x=x, weight=weight, bias=bias, seq_idx=seq_idx, initial_states=initial_states)
    check_row_span("x", x)


def _check_update(x, conv_state, weight, bias, cache_seqlens, conv_state_indices) -> None:
    check_tensor("x", x, shape=(None, None, None), letters="(batch, dim, seqlen)", dtypes=_dtypes(x))
    batch, dim, seqlen = x.shape
    _check_width(weight)
    width = weight.shape[1]
    check_tensor("weight", weight, shape=(dim, width), letters="(dim, width)", dtypes=_dtypes(x))
    check_tensor("conv_state", conv_state, shape=(None, dim, None), letters="(cache_batch, dim, state_len)",
                 dtypes=_dtypes(x))
    if conv_state.shape[2] < width - 1:
        raise ValueError(f"conv_state must have shape (cache_batch, dim, state_len) with state_len >= "
                         f"width - 1 = {width - 1}, got {tuple(conv_state.shape)}")
    if conv_state_indices is None and conv_state.shape[0] != batch:
        raise ValueError(f"conv_state must have shape (batch, dim, state_len) = ({batch}, {dim}, *) when "
                         f"conv_state_indices is None, got {tuple(conv_state.shape)}")
    check_tensor("bias", bias, shape=(dim,), letters="(dim,)", dtypes=_dtypes(x), optional=True)
    check_tensor("cache_seqlens", cache_seqlens, shape=(batch,), letters="(batch,)",
                 dtypes=(torch.int32,), optional=True)
    check_tensor("conv_state_indices", conv_state_indices, shape=(batch,), letters="(batch,)",
                 dtypes=(torch.int32,), optional=True)
    check_same_device(x=x, conv_state=conv_state, weight=weight, bias=bias, cache_seqlens=cache_seqlens,
                      conv_state_indices=conv_state_indices)


# ----------------------------------------------------------------------------------------------
# CPU math (plain torch, vectorised over time: width is small and static, so the tap loop is unrolled
# at trace time and symbolic sequence lengths stay symbolic)
# ----------------------------------------------------------------------------------------------
def _taps_cpu(x, weight, seq_idx, initial_states):
    """xpad = cat(initial_states or 0, x) in fp32 (batch, dim, seqlen + width - 1); per tap k the inputs
    it reads, xpad[..., k : k + seqlen], zeroed where they cross a seq_idx change; and those masks
    (batch, 1, seqlen) per tap, or Nones without seq_idx."""
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    acc = _acc_dtype(x, weight, initial_states)
    if initial_states is None:
        history = x.new_zeros(batch, dim, width - 1, dtype=acc)
    else:
        history = initial_states.to(acc)
    xpad = torch.cat([history, x.to(acc)], dim=-1)
    # tap k of output t reads position t - (width-1) + k, which must belong to t's sequence
    # (before t = 0 there are only zeros, so the padding value does not matter)
    seq_pad = F.pad(seq_idx, (width - 1, 0)) if seq_idx is not None else None
    taps, masks = [], []
    for k in range(width):
        tap, mask = xpad[..., k : k + seqlen], None
        if seq_idx is not None:
            mask = (seq_pad[:, k : k + seqlen] == seq_idx).unsqueeze(1)
            tap = tap * mask
        taps.append(tap)
        masks.append(mask)
    return xpad, taps, masks


def _preact_cpu(weight, bias, xpad, taps, masks):
    """The pre-activation from _taps_cpu's results: without seq_idx masks one depthwise convolution of xpad,
    else the masked taps summed."""
    w = weight.to(xpad.dtype)
    if all(mask is None for mask in masks):
        return _depthwise_conv(xpad, w, bias.to(xpad.dtype) if bias is not None else None)
    y = sum(w[:, k, None] * tap for k, tap in enumerate(taps))
    return y + bias.to(y.dtype)[:, None] if bias is not None else y


def _depthwise_conv(x, weight, bias):
    """Valid depthwise convolution of x (batch, dim, n) with weight (dim, width): one oneDNN call on CPU instead
    of a pass per tap (Mamba-2's small CPU model: the conv op 2.6 -> 2.0 ms a call, 0.6 of it this convolution;
    thirteenth session). aten's convolution rather than F.conv1d, which CPU autocast would run in bf16: these ops
    keep their inputs' dtype."""
    return torch.ops.aten.convolution(x, weight[:, None, :], bias, [1], [0], [1], False, [0], x.shape[1])


def _conv_fwd_cpu(x, weight, bias, seq_idx, initial_states, return_final_states, silu):
    seqlen = x.shape[2]
    xpad, taps, masks = _taps_cpu(x, weight, seq_idx, initial_states)
    y = _preact_cpu(weight, bias, xpad, taps, masks)
    out = (F.silu(y) if silu else y).to(x.dtype)
    final_states = xpad[..., seqlen:].to(x.dtype, copy=True) if return_final_states else x.new_empty(0)
    return out, final_states


def _conv_bwd_cpu(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu):
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    xpad, taps, masks = _taps_cpu(x, weight, seq_idx, initial_states)
    acc = xpad.dtype
    dy = dout.to(acc)
    if silu:
        y = _preact_cpu(weight, bias, xpad, taps, masks)
        sig = torch.sigmoid(y)
        dy = dy * sig * (1 + y * (1 - sig))
    w = weight.to(acc)
    # tap k of output t reads xpad[t + k], so its gradient lands there
    if seq_idx is None:  # dxpad[p] = sum_k w[k] dy[p - k]: a full depthwise convolution with the flipped taps
        dxpad = _depthwise_conv(F.pad(dy, (width - 1, width - 1)), w.flip(-1), None)
    else:
        dxpad = sum(
            F.pad(w[:, k, None] * (dy if mask is None else dy * mask), (k, width - 1 - k))
            for k, mask in enumerate(masks)
        )
    if dfinal_states is not None:
        dxpad = dxpad + F.pad(dfinal_states.to(acc), (seqlen, 0))  # final_states = xpad[..., seqlen:]
    dx = dxpad[..., width - 1 :].to(x.dtype, copy=True)  # copies: outputs must not alias
    if initial_states is not None:
        dinit = dxpad[..., : width - 1].to(initial_states.dtype, copy=True)
    else:
        dinit = x.new_empty(0)
    dweight = torch.stack([(dy * tap).sum((0, 2)) for tap in taps], dim=-1).to(weight.dtype)
    dbias = dy.sum((0, 2)).to(bias.dtype) if bias is not None else x.new_empty(0)
    return dx, dweight, dbias, dinit


def _update_cpu(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices):
    batch, dim, seqlen = x.shape
    cache_batch, _, state_len = conv_state.shape
    width = weight.shape[1]
    if conv_state_indices is None:
        rows = torch.arange(batch, device=x.device)
    else:
        rows = conv_state_indices.long()
    valid = (rows >= 0) & (rows < cache_batch)
    acc = _acc_dtype(x, conv_state, weight)
    state = conv_state[torch.where(valid, rows, 0)].to(acc)  # (batch, dim, state_len)
    xf = x.to(acc)
    if cache_seqlens is None:  # shift register: window = last width-1 entries; drop the oldest
        window = state[..., state_len - (width - 1) :]
        new_state = torch.cat([state, xf], dim=-1)[..., seqlen:]
    else:  # circular buffer starting at cache_seqlens % state_len
        start = cache_seqlens.long().remainder(state_len)[:, None]
        window_pos = (start + torch.arange(-(width - 1), 0, device=x.device)).remainder(state_len)
        window = state.gather(2, window_pos[:, None, :].expand(-1, dim, -1))
        # position p receives token i = (p - start) mod state_len, the newest such i < seqlen
        off = (torch.arange(state_len, device=x.device) - start).remainder(state_len)
        newest = off + (seqlen - 1 - off).clamp(min=0).div(state_len, rounding_mode="floor") * state_len
        src = xf.gather(2, newest.clamp(max=seqlen - 1)[:, None, :].expand(-1, dim, -1))
        new_state = torch.where((off < seqlen)[:, None, :], src, state)
    y = _preact_cpu(weight, bias, *_taps_cpu(xf, weight, None, window))
    out = torch.where(valid[:, None, None], F.silu(y) if silu else y, 0.0).to(x.dtype)
    new_state = new_state.to(conv_state.dtype)
    if conv_state_indices is None:
        conv_state.copy_(new_state)
    else:
        # each written cache row takes the first batch row pointing at it; others stay as they are
        hits = valid[:, None] & (rows[:, None] == torch.arange(cache_batch, device=x.device))
        writer = hits.int().argmax(0)
        conv_state.copy_(torch.where(hits.any(0)[:, None, None], new_state[writer], conv_state))
    return out


# ----------------------------------------------------------------------------------------------
# Ops
# ----------------------------------------------------------------------------------------------
@triton_op("mamba_compile::causal_conv1d_fwd", mutates_args=())
def _causal_conv1d_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    return_final_states: bool,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, final_states); final_states is empty unless return_final_states."""
    _check_conv(x, weight, bias, seq_idx, initial_states, return_final_states)
    if x.device.type == "cuda":
        from . import causal_conv1d_triton

        return causal_conv1d_triton.causal_conv1d_fwd(
            x, weight, bias, seq_idx, initial_states, return_final_states, silu, wrap=True
        )
    return _conv_fwd_cpu(x, weight, bias, seq_idx, initial_states, return_final_states, silu)


@triton_op("mamba_compile::causal_conv1d_bwd", mutates_args=())
def _causal_conv1d_bwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    seq_idx: torch.Tensor | None,
    initial_states: torch.Tensor | None,
    dout: torch.Tensor,
    dfinal_states: torch.Tensor | None,
    silu: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias, dinitial_states); dbias / dinitial_states are empty when absent."""
    _check_conv(x, weight, bias, seq_idx, initial_states, False)
    _check_grads(x, weight, dout, dfinal_states)
    if x.device.type == "cuda":
        from . import causal_conv1d_triton

        return causal_conv1d_triton.causal_conv1d_bwd(
            x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu, wrap=True
        )
    return _conv_bwd_cpu(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu)


def _check_grads(x, weight, dout, dfinal_states) -> None:
    check_tensor("dout", dout, shape=tuple(x.shape), letters="(batch, dim, seqlen)", dtypes=_dtypes(x))
    check_row_span("dout", dout)
    check_tensor("dfinal_states", dfinal_states, shape=(x.shape[0], x.shape[1], weight.shape[1] - 1),
                 letters="(batch, dim, width - 1)", dtypes=_dtypes(x), optional=True)


def _setup_context(ctx, inputs, output):
    x, weight, bias, seq_idx, initial_states, return_final_states, silu = inputs
    ctx.save_for_backward(x, weight, bias, seq_idx, initial_states)
    ctx.return_final_states = return_final_states
    ctx.silu = silu


def _backward(ctx, dout, dfinal_states):
    return _input_grads(ctx, dout, dfinal_states, torch.ops.mamba_compile.causal_conv1d_bwd)


def _input_grads(ctx, dout, dfinal_states, bwd) -> tuple:
    """The forward op's 7 input gradients from ``bwd``, which takes the backward op's arguments."""
    x, weight, bias, seq_idx, initial_states = ctx.saved_tensors
    dx, dweight, dbias, dinit = bwd(
        x, weight, bias, seq_idx, initial_states, dout,
        dfinal_states if ctx.return_final_states else None, ctx.silu,
    )
    return (
        dx,
        dweight,
        dbias if bias is not None else None,
        None,
        dinit if initial_states is not None else None,
        None,
        None,
    )


_causal_conv1d_fwd.register_autograd(_backward, setup_context=_setup_context)


# _plain_eager(*tensors): whether a public call may take _EagerConv (see _eager.plain_eager); a module global, so that
# tests and probes can force either path.
_plain_eager = plain_eager


class _EagerConv(torch.autograd.Function):
    """causal_conv1d_fwd's CUDA path for plain eager calls: the same kernels, launched directly (wrap=False), the same
    outputs, saved tensors and backward, without the dispatch of the two custom ops. Its inputs and outputs are the
    forward op's. The interpreter tests drive it on CPU tensors."""

    @staticmethod
    def forward(ctx, x, weight, bias, seq_idx, initial_states, return_final_states, silu):
        from . import causal_conv1d_triton

        out, final_states = causal_conv1d_triton.causal_conv1d_fwd(
            x, weight, bias, seq_idx, initial_states, return_final_states, silu, wrap=False)
        _setup_context(ctx, (x, weight, bias, seq_idx, initial_states, return_final_states, silu),
                       (out, final_states))
        return out, final_states

    @staticmethod
    def backward(ctx, dout, dfinal_states):
        from . import causal_conv1d_triton

        def bwd(x, weight, bias, seq_idx, initial_states, dout, dfinal_states, silu):
            _check_grads(x, weight, dout, dfinal_states)  # as the backward op's body does
            return causal_conv1d_triton.causal_conv1d_bwd(x, weight, bias, seq_idx, initial_states, dout,
                                                          dfinal_states, silu, wrap=False)

        return _input_grads(ctx, dout, dfinal_states, bwd)


@triton_op("mamba_compile::causal_conv1d_update", mutates_args=("conv_state",))
def _causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    silu: bool,
    cache_seqlens: torch.Tensor | None,
    conv_state_indices: torch.Tensor | None,
) -> torch.Tensor:
    """x: (batch, dim, seqlen); updates conv_state in place, returns out (batch, dim, seqlen).

    A mutating op cannot carry an autograd formula (torch.library refuses one), so gradients do not
    flow through it: decode only.
    """
    _check_update(x, conv_state, weight, bias, cache_seqlens, conv_state_indices)
    if x.device.type == "cuda":
        from . import causal_conv1d_triton

        return causal_conv1d_triton.causal_conv1d_update(
            x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices, wrap=True
        )
    return _update_cpu(x, conv_state, weight, bias, silu, cache_seqlens, conv_state_indices)
