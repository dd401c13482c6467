"""Float64 oracle for the one-token state update: loops over batch rows and heads, Mamba-2 layout.

    dt' = softplus(dt + dt_bias);  h <- exp(dt' * A) * h + dt' * B * x;  y = sum_n C * h + D * x;  out = y * silu(z)

Shapes as in mamba_compile/ops/selective_state_update.py; a rank-3 (Mamba-1) state is handled as
nheads = ngroups = 1. Returns (out, new_state) without touching the inputs. A negative entry of
state_batch_indices is a padding row: its output is 0 and no state row changes.
"""

import math

import torch


def selective_state_update_ref(
    state, x, dt, A, B, C, D=None, z=None, dt_bias=None, dt_softplus=False, state_batch_indices=None
):
    mamba1 = state.dim() == 3
    f64 = lambda t: None if t is None else t.detach().double()  # noqa: E731
    state, x, dt, A, B, C, D, z, dt_bias = map(f64, (state, x, dt, A, B, C, D, z, dt_bias))
    if mamba1:
        state, x, dt, z, B, C = (None if t is None else t.unsqueeze(1) for t in (state, x, dt, z, B, C))
        A, D, dt_bias = (None if t is None else t.unsqueeze(0) for t in (A, D, dt_bias))
    batch, nheads, headdim = x.shape
    ngroups = B.shape[1]
    new_state = state.clone()
    out = torch.zeros_like(x)
    for b in range(batch):
        row = b if state_batch_indices is None else int(state_batch_indices[b])
        if row < 0:
            continue
        for h in range(nheads):
            g = h // (nheads // ngroups)
            for p in range(headdim):
                d = dt[b, h, p] + (dt_bias[h, p] if dt_bias is not None else 0.0)
                if dt_softplus:
                    d = torch.log1p(torch.exp(d)) if d <= 20 else d
                hp = torch.exp(d * A[h, p]) * state[row, h, p] + d * B[b, g] * x[b, h, p]
                new_state[row, h, p] = hp
                y = (hp * C[b, g]).sum()
                if D is not None:
                    y = y + D[h, p] * x[b, h, p]
                if z is not None:
                    y = y * z[b, h, p] / (1 + math.exp(-float(z[b, h, p])))
                out[b, h, p] = y
    if mamba1:
        out, new_state = out.squeeze(1), new_state.squeeze(1)
    return out, new_state
