"""Float64 oracle for the Mamba-2 SSD scan: the plain recurrence, one time step at a time.

    h_t = exp(dt_t * A) h_{t-1} + dt_t * x_t B_t^T,   y_t = h_t C_t + D * x_t,   out_t = y_t * silu(z_t)

with dt_t = clamp(softplus(dt_t + dt_bias) | dt_t + dt_bias, *dt_limit) (clamped only when dt_limit is not
(0, inf), as in the reference). With seq_idx the state is reset to zero wherever seq_idx changes; the
initial state belongs to seq_idx 0 (the reference's convention). Shapes:
    x, z: (batch, seqlen, nheads, headdim)   dt: (batch, seqlen, nheads)   A, dt_bias: (nheads,)
    B, C: (batch, seqlen, ngroups, dstate)   D: (nheads,) or (nheads, headdim)
    initial_states, final_states: (batch, nheads, headdim, dstate)   seq_idx: (batch, seqlen)
    cu_seqlens: (nseq + 1,) with batch 1 -> varlen_states: (nseq, nheads, headdim, dstate)
This module never imports mamba_compile. Differentiable (float64 autograd) for gradient checks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def ssd_ref(x, dt, A, B, C, D=None, z=None, dt_bias=None, initial_states=None, seq_idx=None,
            cu_seqlens=None, dt_softplus=False, dt_limit=(0.0, math.inf)):
    """Returns (out, final_states, varlen_states or None), all float64."""
    x, dt, A, B, C = (t.double() for t in (x, dt, A, B, C))
    batch, seqlen, nheads, headdim = x.shape
    ngroups = B.shape[2]
    rep = nheads // ngroups
    B = B.repeat_interleave(rep, dim=2)  # (batch, seqlen, nheads, dstate)
    C = C.repeat_interleave(rep, dim=2)
    if dt_bias is not None:
        dt = dt + dt_bias.double()
    if dt_softplus:
        dt = torch.where(dt <= 20.0, F.softplus(dt), dt)
    if tuple(dt_limit) != (0.0, math.inf):
        dt = dt.clamp(min=dt_limit[0], max=dt_limit[1])
    h = torch.zeros(batch, nheads, headdim, B.shape[-1], dtype=torch.float64, device=x.device)
    if initial_states is not None:
        h = h + initial_states.double()
    cur = torch.zeros(batch, dtype=torch.long, device=x.device)  # the initial state belongs to seq_idx 0
    ends = set()
    if cu_seqlens is not None:
        ends = {int(e) - 1: k for k, e in enumerate(cu_seqlens[1:].tolist())}
    varlen = [None] * (0 if cu_seqlens is None else cu_seqlens.numel() - 1)
    ys = []
    for t in range(seqlen):
        if seq_idx is not None:
            new = seq_idx[:, t].long()
            keep = (new == cur).double()[:, None, None, None]
            h = h * keep
            cur = new
        decay = torch.exp(dt[:, t] * A)[:, :, None, None]  # (batch, nheads, 1, 1)
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", h, C[:, t]))
        if t in ends:
            varlen[ends[t]] = h[0]
    y = torch.stack(ys, dim=1)
    if D is not None:
        Dd = D.double()
        y = y + (Dd[:, None] if Dd.dim() == 1 else Dd) * x
    if z is not None:
        y = y * F.silu(z.double())
    return y, h, (torch.stack(varlen) if cu_seqlens is not None else None)
