"""Mamba-1 selective scan (Gu & Dao 2023, Algorithm 2): a diagonal linear recurrence with input-dependent step.

    dt_t = softplus(delta_t + delta_bias);  h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t;  out_t = (C_t h_t + D u_t) silu(z_t)

Shapes (letters: batch, dim, seqlen, dstate, ngroups):
    u, delta, z:              (batch, dim, seqlen)           activations, fp32/fp16/bf16 (may differ)
    A:                        (dim, dstate)                  real, usually fp32
    B, C:                     (dim, dstate)                  time-invariant
                              (batch, dstate, seqlen)        input-dependent, shared by every channel
                              (batch, ngroups, dstate, seqlen)  grouped: channel d uses group d // (dim / ngroups)
    D, delta_bias:            (dim,)
    initial_state:            (batch, dim, dstate)           fp32
    out:                      (batch, dim, seqlen)           u's dtype
    last_state:               (batch, dim, dstate)           fp32
    chunk_states (saved):     (batch, nchunks + 1, dim, dstate)  fp32, the state entering each chunk of the
                              scan, then the last state (the + 1 keeps the size >= 2, so tracing adds no
                              size-1 guard on seqlen)

All math is fp32 (fp64 on CPU when any input is fp64, for gradcheck). dstate <= 256; any seqlen >= 1.
Gradients flow to every tensor input, including through last_state (the reference drops both).

Ops: ``mamba_compile::selective_scan_fwd`` / ``selective_scan_bwd`` are triton_ops whose body branches on
device: CUDA launches the kernels of ``selective_scan_triton``; CPU runs plain torch, with the time loop in
the opaque custom ops ``_selective_scan_fwd_cpu`` / ``_selective_scan_bwd_cpu`` so a symbolic seqlen is
never specialised while tracing.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import FLOAT_DTYPES, check_row_span, check_same_device, check_tensor
from ._eager import plain_eager

MAX_DSTATE = 256
CPU_CHUNK = 64  # time steps per CPU chunk: a log-depth scan inside, one saved state per chunk
_DTYPES = FLOAT_DTYPES + (torch.float64,)
_BC_LETTERS = "(dim, dstate) or (batch, dstate, seqlen) or (batch, ngroups, dstate, seqlen)"


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    initial_state: Tensor | None = None,
    return_last_state: bool = False,
):
    """Selective scan; returns ``out`` or ``(out, last_state)``. Shapes in the module docstring."""
    _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    # Chunk-start states are only worth writing when a backward will read them; the backward
    # recomputes them when they were not saved, so this is an optimisation, never a correctness switch.
    save_states = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias, initial_state)
    )
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_states)
    if u.device.type == "cuda" and _plain_eager(u, delta, A, B, C, D, z, delta_bias, initial_state):
        out, last_state, _ = _EagerSelectiveScan.apply(*args)
    else:
        out, last_state, _ = torch.ops.mamba_compile.selective_scan_fwd(*args)
    return (out, last_state) if return_last_state else out


# ---------------------------------------------------------------------------------------------
# Validation: one function, called by the public wrapper and by both op bodies.


def _check_bc(name: str, M: Tensor, batch, dim, seqlen, dstate, device) -> None:
    check_tensor(name, M, dtypes=_DTYPES, device=device)
    if M.dim() == 2:
        check_tensor(name, M, shape=(dim, dstate), letters="(dim, dstate)", dtypes=None)
    elif M.dim() == 3:
        check_tensor(name, M, shape=(batch, dstate, seqlen), letters="(batch, dstate, seqlen)", dtypes=None)
    elif M.dim() == 4:
        letters = "(batch, ngroups, dstate, seqlen)"
        check_tensor(name, M, shape=(batch, None, dstate, seqlen), letters=letters, dtypes=None)
        ngroups = M.shape[1]
        if ngroups < 1 or dim % ngroups != 0:
            raise ValueError(f"{name} has shape {letters} = {tuple(M.shape)}: dim = {dim} must be divisible by ngroups = {ngroups}")
    else:
        raise ValueError(f"{name} must have shape {_BC_LETTERS}, got {tuple(M.shape)}")


def _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state) -> None:
    tensors = dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    for name, t in tensors.items():
        check_tensor(name, t, dtypes=None, optional=name not in ("u", "delta", "A", "B", "C"))
    device = check_same_device(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, initial_state=initial_state)
    check_tensor("u", u, shape=(None, None, None), letters="(batch, dim, seqlen)", dtypes=_DTYPES)
    batch, dim, seqlen = u.shape
    if seqlen < 1:
        raise ValueError(f"u must have shape (batch, dim, seqlen) with seqlen >= 1, got {tuple(u.shape)}")
    bds = (batch, dim, seqlen)
    check_tensor("delta", delta, shape=bds, letters="(batch, dim, seqlen)", dtypes=_DTYPES, device=device)
    check_tensor("A", A, shape=(dim, None), letters="(dim, dstate)", dtypes=_DTYPES, device=device)
    dstate = A.shape[1]
    if not 1 <= dstate <= MAX_DSTATE:
        raise ValueError(f"A must have shape (dim, dstate) with 1 <= dstate <= {MAX_DSTATE}, got {tuple(A.shape)}")
    _check_bc("B", B, batch, dim, seqlen, dstate, device)
    _check_bc("C", C, batch, dim, seqlen, dstate, device)
    check_tensor("D", D, shape=(dim,), letters="(dim,)", dtypes=_DTYPES, device=device, optional=True)
    check_tensor("z", z, shape=bds, letters="(batch, dim, seqlen)", dtypes=_DTYPES, device=device, optional=True)
    check_tensor("delta_bias", delta_bias, shape=(dim,), letters="(dim,)", dtypes=_DTYPES, device=device, optional=True)
    check_tensor(
        "initial_state", initial_state, shape=(batch, dim, dstate), letters="(batch, dim, dstate)",
        dtypes=_DTYPES, device=device, optional=True,
    )  # fmt: skip
    if device.type != "cpu":
        for name, t in tensors.items():
            if t is not None and t.dtype == torch.float64:
                raise TypeError(f"{name} must have dtype in (float32, float16, bfloat16) on {device.type}, got float64")
        for name, t in (("u", u), ("delta", delta), ("z", z)):
            check_row_span(name, t)


def _math_dtype(*tensors) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _num_chunks(seqlen, chunk: int):
    return (seqlen + chunk - 1) // chunk


# ---------------------------------------------------------------------------------------------
# CPU: plain torch. Everything is laid out (batch, dim, time, dstate) inside a chunk.


def _bc_chunk(M: Tensor, dim: int, s, e) -> Tensor:
    """B or C for time steps [s, e) as a tensor broadcastable to (batch, dim, e - s, dstate)."""
    if M.dim() == 2:
        return M[None, :, None, :]
    if M.dim() == 3:
        return M[:, None, :, s:e].transpose(-1, -2)
    return M[..., s:e].repeat_interleave(dim // M.shape[1], dim=1).transpose(-1, -2)


def _bc_accumulate(dM: Tensor, grad: Tensor, s: int, e: int) -> None:
    """Adds a per-channel gradient (batch, dim, e - s, dstate) into dM (B's or C's layout), summed over
    the channels and steps that share each entry."""
    if dM.dim() == 2:
        dM += grad.sum(dim=(0, 2))
    elif dM.dim() == 3:
        dM[..., s:e] += grad.sum(dim=1).transpose(-1, -2)
    else:
        batch, dim, T, dstate = grad.shape
        ngroups = dM.shape[1]
        dM[..., s:e] += grad.reshape(batch, ngroups, dim // ngroups, T, dstate).sum(dim=2).transpose(-1, -2)


def _scan(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Inclusive scan of h_t = a_t h_{t-1} + b_t along dim -2, log-depth (Hillis-Steele); returns the
    cumulative decay and the state from a zero start. Multiplications only, so no 1/a overflow."""
    T = a.shape[-2]
    k = 1
    while k < T:
        b = torch.cat([b[..., :k, :], a[..., k:, :] * b[..., :-k, :] + b[..., k:, :]], dim=-2)
        a = torch.cat([a[..., :k, :], a[..., k:, :] * a[..., :-k, :]], dim=-2)
        k *= 2
    return a, b


