"""Float64 oracle for the causal depthwise conv1d and its decode update, written as plain loops.

    out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t - (width - 1) + k])

x[t < 0] comes from initial_states (or is 0); with seq_idx a tap reading another sequence counts as 0.
Shapes: x, out (batch, dim, seqlen); weight (dim, width); bias (dim,); seq_idx (batch, seqlen);
initial_states, final_states (batch, dim, width - 1); conv_state (cache_batch, dim, state_len).

This module never imports mamba_compile. Everything is differentiable (plain torch ops), so
gradients of the oracle come from autograd.
"""

from __future__ import annotations

import torch


def _act(v: torch.Tensor, activation: str | None) -> torch.Tensor:
    return v * torch.sigmoid(v) if activation in ("silu", "swish") else v


def causal_conv1d_ref(x, weight, bias=None, seq_idx=None, initial_states=None, activation=None):
    """Returns (out, final_states) in float64, one time step at a time."""
    x, weight = x.double(), weight.double()
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    if initial_states is None:
        history = [torch.zeros(batch, dim, dtype=torch.float64, device=x.device)] * (width - 1)
    else:
        history = [initial_states.double()[:, :, j] for j in range(width - 1)]
    inputs = history + [x[:, :, t] for t in range(seqlen)]  # inputs[t + width - 1] = x[:, :, t]
    outs = []
    for t in range(seqlen):
        acc = torch.zeros(batch, dim, dtype=torch.float64, device=x.device)
        if bias is not None:
            acc = acc + bias.double()
        for k in range(width):
            s = t - (width - 1) + k  # the input position this tap reads
            tap = weight[:, k] * inputs[s + width - 1]
            if seq_idx is not None:
                same = (seq_idx[:, s] == seq_idx[:, t]) if s >= 0 else torch.zeros(batch, dtype=torch.bool)
                tap = tap * same.to(torch.float64)[:, None]
            acc = acc + tap
        outs.append(_act(acc, activation))
    out = torch.stack(outs, dim=-1)
    final_states = torch.stack(inputs[len(inputs) - (width - 1):], dim=-1)
    return out, final_states


def causal_conv1d_update_ref(
    x, conv_state, weight, bias=None, activation=None, cache_seqlens=None, conv_state_indices=None
):
    """Returns (out, new_conv_state) in float64; conv_state itself is not modified.

    x: (batch, dim, seqlen). Rows whose conv_state_indices entry is < 0 or >= cache_batch are
    padding: their output is 0 and no cache row is written.
    """
    x, weight = x.double(), weight.double()
    new_state = conv_state.double().clone()
    batch, dim, seqlen = x.shape
    width = weight.shape[1]
    state_len = conv_state.shape[-1]
    out = torch.zeros(batch, dim, seqlen, dtype=torch.float64)
    for b in range(batch):
        row = b if conv_state_indices is None else int(conv_state_indices[b])
        if row < 0 or row >= conv_state.shape[0]:
            continue
        state = [new_state[row, :, i].clone() for i in range(state_len)]
        if cache_seqlens is None:
            window = state[state_len - (width - 1):]
            buffer = state + [x[b, :, i] for i in range(seqlen)]
            for i in range(state_len):
                new_state[row, :, i] = buffer[len(buffer) - state_len + i]
        else:
            start = int(cache_seqlens[b])
            window = [state[(start - (width - 1) + j) % state_len] for j in range(width - 1)]
            for i in range(seqlen):
                new_state[row, :, (start + i) % state_len] = x[b, :, i]
        taps = window + [x[b, :, i] for i in range(seqlen)]
        for i in range(seqlen):
            acc = torch.zeros(dim, dtype=torch.float64) if bias is None else bias.double().clone()
            for k in range(width):
                acc = acc + weight[:, k] * taps[i + k]
            out[b, :, i] = _act(acc, activation)
    return out, new_state
