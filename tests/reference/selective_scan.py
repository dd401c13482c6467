"""Float64 oracle for the Mamba-1 selective scan: the plain recurrence, one time step at a time.

    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t,   y_t = C_t h_t + D u_t,   out_t = y_t silu(z_t)

u, delta, z: (batch, dim, seqlen); A: (dim, dstate); B, C: (dim, dstate) or (batch, dstate, seqlen)
or (batch, ngroups, dstate, seqlen); D, delta_bias: (dim,); initial_state, last_state: (batch, dim, dstate).
Written for clarity, never imports mamba_compile; gradients come from autograd through it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _per_channel(M: torch.Tensor, batch: int, dim: int, seqlen: int) -> torch.Tensor:
    """B or C in any accepted layout -> (batch, dim, dstate, seqlen)."""
    if M.dim() == 2:  # (dim, dstate): the same for every batch row and time step
        return M[None, :, :, None].expand(batch, dim, M.shape[1], seqlen)
    if M.dim() == 3:  # (batch, dstate, seqlen): shared by all channels
        return M[:, None].expand(batch, dim, M.shape[1], seqlen)
    ngroups = M.shape[1]  # (batch, ngroups, dstate, seqlen): channel d uses group d // (dim / ngroups)
    return M.repeat_interleave(dim // ngroups, dim=1)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, initial_state=None):
    """Returns (out in u's dtype, last_state in float64)."""
    dtype_out = u.dtype
    f64 = lambda t: None if t is None else t.double()  # noqa: E731
    u, delta, A, B, C, D, z, delta_bias, initial_state = map(f64, (u, delta, A, B, C, D, z, delta_bias, initial_state))
    batch, dim, seqlen = u.shape
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    Bc, Cc = _per_channel(B, batch, dim, seqlen), _per_channel(C, batch, dim, seqlen)
    h = torch.zeros(batch, dim, A.shape[1], dtype=torch.float64, device=u.device) if initial_state is None else initial_state
    ys = []
    for t in range(seqlen):
        h = torch.exp(dt[:, :, t, None] * A) * h + (dt[:, :, t] * u[:, :, t])[:, :, None] * Bc[..., t]
        ys.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y.to(dtype_out), h