def _chunk_states_shape(u: Tensor, A: Tensor, save_states: bool, chunk: int):
    batch, dim, seqlen = u.shape
    return (batch, _num_chunks(seqlen, chunk) + 1, dim, A.shape[1]) if save_states else (0,)


@torch.library.custom_op("mamba_compile::_selective_scan_fwd_cpu", mutates_args=())
def _selective_scan_fwd_cpu(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, initial_state: Tensor | None, save_states: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """y_t = C_t h_t (no D, no gate); u, dt, A, B, C already in the math dtype. Returns y, last state,
    and the state entering each CPU_CHUNK-step chunk followed by the last state (empty unless save_states)."""
    batch, dim, seqlen = u.shape
    h = u.new_zeros(batch, dim, A.shape[1]) if initial_state is None else initial_state.to(u.dtype)
    y = torch.empty_like(u)
    states = u.new_empty(_chunk_states_shape(u, A, save_states, CPU_CHUNK))
    for c, s in enumerate(range(0, seqlen, CPU_CHUNK)):
        e = min(s + CPU_CHUNK, seqlen)
        if save_states:
            states[:, c] = h
        # Time-major (T, batch, dim, dstate), so each step is one fused multiply-add over contiguous
        # memory: a sequential step costs one small op, where a log-depth scan re-reads the whole
        # chunk log2(T) times (2.5x slower at b2 d512 l256 n16 on 2 cores).
        # (Contiguous copies first: elementwise results take their inputs' memory order, and a
        # permuted view would leave each step's slice strided.)
        dt_c = dt[:, :, s:e].permute(2, 0, 1).contiguous()[..., None]  # (T, batch, dim, 1)
        dA = torch.exp(dt_c * A)
        hs = (dt_c * u[:, :, s:e].permute(2, 0, 1).contiguous()[..., None]) * _bc_chunk(B, dim, s, e).permute(2, 0, 1, 3)
        for t in range(e - s):
            h = hs[t].addcmul_(dA[t], h)  # h_t = exp(dt A) h_{t-1} + dt u B, in place of dt u B
        Cc = _bc_chunk(C, dim, s, e).permute(2, 0, 1, 3)  # (T, batch, 1 or dim, dstate)
        if Cc.shape[2] == 1:  # shared by the channels: one batched matmul
            yc = (hs @ Cc.transpose(-1, -2)).squeeze(-1)
        else:
            yc = torch.linalg.vecdot(hs, Cc.expand(e - s, batch, dim, -1))
        y[:, :, s:e] = yc.permute(1, 2, 0)  # sum_n h C
    if save_states:
        states[:, -1] = h
    return y, h.clone(), states


@_selective_scan_fwd_cpu.register_fake
def _(u, dt, A, B, C, initial_state, save_states):
    batch, dim, _ = u.shape
    states = u.new_empty(_chunk_states_shape(u, A, save_states, CPU_CHUNK))
    return torch.empty_like(u), u.new_empty(batch, dim, A.shape[1]), states


@torch.library.custom_op("mamba_compile::_selective_scan_bwd_cpu", mutates_args=())
def _selective_scan_bwd_cpu(
    u: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    dout: Tensor, dlast_state: Tensor, chunk_states: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Reverse-time backward, all inputs in the math dtype. chunk_states as saved by the forward.
    Returns du, ddt, dA, dB, dC, dD, dz, dh0 (dD, dz empty when D, z are absent)."""
    batch, dim, seqlen = u.shape
    nchunks = chunk_states.shape[1] - 1
    # dz in z's layout, as the fake below declares it
    du, ddt, dz = torch.empty_like(u), torch.empty_like(u), torch.empty_like(z) if z is not None else u.new_empty(0)
    dA = torch.zeros_like(A)
    dB, dC = torch.zeros_like(B), torch.zeros_like(C)
    dD = torch.zeros_like(D) if D is not None else u.new_empty(0)
    g = dlast_state.clone()  # dL/dh at the end of the current chunk, from the future (and last_state)
    dA_next_first = torch.ones(batch, dim, 1, A.shape[1], dtype=u.dtype)  # exp(dt A) one step past the chunk
    for c in reversed(range(nchunks)):
        s, e = c * CPU_CHUNK, min((c + 1) * CPU_CHUNK, seqlen)
        u_c, dt_c = u[:, :, s:e], dt[:, :, s:e]
        B_c, C_c = _bc_chunk(B, dim, s, e), _bc_chunk(C, dim, s, e)
        dA_c = torch.exp(dt_c[..., None] * A[:, None, :])
        dtu = dt_c * u_c
        decay, hs = _scan(dA_c, dtu[..., None] * B_c)
        h_start = chunk_states[:, c]
        hs = hs + decay * h_start[:, :, None, :]
        dy = dout[:, :, s:e]
        du_c = torch.zeros_like(u_c)
        if z is not None or D is not None:
            y = (hs * C_c).sum(-1)
            if D is not None:
                y = y + D[:, None] * u_c
            if z is not None:
                z_c = z[:, :, s:e]
                sig = torch.sigmoid(z_c)
                dz[:, :, s:e] = dy * y * sig * (1 + z_c * (1 - sig))
                dy = dy * z_c * sig
            if D is not None:
                dD += (dy * u_c).sum(dim=(0, 2))
                du_c = dy * D[:, None]
        _bc_accumulate(dC, dy[..., None] * hs, s, e)
        # State gradient g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1}: a scan in reversed time.
        dA_shift = torch.cat([dA_c[:, :, 1:], dA_next_first], dim=2)
        decay_r, gs = _scan(dA_shift.flip(2), (C_c * dy[..., None]).flip(2))
        gs = (gs + decay_r * g[:, :, None, :]).flip(2)
        g = gs[:, :, 0]
        dA_next_first = dA_c[:, :, :1]
        h_prev = torch.cat([h_start[:, :, None], hs[:, :, :-1]], dim=2)
        g_dA_hprev = gs * dA_c * h_prev  # dL/d(dt A) at each step
        _bc_accumulate(dB, gs * dtu[..., None], s, e)
        d_dtu = (gs * B_c).sum(-1)
        ddt[:, :, s:e] = d_dtu * u_c + (g_dA_hprev * A[:, None, :]).sum(-1)
        dA += (g_dA_hprev * dt_c[..., None]).sum(dim=(0, 2))
        du[:, :, s:e] = du_c + d_dtu * dt_c
    dh0 = dA_next_first[:, :, 0] * g
    return du, ddt, dA, dB, dC, dD, dz, dh0


@_selective_scan_bwd_cpu.register_fake
def _(u, dt, A, B, C, D, z, dout, dlast_state, chunk_states):
    def empty():  # one per absent gradient: outputs of an op may not alias each other
        return u.new_empty(0)

    return (
        torch.empty_like(u), torch.empty_like(u), torch.empty_like(A), torch.empty_like(B), torch.empty_like(C),
        empty() if D is None else torch.empty_like(D), empty() if z is None else torch.empty_like(z), torch.empty_like(dlast_state),
    )  # fmt: skip


def _dt_cpu(delta: Tensor, delta_bias: Tensor | None, delta_softplus: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """dt and d(dt)/d(delta + delta_bias)."""
    pre = delta.to(dtype)
    if delta_bias is not None:
        pre = pre + delta_bias.to(dtype)[:, None]
    if not delta_softplus:
        return pre, torch.ones_like(pre)
    return F.softplus(pre), torch.where(pre <= 20, torch.sigmoid(pre), 1.0)


def _opt(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype)


# ---------------------------------------------------------------------------------------------
# The ops.


@torch.library.triton_op("mamba_compile::selective_scan_fwd", mutates_args=())
def selective_scan_fwd(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
    delta_bias: Tensor | None, delta_softplus: bool, initial_state: Tensor | None, save_states: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Returns out, last_state and chunk_states (empty unless save_states)."""
    _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    if u.device.type == "cuda":
        from . import selective_scan_triton

        return selective_scan_triton.selective_scan_fwd(
            u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, save_states, wrap=True
        )
    md = _math_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_m = u.to(md)
    dt, _ = _dt_cpu(delta, delta_bias, delta_softplus, md)
    y, last_state, states = torch.ops.mamba_compile._selective_scan_fwd_cpu(
        u_m, dt, A.to(md), B.to(md), C.to(md), _opt(initial_state, md), save_states
    )
    if D is not None:
        y = y + D.to(md)[:, None] * u_m
    if z is not None:
        y = y * F.silu(z.to(md))
    return y.to(u.dtype), last_state, states


@torch.library.triton_op("mamba_compile::selective_scan_bwd", mutates_args=())
def selective_scan_bwd(
    dout: Tensor, dlast_state: Tensor | None, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
    D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool,
    initial_state: Tensor | None, chunk_states: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dinitial_state, each in its input's dtype
    (empty for an absent input). ``chunk_states`` is the forward's; when empty it is recomputed. ``dlast_state``
    None: no gradient reaches the last state (zero, without a zero-filled tensor)."""
    _check_args(u, delta, A, B, C, D, z, delta_bias, initial_state)
    check_tensor("dout", dout, shape=tuple(u.shape), letters="(batch, dim, seqlen)", dtypes=_DTYPES, device=u.device)
    if dlast_state is not None:
        check_tensor("dlast_state", dlast_state, shape=(u.shape[0], u.shape[1], A.shape[1]),
                     letters="(batch, dim, dstate)", dtypes=_DTYPES, device=u.device)  # fmt: skip
    if u.device.type == "cuda":
        from . import selective_scan_triton

        return selective_scan_triton.selective_scan_bwd(
            dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state, chunk_states, wrap=True
        )
    md = _math_dtype(u, delta, A, B, C, D, z, delta_bias, initial_state)
    u_m, A_m, B_m, C_m = u.to(md), A.to(md), B.to(md), C.to(md)
    dt, ddt_dpre = _dt_cpu(delta, delta_bias, delta_softplus, md)
    if dlast_state is None:
        dlast_state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1], dtype=md)
    if chunk_states.numel() == 0 and u.numel() > 0:
        _, _, chunk_states = torch.ops.mamba_compile._selective_scan_fwd_cpu(
            u_m, dt, A_m, B_m, C_m, _opt(initial_state, md), True
        )
    du, ddt, dA, dB, dC, dD, dz, dh0 = torch.ops.mamba_compile._selective_scan_bwd_cpu(
        u_m, dt, A_m, B_m, C_m, _opt(D, md), _opt(z, md), dout.to(md), dlast_state.to(md), chunk_states.to(md)
    )
    ddelta = ddt * ddt_dpre
    def empty():  # one per absent gradient: outputs of an op may not alias each other
        return u.new_empty(0)

    return (
        du.to(u.dtype), ddelta.to(delta.dtype), dA.to(A.dtype), dB.to(B.dtype), dC.to(C.dtype),
        empty() if D is None else dD.to(D.dtype), empty() if z is None else dz.to(z.dtype),
        empty() if delta_bias is None else ddelta.sum(dim=(0, 2)).to(delta_bias.dtype),
        empty() if initial_state is None else dh0.to(initial_state.dtype),
    )  # fmt: skip


_FWD_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "delta_softplus", "initial_state", "save_states")


def _setup_context(ctx, inputs, output):
    args = dict(zip(_FWD_ARGS, inputs))
    ctx.delta_softplus = args["delta_softplus"]
    ctx.set_materialize_grads(False)  # None, not zeros, for an unused last state (and output): see _backward
    ctx.save_for_backward(*(args[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")), output[2])


def _backward(ctx, dout, dlast_state, _dchunk_states):
    return _input_grads(ctx, dout, dlast_state, torch.ops.mamba_compile.selective_scan_bwd)


def _input_grads(ctx, dout, dlast_state, bwd) -> tuple:
    """The forward op's 11 input gradients from ``bwd``, which takes the backward op's arguments."""
    u, delta, A, B, C, D, z, delta_bias, initial_state, chunk_states = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(u)
    grads = bwd(dout, dlast_state, u, delta, A, B, C, D, z, delta_bias, ctx.delta_softplus, initial_state, chunk_states)
    du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, dh0 = grads
    return (
        du, ddelta, dA, dB, dC, dD if D is not None else None, dz if z is not None else None,
        ddelta_bias if delta_bias is not None else None, None, dh0 if initial_state is not None else None, None,
    )  # fmt: skip


selective_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------------------------
# Eager calls: the Triton kernels without the custom ops' dispatch

# _plain_eager(*tensors): whether a public call may take _EagerSelectiveScan (see _eager.plain_eager); a module
# global, so that tests and probes can force either path.
_plain_eager = plain_eager


class _EagerSelectiveScan(torch.autograd.Function):
    """selective_scan_fwd's CUDA path for plain eager calls: the same kernels, launched directly (wrap=False), the
    same outputs, saved tensors and backward, without the dispatch of the two custom ops (whose autograd wrapper
    costs host time that grows with the eleven arguments). Its inputs and outputs are the forward op's. The
    interpreter tests drive it on CPU tensors."""

    @staticmethod
    def forward(ctx, *inputs):
        from . import selective_scan_triton

        output = selective_scan_triton.selective_scan_fwd(*inputs, wrap=False)
        ctx.mark_non_differentiable(output[2])
        _setup_context(ctx, inputs, output)
        return output

    @staticmethod
    def backward(ctx, dout, dlast_state, _dchunk_states):
        from . import selective_scan_triton

        return _input_grads(ctx, dout, dlast_state, functools.partial(selective_scan_triton.selective_scan_bwd,
                                                                      wrap=False))
