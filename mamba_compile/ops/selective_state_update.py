"""One-token SSM state update for decode (Mamba-1 and Mamba-2 layouts), updating the state in place.

    dt' = softplus(dt + dt_bias);  h <- exp(dt' * A) * h + dt' * B * x;  y = sum_n C * h + D * x;  out = y * silu(z)

Shapes, Mamba-2 layout (state of rank 4)::

    state: (nstates, nheads, headdim, dstate)   fp32 or the activation dtype, updated in place
    x, dt, z: (batch, nheads, headdim)
    A: (nheads, headdim, dstate)
    B, C: (batch, ngroups, dstate)              head h reads group h // (nheads // ngroups)
    D, dt_bias: (nheads, headdim)
    state_batch_indices: (batch,) int32/int64   state row of each batch row; nstates == batch without it
    out: (batch, nheads, headdim)               x's dtype

Mamba-1 layout (state of rank 3) is the Mamba-2 one with nheads = ngroups = 1 and headdim = dim::

    state: (nstates, dim, dstate);  x, dt, z: (batch, dim);  A: (dim, dstate);  B, C: (batch, dstate);  D, dt_bias: (dim,)

Mamba-2 passes dt, dt_bias, A and D expanded with stride 0 (``A[:, None, None].expand(h, p, n)``);
every tensor is read through its strides, so such views cost nothing and need no copy.

``state_batch_indices`` (continuous batching): a negative index marks a padding row: its state
is left alone and its output is 0. An index >= nstates raises a ValueError on CPU (eager). On
CUDA the check would cost a host sync (decode runs under CUDA graphs), so the kernel instead
treats such a row as padding too: nothing is read or written out of bounds and its output is 0.
(Under torch.compile on CPU the indices cannot be read at trace time; an out-of-range index then
fails at run time in the gather, as an IndexError / RuntimeError.) Two batch rows must not share a
state row: their updates would race on CUDA (CPU keeps the later one).

No backward: this is a decode op (its state is overwritten in place).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import is_fake

from ._checks import check_same_device, check_tensor

MAX_DSTATE = 256


def _check_args(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices) -> None:
    """Validates one call; shared by the public wrapper and the op body."""
    check_tensor("state", state)
    if state.dim() == 3:
        _, dim, dstate = state.shape
        batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else None
        act = ((batch, dim), "(batch, dim)")
        check_tensor("x", x, shape=act[0], letters=act[1])
        check_tensor("dt", dt, shape=act[0], letters=act[1])
        check_tensor("z", z, shape=act[0], letters=act[1], optional=True)
        check_tensor("A", A, shape=(dim, dstate), letters="(dim, dstate)")
        check_tensor("B", B, shape=(batch, dstate), letters="(batch, dstate)")
        check_tensor("C", C, shape=(batch, dstate), letters="(batch, dstate)")
        check_tensor("D", D, shape=(dim,), letters="(dim,)", optional=True)
        check_tensor("dt_bias", dt_bias, shape=(dim,), letters="(dim,)", optional=True)
    elif state.dim() == 4:
        _, nheads, headdim, dstate = state.shape
        batch = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else None
        act = ((batch, nheads, headdim), "(batch, nheads, headdim)")
        check_tensor("x", x, shape=act[0], letters=act[1])
        check_tensor("dt", dt, shape=act[0], letters=act[1])
        check_tensor("z", z, shape=act[0], letters=act[1], optional=True)
        check_tensor("A", A, shape=(nheads, headdim, dstate), letters="(nheads, headdim, dstate)")
        check_tensor("B", B, shape=(batch, None, dstate), letters="(batch, ngroups, dstate)")
        ngroups = B.shape[1]
        if ngroups == 0 or nheads % ngroups != 0:
            raise ValueError(f"B has ngroups = {ngroups}, which must divide nheads = {nheads}")
        check_tensor("C", C, shape=(batch, ngroups, dstate), letters="(batch, ngroups, dstate)")
        check_tensor("D", D, shape=(nheads, headdim), letters="(nheads, headdim)", optional=True)
        check_tensor("dt_bias", dt_bias, shape=(nheads, headdim), letters="(nheads, headdim)", optional=True)
    else:
        raise ValueError(
            "state must have 3 dims (nstates, dim, dstate) for Mamba-1 or 4 dims "
            f"(nstates, nheads, headdim, dstate) for Mamba-2, got shape {tuple(state.shape)}"
        )
    if dstate > MAX_DSTATE:
        raise ValueError(f"state has dstate = {dstate}; at most {MAX_DSTATE} is supported")
    if state_batch_indices is None:
        if state.shape[0] != batch:
            raise ValueError(
                f"state has {state.shape[0]} rows but x has batch = {batch}; "
                "pass state_batch_indices (batch,) to map batch rows to state rows"
            )
    else:
        check_tensor(
            "state_batch_indices", state_batch_indices, shape=(batch,), letters="(batch,)",
            dtypes=(torch.int32, torch.int64),
        )
    check_same_device(
        state=state, x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
        state_batch_indices=state_batch_indices,
    )


def selective_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
    state_batch_indices: torch.Tensor | None = None,
) -> torch.Tensor:
    """Advances ``state`` by one token in place and returns ``out`` (x's shape and dtype)."""
    _check_args(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    return torch.ops.mamba_compile.selective_state_update(
        state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices
    )


def _as_mamba2(state, x, dt, A, B, C, D, z, dt_bias):
    """Views of the Mamba-1 layout as Mamba-2 with nheads = ngroups = 1 (no copies)."""
    if state.dim() == 4:
        return state, x, dt, A, B, C, D, z, dt_bias

    def u(t, d):
        return None if t is None else t.unsqueeze(d)

    return u(state, 1), u(x, 1), u(dt, 1), u(A, 0), u(B, 1), u(C, 1), u(D, 0), u(z, 1), u(dt_bias, 0)


def _update_cpu(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus, state_batch_indices):
    """Plain torch in fp32 on the Mamba-2 layout; writes the new state rows into ``state``."""
    nstates, nheads = state.shape[0], state.shape[1]
    heads_per_group = nheads // B.shape[1]
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if dt_softplus:
        dt = F.softplus(dt)
    B = B.float().repeat_interleave(heads_per_group, dim=1)[:, :, None, :]  # (batch, nheads, 1, dstate)
    C = C.float().repeat_interleave(heads_per_group, dim=1)[:, :, None, :]
    x32 = x.float()
    if state_batch_indices is None:
        h = state.float()
        valid = None
    else:
        idx = state_batch_indices.long()
        valid = idx >= 0
        h = state.float()[idx.clamp(min=0)]
    h = torch.exp(dt[..., None] * A.float()) * h + (dt * x32)[..., None] * B
    y = (h * C).sum(-1)
    if D is not None:
        y = y + D.float() * x32
    if z is not None:
        y = y * F.silu(z.float())
    if valid is None:
        state.copy_(h)
        return y.to(x.dtype)
    # Each state row takes the batch row that points at it, if any (padding rows point nowhere).
    rows = torch.arange(idx.shape[0], device=idx.device)
    src = torch.full((nstates,), -1, dtype=torch.long, device=idx.device)
    src = src.scatter_reduce(0, idx.clamp(min=0), torch.where(valid, rows, -1), reduce="amax")
    hit = (src >= 0)[:, None, None, None]
    state.copy_(torch.where(hit, h[src.clamp(min=0)], state.float()))
    return torch.where(valid[:, None, None], y, 0.0).to(x.dtype)


@torch.library.triton_op("mamba_compile::selective_state_update", mutates_args=("state",))
def _selective_state_update_op(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    dt_softplus: bool,
    state_batch_indices: torch.Tensor | None,
) -> torch.Tensor:
    _check_args(state, x, dt, A, B, C, D, z, dt_bias, state_batch_indices)
    args = _as_mamba2(state, x, dt, A, B, C, D, z, dt_bias)
    if state.device.type == "cuda":
        from . import selective_state_update_triton

        out = selective_state_update_triton.selective_state_update_fwd(
            *args, dt_softplus, state_batch_indices, wrap=True
        )
        return out.view_as(x)
    if state_batch_indices is not None and not is_fake(state_batch_indices):
        # Eager CPU only: the check reads the indices (traced graphs index-check at run time).
        if bool((state_batch_indices >= state.shape[0]).any()):
            raise ValueError(
                f"state_batch_indices has an entry >= nstates = {state.shape[0]} (state's first dim); "
                "negative entries mark padding"
            )
    return _update_cpu(*args, dt_softplus, state_batch_indices).view_as(x)
