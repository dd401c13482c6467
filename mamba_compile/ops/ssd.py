"""Mamba-2 SSD (state space duality) scan, computed chunk by chunk (Dao & Gu 2024, section 6).

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t + D x_t,   out_t = y_t * silu(z_t)

where dt_t = clamp(softplus(dt_t + dt_bias), *dt_limit) (softplus if dt_softplus; clamped only when dt_limit
is not (0, inf), as in the reference), h_t is (headdim x dstate) per head, and heads share B, C by group.
With seq_idx the state resets to zero wherever seq_idx changes; initial_states belongs to seq_idx 0.

Shapes (letters used in every message):
    x, z, out:              (batch, seqlen, nheads, headdim)
    dt:                     (batch, seqlen, nheads)
    A, dt_bias:             (nheads,)
    B, C:                   (batch, seqlen, ngroups, dstate),  nheads % ngroups == 0
    D:                      (nheads,) or (nheads, headdim)
    initial_states, final_states: (batch, nheads, headdim, dstate), float32
    seq_idx:                (batch, seqlen) int32, nondecreasing
    cu_seqlens:             (nseq + 1,) int32, batch == 1 -> varlen_states: (nseq, nheads, headdim, dstate)
Internally: nchunks = ceil(seqlen / chunk_size); dt_proc, dA_cumsum: (batch, nheads, nchunks, chunk_size);
chunk states: (batch, nchunks, nheads, headdim, dstate), all float32.

CPU: the chunked algorithm in vectorised torch (decay matrices within a chunk, an (nchunks+1)^2 decay matrix
across chunks, no Python loop), inside an opaque custom op: traced inline, the pad/view/slice into chunks
makes tracing guard on nchunks != 1 and on seqlen % chunk_size (recompiles, and torch.export with a dynamic
seqlen fails); the op's fake has no such guards. The price: a CPU AOTInductor package calls that op by name,
so loading it needs this module imported. CUDA: Triton kernels (``ssd_triton.py``, in chunks of at most
CUDA_CHUNK_MAX) and a little torch in the chunked layout, written to trace without guards on seqlen, so Inductor
and AOTInductor compile the kernels.
The backward is a second op: its CPU branch recomputes the forward under autograd inside an opaque custom op,
its CUDA branch is explicit (``_bwd_triton``), including varlen_states' gradient. Plain eager CUDA calls of
ssd_chunk_scan (no compile tracing, subclass, mode or transform: ``_plain_eager``) run the same pipelines
through an autograd.Function (``_EagerScan``) instead of the two ops, whose dispatch costs host time, and from a
key's third call on replay the launches recorded from its second (EAGER_PLANS, ``_plans``) instead of running the
pipelines' Python. The first eager CUDA call of a configuration compiles the forward's and (when an input requires
grad) the backward's Triton kernels concurrently (``_compile_ahead``); under torch.compile/export Inductor compiles
them as usual. Unplanned eager backwards and CUDA graphs captured from eager backwards run a few kernels on a second
stream beside the sequential passes (SIDE_STREAM, SIDE_DBC) where the GPU, not the host, is what the call waits
for; traced ones keep one stream, since Inductor launches a triton_op's kernels on one.
float64 inputs are accepted on CPU only (for gradcheck).
"""

from __future__ import annotations

import math
import threading

import torch
import torch.nn.functional as F
from torch.library import triton_op

from . import _plans
from ._checks import FLOAT_DTYPES, check_same_device, check_tensor
from ._eager import plain_eager

_INT_DTYPES = (torch.int32, torch.int64)
_FLOATS = FLOAT_DTYPES + (torch.float64,)  # float64 on CPU only (gradcheck)
MAX_DSTATE = 256
MAX_HEADDIM = 256
# The ops take dt_limit as finite floats, an open bound being +-_OPEN_BOUND: a CPU AOTInductor package stores
# the opaque CPU op's float arguments in JSON, and its loader rejects inf ("json type_error.302").
_OPEN_BOUND = float(torch.finfo(torch.float32).max)
# The CUDA kernels scan in chunks of at most this many steps, whatever chunk_size asks for. The result is the
# same function of the inputs at every chunk size (they differ only in rounding), and a smaller chunk trades the
# within-chunk (t, s) work, most of the time, for more chunk states. H100, bf16, p64 n128 with D, z, dt_bias and
# softplus, CUDA graphs (benchmarks/probes/ssd_chunk_sizes.py, session 24), forward / forward+backward ms:
#   b8 l2048 h24:  chunk 64: 0.224 / 0.999, 128: 0.225 / 0.997, 256: 0.245 / 1.063
#   b2 l8192 h80:  chunk 64: 0.763 / 3.243, 128: 0.733 / 3.027, 256: 0.795 / 3.222
# with the same error against float64 at every chunk size (relative norm 0.0023 for out, 0.0028 for dx, at the
# bf16 rounding of the outputs). With launch settings tuned at 128 afterwards: 0.210 / 0.962 and 0.682 / 2.921
# (bench_ssd). The reference is slower at 128 than at its 256 (0.296 / 1.307 against 0.272 / 1.310 ms at the first
# shape). The CPU path keeps chunk_size.
CUDA_CHUNK_MAX = 128


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    seq_idx: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    dt_softplus: bool = False,
    dt_limit: tuple[float, float] | None = None,
    return_final_states: bool = False,
    return_varlen_states: bool = False,
):
    """Chunked SSD scan; returns ``out``, ``(out, final_states)``, ``(out, varlen_states)`` or
    ``(out, final_states, varlen_states)``, like the reference's ``mamba_chunk_scan_combined``.

    ``cu_seqlens`` is used only with ``return_varlen_states`` (as in the reference); the reset of the state
    between packed sequences comes from ``seq_idx``. varlen_states[k] is the state after the last token of
    sequence k (the first sequence starts from initial_states). ``dt_limit=None`` means (0, inf): no clamping.
    ``chunk_size`` sets the chunked algorithm's block, not the result (which differs between chunk sizes only in
    rounding); the CUDA kernels use at most CUDA_CHUNK_MAX (128), measured faster than 256.
    """
    if return_varlen_states and cu_seqlens is None:
        raise ValueError("cu_seqlens (nseq + 1,) is required when return_varlen_states=True")
    if not return_varlen_states:
        cu_seqlens = None
    if dt_limit is None:
        # The default (0, inf), written here as literals rather than as a signature default or a global: Dynamo
        # (dynamic=True) traces a float read from __defaults__ or a global as a symbolic float, which cannot reach
        # the op's float argument, and then restarts the analysis of the whole frame once (twice the compile time).
        dt_limit = (0.0, float("inf"))
    dt_min, dt_max = _dt_limit_args(dt_limit)
    _check_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens)
    # With a backward to come, the CUDA forward keeps what the backward would otherwise recompute: y + D x with a
    # gate (one more write of out's size, sparing the recompute of y for dz) and, with KEEP_STATES, the chunk
    # states it stored anyway (see there).
    keep = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, dt, A, B, C, D, z, dt_bias, initial_states))
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_min,
            dt_max, keep)
    if x.device.type == "cuda" and _plain_eager(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens):
        out, final_states, varlen_states, *_ = _eager_forward(args)
    else:
        out, final_states, varlen_states, *_ = torch.ops.mamba_compile.ssd_chunk_scan_fwd(*args)
    if not return_varlen_states:
        return (out, final_states) if return_final_states else out
    return (out, final_states, varlen_states) if return_final_states else (out, varlen_states)


def _static_chunk(chunk_size):
    """chunk_size as an int where it is a SymInt: torch.compile(dynamic=True) passes one for an int it reads from a
    closure or a function argument. The chunk is a block size that the kernels and the chunked layouts specialise
    on, so the traced op specialises it to its value (a guard on it: another chunk size compiles again)."""
    return int(chunk_size) if isinstance(chunk_size, torch.SymInt) else chunk_size


def _check_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int, got {type(chunk_size).__name__}")
    if chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size}")
    X, DT, BC, H = ("(batch, seqlen, nheads, headdim)", "(batch, seqlen, nheads)",
                    "(batch, seqlen, ngroups, dstate)", "(nheads,)")
    check_tensor("x", x, shape=(None, None, None, None), letters=X, dtypes=_FLOATS)
    batch, seqlen, nheads, headdim = x.shape
    if seqlen < 1:
        raise ValueError(f"x must have shape {X} with seqlen >= 1, got {tuple(x.shape)}")
    check_tensor("B", B, shape=(batch, seqlen, None, None), letters=BC, dtypes=_FLOATS)
    ngroups, dstate = B.shape[2], B.shape[3]
    if ngroups == 0 or nheads % ngroups:
        raise ValueError(f"B must have shape {BC} with nheads % ngroups == 0, got ngroups={ngroups} for "
                         f"nheads={nheads}")
    if dstate > MAX_DSTATE or headdim > MAX_HEADDIM:
        raise ValueError(f"dstate (B's last dim) must be <= {MAX_DSTATE} and headdim (x's last dim) <= "
                         f"{MAX_HEADDIM}, got dstate={dstate}, headdim={headdim}")
    check_tensor("C", C, shape=(batch, seqlen, ngroups, dstate), letters=BC, dtypes=_FLOATS)
    check_tensor("dt", dt, shape=(batch, seqlen, nheads), letters=DT, dtypes=_FLOATS)
    check_tensor("A", A, shape=(nheads,), letters=H, dtypes=_FLOATS)
    if D is not None and D.dim() == 2:
        check_tensor("D", D, shape=(nheads, headdim), letters="(nheads, headdim)", dtypes=_FLOATS)
    else:
        check_tensor("D", D, shape=(nheads,), letters="(nheads,) or (nheads, headdim)", dtypes=_FLOATS,
                     optional=True)
    check_tensor("z", z, shape=(batch, seqlen, nheads, headdim), letters=X, dtypes=_FLOATS, optional=True)
    check_tensor("dt_bias", dt_bias, shape=(nheads,), letters=H, dtypes=_FLOATS, optional=True)
    check_tensor("initial_states", initial_states, shape=(batch, nheads, headdim, dstate),
                 letters="(batch, nheads, headdim, dstate)", dtypes=_FLOATS, optional=True)
    check_tensor("seq_idx", seq_idx, shape=(batch, seqlen), letters="(batch, seqlen)", dtypes=_INT_DTYPES,
                 optional=True)
    check_tensor("cu_seqlens", cu_seqlens, shape=(None,), letters="(nseq + 1,)", dtypes=_INT_DTYPES,
                 optional=True)
    if cu_seqlens is not None:
        if batch != 1:
            raise ValueError(f"cu_seqlens needs x of shape (batch, seqlen, nheads, headdim) with batch == 1, "
                             f"got batch={batch}")
        if cu_seqlens.shape[0] < 2:
            raise ValueError(f"cu_seqlens must have shape (nseq + 1,) with nseq >= 1, got {tuple(cu_seqlens.shape)}")
    device = check_same_device(x=x, dt=dt, A=A, B=B, C=C, D=D, z=z, dt_bias=dt_bias,
                               initial_states=initial_states, seq_idx=seq_idx, cu_seqlens=cu_seqlens)
    if device.type != "cpu":
        for name, t in (("x", x), ("dt", dt), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z),
                        ("dt_bias", dt_bias), ("initial_states", initial_states)):
            if t is not None and t.dtype == torch.float64:
                raise TypeError(f"{name} must have dtype in (float32, float16, bfloat16) on {device.type}, "
                                f"got float64 (float64 is supported on CPU only)")


def _dt_limit_args(dt_limit) -> tuple[float, float]:
    """The ops' finite (dt_min, dt_max) for dt_limit: an infinite bound becomes +-_OPEN_BOUND, so the default
    (0, inf) becomes (0, _OPEN_BOUND), which _has_dt_limit reads as no clamping, as in the reference."""
    if not isinstance(dt_limit, (tuple, list)) or len(dt_limit) != 2:
        raise TypeError(f"dt_limit must be a pair (min, max), got {dt_limit!r}")
    dt_min, dt_max = float(dt_limit[0]), float(dt_limit[1])
    if dt_min != dt_min or dt_max != dt_max:  # nan (math.isnan does not trace on a symbolic float)
        raise ValueError(f"dt_limit must not hold nan, got {dt_limit!r}")
    bound = torch.finfo(torch.float32).max  # == _OPEN_BOUND; Dynamo would trace the global as a symbolic float
    return max(dt_min, -bound), min(dt_max, bound)


def _check_dt_bounds(dt_min: float, dt_max: float) -> None:
    """Direct op calls: the ops take only finite bounds (see _OPEN_BOUND); ssd_chunk_scan converts dt_limit."""
    for name, v in (("dt_min", dt_min), ("dt_max", dt_max)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v} (an open dt_limit bound is passed as "
                             f"+-{_OPEN_BOUND:.8g}; ssd_chunk_scan converts dt_limit)")


def _has_dt_limit(dt_min: float, dt_max: float) -> bool:
    return not (dt_min == 0.0 and dt_max >= _OPEN_BOUND)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for every supported dtype; float64 (CPU only) so gradcheck can run on the op itself."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty((0,))


# ----------------------------------------------------------------------------------------------------
# CPU: the chunked algorithm in vectorised torch
# ----------------------------------------------------------------------------------------------------


def _dt_process(dt, dt_bias, dt_softplus, dt_min, dt_max):
    cd = _compute_dtype(dt)
    dt = dt.to(cd)
    if dt_bias is not None:
        dt = dt + dt_bias.to(cd)
    if dt_softplus:
        dt = torch.where(dt <= 20.0, F.softplus(dt), dt)
    if _has_dt_limit(dt_min, dt_max):
        dt = dt.clamp(min=dt_min, max=dt_max)
    return dt


_EXP_FLOOR = -80.0


def _segsum(v: torch.Tensor) -> torch.Tensor:
    """v: (..., T) -> (..., T, T) with out[..., i, j] = sum_{k=j}^{i-1} v_k for j <= i, -inf above the
    diagonal. Built from masked cumsums, not differences of one cumsum, so long ranges keep precision."""
    T = v.shape[-1]
    v = v[..., None, :].expand(*v.shape[:-1], T, T)  # [..., i, k] = v_k
    below = torch.ones(T, T, dtype=torch.bool, device=v.device).tril(-1)  # k < i
    s = torch.where(below, v, 0.0).flip(-1).cumsum(-1).flip(-1)  # [..., i, j] = sum_{k >= j, k < i} v_k
    return s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=v.device).tril(), -math.inf)


def _ssd_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
               dt_min, dt_max):
    """Chunked SSD in float32 torch (float64 for float64 inputs).
    Returns (out, final_states, varlen_states or empty)."""
    batch, seqlen, nheads, headdim = x.shape
    ngroups, dstate = B.shape[2], B.shape[3]
    L = chunk_size
    nchunks = (seqlen + L - 1) // L
    pad = nchunks * L - seqlen
    rep = nheads // ngroups
    cd = _compute_dtype(x)

    dtp = _dt_process(dt, dt_bias, dt_softplus, dt_min, dt_max)  # (batch, seqlen, nheads)
    # Padding: zero dt and x contribute nothing; seq_idx repeats its last value so no reset is invented.
    xc = F.pad(x.to(cd), (0, 0, 0, 0, 0, pad)).view(batch, nchunks, L, nheads, headdim)
    dtc = F.pad(dtp, (0, 0, 0, pad)).view(batch, nchunks, L, nheads)
    Bg = F.pad(B.to(cd), (0, 0, 0, 0, 0, pad)).view(batch, nchunks, L, ngroups, dstate)
    Cg = F.pad(C.to(cd), (0, 0, 0, 0, 0, pad)).view(batch, nchunks, L, ngroups, dstate)
    Bh, Ch = Bg.repeat_interleave(rep, dim=3), Cg.repeat_interleave(rep, dim=3)  # (batch, nchunks, L, nheads, dstate)
    if seq_idx is None:
        seg = torch.zeros(batch, nchunks, L, dtype=torch.long, device=x.device)
    else:
        seg = torch.cat([seq_idx.long(), seq_idx[:, -1:].long().expand(batch, pad)], 1).view(batch, nchunks, L)

    a = torch.cumsum(dtc * A.to(cd), dim=2).permute(0, 1, 3, 2).contiguous()  # (batch, nchunks, nheads, L)
    dtc = dtc.permute(0, 1, 3, 2)  # (batch, nchunks, nheads, L)

    # Within a chunk: y_t += sum_{s<=t, same segment} (C_t . B_s) exp(a_t - a_s) dt_s x_s
    # The (t, s) tensors are the largest here (CPU time): each is made once and masked and exponentiated in
    # place; masked pairs are set to 0 before the exp (CPU exp is 3x slower on -inf) and zeroed through C B^T, which
    # is broadcast over a group's heads rather than repeated; dt joins x, which is chunk_size times smaller.
    same = (seg[..., :, None] == seg[..., None, :]) & torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    same = same[:, :, None]  # (batch, nchunks, 1, t, s)
    # Exponents are floored at _EXP_FLOOR: CPU exp takes a slow path below about -87, where the result underflows
    # (8x slower over a whole tensor), and exp(-80) = 1.8e-35 is already nothing beside the other terms.
    # The mask's zeros go into C B^T (once per group) rather than into the per-head decay.
    decay = (a[..., :, None] - a[..., None, :]).masked_fill_(~same, 0.0).clamp_min_(_EXP_FLOOR).exp_()
    CB = torch.einsum("bctgn,bcsgn->bcgts", Cg, Bg) * same  # (batch, nchunks, ngroups, t, s): once per group
    scores = (decay.view(batch, nchunks, ngroups, rep, L, L) * CB[:, :, :, None]).view(batch, nchunks, nheads, L, L)
    y = torch.einsum("bchts,bcshp->bcthp", scores, xc * dtc.transpose(2, 3)[..., None])

    # State contributed by each chunk, read at its last position (only its last segment counts).
    aL = a[..., -1]  # (batch, nchunks, nheads)
    segL = seg[..., -1]  # (batch, nchunks)
    w = torch.exp(aL[..., None] - a) * dtc * (seg == segL[..., None])[:, :, None]  # (batch, nchunks, nheads, L)
    states = torch.einsum("bchs,bcshp,bcshn->bchpn", w, xc, Bh)

    # State passing: S_in[c] = sum_{j<=c} exp(sum_{k=j}^{c-1} aL_k) [no reset in j..c-1] ext[j], with ext[0] the
    # initial state and ext[j] = states[j-1]; S_in[nchunks] is the final state.
    seg_prev = torch.cat([torch.zeros_like(segL[:, :1]), segL], 1)  # seg at the end of chunk c-1; 0 before
    reset = (segL != seg_prev[:, :-1]).to(cd)  # chunk c drops the incoming state
    zero = aL.new_zeros(batch, 1, nheads)
    log_decay = _segsum(torch.cat([aL, zero], 1).permute(0, 2, 1))  # (batch, nheads, nchunks+1, nchunks+1)
    resets = _segsum(torch.cat([reset, reset.new_zeros(batch, 1)], 1))  # (batch, nchunks+1, nchunks+1)
    M = torch.exp(log_decay) * (resets == 0)[:, None]
    init = (initial_states.to(cd) if initial_states is not None
            else x.new_zeros(batch, nheads, headdim, dstate, dtype=cd))
    ext = torch.cat([init[:, None], states], 1)  # (batch, nchunks+1, nheads, headdim, dstate)
    S_in = torch.einsum("bhcj,bjhpn->bchpn", M, ext)
    prev, final_states = S_in[:, :-1], S_in[:, -1].contiguous()

    # The incoming state's contribution: exp(a_t) C_t S_in^T for positions still in the incoming segment.
    carry = torch.exp(a) * (seg == seg_prev[:, :nchunks, None])[:, :, None]  # (batch, nchunks, nheads, L)
    y = y + torch.einsum("bcht,bcthn,bchpn->bcthp", carry, Ch, prev)

    y = y.reshape(batch, nchunks * L, nheads, headdim)[:, :seqlen]
    if D is not None:
        y = y + (D.to(cd)[:, None] if D.dim() == 1 else D.to(cd)) * x.to(cd)
    if z is not None:
        y = y * F.silu(z.to(cd))
    varlen = _empty(final_states)
    if cu_seqlens is not None:
        varlen = _varlen_states(x, dtc.transpose(1, 2), a.transpose(1, 2), B, prev, cu_seqlens)
    return y.to(x.dtype).contiguous(), final_states, varlen


def _varlen_windows(cu_seqlens: torch.Tensor, chunk_size: int):
    """For each packed sequence k: its last index e_k, the chunk c_k holding it, the window of positions
    e_k - j (j < chunk_size) that lie in sequence k and chunk c_k (as chunk, offset pairs), and whether the
    state entering c_k belongs to sequence k (it started before c_k, or c_k == 0: the initial state)."""
    starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long() - 1
    chunk = torch.div(ends, chunk_size, rounding_mode="floor")
    pos = ends[:, None] - torch.arange(chunk_size, device=cu_seqlens.device)[None, :]  # (nseq, chunk_size)
    valid = (pos >= starts[:, None]) & (pos >= (chunk * chunk_size)[:, None])
    carry = (starts < chunk * chunk_size) | (chunk == 0)
    pos = pos.clamp(min=0)
    return ends, chunk, pos, chunk[:, None].expand_as(pos), pos % chunk_size, valid, carry


def _varlen_states(x, dtp, dA_cs, B, prev, cu_seqlens):
    """State after the last token of each packed sequence (batch 1), shared by the CPU and CUDA paths.
    x: (1, seqlen, nheads, headdim); dtp, dA_cs: (1, nheads, nchunks, chunk_size); B: (1, seqlen, ngroups,
    dstate); prev: (1, nchunks, nheads, headdim, dstate), the states entering each chunk. Indexing only (no
    reshapes of seqlen-sized dims), so tracing adds no guards on the sequence length."""
    nheads, chunk_size = x.shape[2], dtp.shape[-1]
    ends, chunk, pos, pc, pj, valid, carry = _varlen_windows(cu_seqlens, chunk_size)
    a_w = dA_cs[0][:, pc, pj].permute(1, 2, 0)  # (nseq, chunk_size, nheads)
    a_end = a_w[:, 0]  # the window starts at e_k
    w = torch.exp(torch.where(valid[..., None], a_end[:, None] - a_w, -math.inf)) * dtp[0][:, pc, pj].permute(1, 2, 0)
    cd = _compute_dtype(x)
    Bw = B[0, pos].to(cd).repeat_interleave(nheads // B.shape[2], dim=2)  # (nseq, chunk_size, nheads, dstate)
    V = torch.einsum("kjh,kjhp,kjhn->khpn", w, x[0, pos].to(cd), Bw)
    return V + (torch.exp(a_end) * carry[:, None])[..., None, None] * prev[0, chunk]


def _autograd_enabled():
    """Re-enables autograd inside a custom op's kernel: the dispatcher runs op kernels with the autograd
    dispatch keys excluded, so plain ``torch.enable_grad()`` would record nothing."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradOther", "AutogradCPU", "AutogradNestedTensor", "ADInplaceOrView"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    return _Both(torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude),
                 torch.enable_grad())


class _Both:
    def __init__(self, a, b):
        self.a, self.b = a, b

    def __enter__(self):
        self.a.__enter__()
        self.b.__enter__()

    def __exit__(self, *exc):
        self.b.__exit__(*exc)
        self.a.__exit__(*exc)


@torch.library.custom_op("mamba_compile::_ssd_chunk_scan_cpu", mutates_args=())
def _ssd_fwd_cpu(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
    initial_states: torch.Tensor | None, seq_idx: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    dt_softplus: bool, dt_min: float, dt_max: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """CPU forward, opaque to tracing: splitting the sequence into chunks (pad, view, slice back) would make
    tracing guard on the number of chunks and on seqlen % chunk_size (one recompile per case, and export
    with a dynamic seqlen fails); the fake below has none of that."""
    return _ssd_torch(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
                      dt_softplus, dt_min, dt_max)


@_ssd_fwd_cpu.register_fake
def _(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_min,
      dt_max):
    return _fwd_outputs(x, B, cu_seqlens)


def _fwd_outputs(x, B, cu_seqlens):
    """Empty (out, final_states, varlen_states) of the right shapes and dtypes: the fake of the CPU op."""
    batch, _, nheads, headdim = x.shape
    cd = _compute_dtype(x)
    final = x.new_empty(batch, nheads, headdim, B.shape[-1], dtype=cd)
    varlen = (final.new_empty(cu_seqlens.shape[0] - 1, nheads, headdim, B.shape[-1]) if cu_seqlens is not None
              else final.new_empty(0))
    return x.new_empty(x.shape), final, varlen


@torch.library.custom_op("mamba_compile::_ssd_chunk_scan_bwd_cpu", mutates_args=())
def _ssd_bwd_cpu(
    dout: torch.Tensor, dfinal: torch.Tensor | None, dvarlen: torch.Tensor | None,
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
    initial_states: torch.Tensor | None, seq_idx: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    dt_softplus: bool, dt_min: float, dt_max: float,
) -> list[torch.Tensor]:
    """CPU backward: recomputes the chunked forward under autograd (opaque, so tracing never sees it)."""
    inputs = [x, dt, A, B, C, D, z, dt_bias, initial_states]
    leaves = [None if t is None else t.detach().requires_grad_(True) for t in inputs]
    with _autograd_enabled():
        lx, ldt, lA, lB, lC, lD, lz, lbias, linit = leaves
        out, final, varlen = _ssd_torch(lx, ldt, lA, lB, lC, chunk_size, lD, lz, lbias, linit, seq_idx,
                                        cu_seqlens, dt_softplus, dt_min, dt_max)
        outs, grads = [out], [dout]
        if dfinal is not None:
            outs.append(final)
            grads.append(dfinal)
        if dvarlen is not None and cu_seqlens is not None:
            outs.append(varlen)
            grads.append(dvarlen)
        wrt = [t for t in leaves if t is not None]
        got = iter(torch.autograd.grad(outs, wrt, grads, allow_unused=True))
    res = []
    for t, leaf in zip(inputs, leaves):
        if t is None:
            res.append(_empty(x))
            continue
        g = next(got)
        res.append(t.new_zeros(t.shape) if g is None else g.to(t.dtype).contiguous())
    return res


@_ssd_bwd_cpu.register_fake
def _(dout, dfinal, dvarlen, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens,
      dt_softplus, dt_min, dt_max):
    return _grad_like(x, dt, A, B, C, D, z, dt_bias, initial_states)


def _grad_like(*inputs):
    return [_empty(inputs[0]) if t is None else t.new_empty(t.shape) for t in inputs]  # contiguous


# ----------------------------------------------------------------------------------------------------
# CUDA: Triton pipeline (also launched directly, wrap=False, under the Triton interpreter by the tests)
# ----------------------------------------------------------------------------------------------------


def _state_dtype(x, B, C, cu_seqlens, recompute_y: bool = False) -> torch.dtype:
    """The dtype the chunk-boundary states (and, in the backward, their gradients) are stored in; carried in
    float32 either way. C's dtype for 16-bit inputs, as the reference stores them (their dots then run in 16
    bits); float32 for float32 inputs, when the packed sequences' states are built from them, and for the
    backward's recomputing dz kernel."""
    from . import ssd_triton as kt

    return torch.float32 if cu_seqlens is not None or recompute_y or kt._ieee(x, B, C) else C.dtype


# The forward's chunk_scan reads C B^T from bmm_cb_fwd (once per chunk and group); False: each program computes its
# tiles itself. Session 25, H100 (benchmarks/probes/ssd_fwd_cb.py, graphs, tile-major grids): chunk_scan 0.122 ms
# reading it against 0.150-0.151 computing it (0.386-0.391 against 0.484-0.487 at b2 l8192 h80), bmm_cb_fwd
# 0.005; the op's forward 0.183 against 0.206, forward+backward 0.887-0.889 against 0.908-0.909.
FWD_BMM_CB = True
# The forward and the backward's recompute take dt_proc and its cumsum inside the state-passing kernel (one launch
# instead of two); False for the probe that times both (benchmarks/probes/ssd_fused_cumsum.py).
FUSED_CUMSUM = True


# Eager CUDA backwards (wrap=False: _EagerScan, and CUDA graphs captured from it) run kernels on a second stream
# beside the sequential passes, which keep only a few hundred programs busy: gate_bwd beside the states' recompute
# (where the forward did not keep them: KEEP_STATES), dcb beside the reverse pass, and (SIDE_DBC) dB and dC beside
# dx. Traced backwards (torch.compile, export) keep one stream. Session 27, H100, the op's forward+backward as CUDA
# graphs, alternating (benchmarks/probes/ssd_side_stream.py): 0.862-0.864 ms with both, 0.874-0.876 with dcb alone
# on the side, 0.889 on one stream (2.638-2.640 / 2.653 / 2.736-2.745 at b2 l8192 h80). The kernels and their
# results are the same (a GPU test compares with the op's one-stream backward bit for bit, another a captured graph's).
# SIDE_STREAM "auto" forks only where that can shorten the call: while a CUDA graph is captured (a replay takes the
# GPU's time), or when the current stream still has work queued as the backward starts (the GPU is the bound). An
# idle stream means the host is the bound, and there the fork's stream switches, events and record_stream calls cost
# the host more than the overlap saves the GPU. Session 30, H100, eager forward+backward at b8 l2048 h24, three
# rounds (benchmarks/probes/ssd_host.py --streams): 1.60 / 1.60 / 1.27 ms a call on one stream against 2.05 / 2.00
# / 2.00 on two (do_bench 1.69-1.74 against 1.79-2.14); with _Fork's cheaper fork (twelve interleaved rounds, medians)
# 1.79 ms on two, 1.81 on one, 1.73 "auto", and at b1 l256 h4 1.85 / 1.54 / 1.58, rounds ranging +-30%. True forks
# always (and no backward is planned), False never. With EAGER_PLANS, "auto" decides only for the backwards that
# have no plan (a key's first two calls, unplannable keys) and under CUDA-graph capture.
SIDE_STREAM = "auto"
SIDE_DBC = True
_side_streams: dict = {}


def _second_stream(x: torch.Tensor) -> bool:
    """Whether an eager CUDA backward on ``x``'s device runs kernels on a second stream (see SIDE_STREAM)."""
    if SIDE_STREAM != "auto":
        return bool(SIDE_STREAM)
    if torch.cuda.is_current_stream_capturing():
        return True
    return not torch.cuda.current_stream(x.device).query()


class _Fork:
    """``with _Fork(x, on) as fork:`` ``fork.run(fn, ...)`` calls fn with a second stream of x's device current, so
    that its launches run beside what the current stream does next, after everything it had queued; leaving the
    block makes the current stream wait for them, and marks the tensors fn returned as used by the current stream
    (for the caching allocator). With ``on`` False, ``run`` just calls fn.

    It costs the host little: the second stream and the two events that order the streams are made once per device
    and thread and reused (an event may be recorded again once a wait on it is queued: the wait keeps the record it
    saw), the current stream is read once, and the streams are switched directly where x's device is the current
    one (torch.cuda.stream's context, which also handles another device, where it is not). With
    torch.cuda.stream, wait_stream (a new event each) and current_stream at every step, forking took the host
    0.3-0.4 ms a backward on the GPU machine (session 30, ssd_host --streams)."""

    def __init__(self, x: torch.Tensor, on: bool):
        self.on, self.made = on, []
        if on:
            dev = x.device.index
            state = getattr(_fork_local, "by_device", None)
            if state is None:
                state = _fork_local.by_device = {}
            if dev not in state:
                state[dev] = (_side_stream(x.device), torch.cuda.Event(), torch.cuda.Event())
            self.side, self.fork_event, self.join_event = state[dev]
            self.main = torch.cuda.current_stream(dev)
            self.direct = dev == torch.cuda.current_device()

    def __enter__(self):
        self.wait()
        return self

    def run(self, fn, *args, **kwargs):
        if not self.on:
            return fn(*args, **kwargs)
        if self.direct:
            torch.cuda.set_stream(self.side)
            try:
                out = fn(*args, **kwargs)
            finally:
                torch.cuda.set_stream(self.main)
        else:
            with torch.cuda.stream(self.side):
                out = fn(*args, **kwargs)
        self.made.append(out)
        return out

    def wait(self):
        """The second stream's next launches wait for what the current stream has queued so far."""
        if self.on:
            self.fork_event.record(self.main)
            self.fork_event.wait(self.side)

    def __exit__(self, *exc):
        if self.on:
            self.join_event.record(self.side)
            self.join_event.wait(self.main)
            for t in _tensors(self.made):
                t.record_stream(self.main)
        return False


_fork_local = threading.local()


def _side_stream(device: torch.device) -> torch.cuda.Stream:
    """The second stream of ``device``, one for all threads."""
    side = _side_streams.get(device)
    if side is None:
        side = _side_streams[device] = torch.cuda.Stream(device)
    return side


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)


def _dt_and_states(x, dt, A, B, chunk_size, dt_bias, initial_states, seq_idx, dt_softplus, dt_min, dt_max,
                   prev_dtype, wrap):
    """(dtp, dA_cs, prev, final): dt_proc and its within-chunk cumsum of dt A, the states entering the chunks (in
    prev_dtype) and the final state. One launch for chunks of up to kt.FUSED_CUMSUM_MAX_CHUNK (128, the CUDA
    kernels' chunk), else two."""
    from . import ssd_triton as kt

    has_limit = _has_dt_limit(dt_min, dt_max)
    if chunk_size <= kt.FUSED_CUMSUM_MAX_CHUNK and FUSED_CUMSUM:
        return kt.chunk_cumsum_state_passing_fwd(x, B, dt, A, dt_bias, chunk_size, dt_softplus, dt_min, dt_max,
                                                 has_limit, initial_states, seq_idx, prev_dtype=prev_dtype, wrap=wrap)
    dtp, dA_cs = kt.chunk_cumsum_fwd(dt, A, dt_bias, chunk_size, dt_softplus, dt_min, dt_max, has_limit, wrap=wrap)
    return (dtp, dA_cs, *kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, initial_states, seq_idx, prev_dtype=prev_dtype,
                                                    wrap=wrap))


def _fwd_triton(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
                dt_min, dt_max, wrap: bool, keep: bool = False):
    """(out, final_states, varlen_states, pre_gate, dt_proc, dA_cumsum, chunk_states). With ``keep`` (a backward
    to come): pre_gate is y + D x when z is given (the backward's dz then needs no recompute of y), and with
    KEEP_STATES the last three are the chunked dt, its cumsum and the states entering each chunk, as the
    backward would recompute them. What is not kept is empty."""
    from . import ssd_triton as kt

    # The state entering each chunk is read once, by chunk_scan.
    dtp, dA_cs, prev, final_states = _dt_and_states(x, dt, A, B, chunk_size, dt_bias, initial_states, seq_idx,
                                                    dt_softplus, dt_min, dt_max, _state_dtype(x, B, C, cu_seqlens),
                                                    wrap)
    cb = kt.bmm_cb_fwd(C, B, chunk_size, wrap=wrap) if FWD_BMM_CB else None  # once per group, not per head
    pre_gate = torch.empty_like(x) if keep and z is not None else None
    out = kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, D, z, seq_idx, cb=cb, pre_gate=pre_gate, wrap=wrap)
    varlen = _empty(final_states)
    if cu_seqlens is not None:
        varlen = _varlen_states(x, dtp, dA_cs, B, prev, cu_seqlens)
    states = (dtp, dA_cs, prev) if keep and KEEP_STATES else (_empty(dtp), _empty(dtp), _empty(prev))
    return out, final_states, varlen, pre_gate if pre_gate is not None else _empty(x), *states


def _bwd_triton(dout, dfinal, dvarlen, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
                cu_seqlens, dt_softplus, dt_min, dt_max, wrap: bool, pre_gate=None, states=None,
                one_stream: bool = False):
    """Explicit backward (Triton kernels and a little vectorised torch in the chunked layout, which traces
    without guards on seqlen). Every decay exp(a_t - a_s) joins a later index t (an output, or a returned
    state) to an earlier s (an input, or the initial state); dL/d(dt_k A) sums those pair terms over the
    pairs whose span holds k. ``states``: the forward's kept (dt_proc, dA_cumsum, chunk_states), or None to
    recompute them. ``one_stream``: no second stream, whatever SIDE_STREAM says (a launch plan's record)."""
    from . import ssd_triton as kt

    seqlen = x.shape[1]
    has_limit = _has_dt_limit(dt_min, dt_max)
    # The chunk-boundary states and their gradients are stored as the forward stores its states.
    recompute_y = z is not None and pre_gate is None
    st_dtype = _state_dtype(x, B, C, cu_seqlens, recompute_y)
    varlen_grads = dvarlen is not None and cu_seqlens is not None
    side = (not wrap and not one_stream and x.is_cuda and not varlen_grads and not recompute_y
            and _second_stream(x))
    # The states entering each chunk, the forward's when it kept them, else recomputed as the forward stored them;
    # beside the recompute, dy = dout * silu(z) (rounded to dout's dtype, and used so everywhere) and dz: elementwise
    # from the forward's pre-gate output when it was kept, else with y recomputed; without z, dy is dout.
    if recompute_y:
        states = None  # the kept states are in the forward's dtype; the dz kernel reads float32 ones
    if states is not None:
        dtp, dA_cs, prev = states
        dy, dz = kt.gate_bwd(dout, z, pre_gate, wrap=wrap)
    else:
        with _Fork(x, side) as fork:
            dtp, dA_cs, prev, _ = _dt_and_states(x, dt, A, B, chunk_size, dt_bias, initial_states, seq_idx,
                                                 dt_softplus, dt_min, dt_max, st_dtype, wrap)
            if not recompute_y:
                dy, dz = fork.run(kt.gate_bwd, dout, z, pre_gate, wrap=wrap)
    if recompute_y:
        dy, dz = kt.chunk_scan_bwd_dz(dout, x, B, C, dtp, dA_cs, prev, D, z, seq_idx, wrap=wrap)
    # The reverse pass over the chunks: the state gradients, each chunk's outputs adding theirs to the state that
    # enters it (with varlen-state gradients, those add to it too, between two kernels); then dx. Beside them,
    # dL/d(C_t . B_s), the group's heads summed once, for dB and dC after.
    ddt_v = dx_extra = dB_extra = da_v = None
    with _Fork(x, side) as fork:
        if varlen_grads:
            dprev = kt.chunk_state_fwd(dy, C, dtp, dA_cs, seq_idx, from_start=True, wrap=wrap)
            dx_extra, dB_extra, ddt_v, da_v, dprev_v = _varlen_states_bwd(
                dvarlen.float(), x, dtp, dA_cs, B, prev, cu_seqlens)
            dend, dinit, dchunk = kt.state_passing_bwd(dprev + dprev_v, dA_cs, prev, dfinal, seq_idx, seqlen,
                                                       initial_states is not None, dend_dtype=st_dtype, wrap=wrap)
        else:
            dend, dinit, dchunk = kt.chunk_state_passing_bwd(dy, C, dA_cs, prev, dfinal, seq_idx,
                                                             initial_states is not None, dend_dtype=st_dtype,
                                                             wrap=wrap)
        dcb = fork.run(kt.chunk_scan_bwd_dcb, x, dtp, dA_cs, dy, B.shape[2], seq_idx, wrap=wrap)

        def dbc(run):
            """dB and dC from dcb and the chunk-boundary states; dC's kernel also gives dy_t . y_state_t (the pairs
            whose earlier index lies before the chunk)."""
            return (run(kt.chunk_scan_bwd_dB, x, B, C, dcb, dtp, dA_cs, dy, dend, seq_idx, wrap=wrap),
                    *run(kt.chunk_scan_bwd_dC, x, B, C, dcb, dtp, dA_cs, dy, prev, seq_idx, wrap=wrap))

        # With SIDE_DBC, beside dx, after the reverse pass; else after dx, on this stream.
        side_dbc = side and SIDE_DBC
        if side_dbc:
            fork.wait()
            dB, dC, da = dbc(fork.run)
        dx, ddt_x, col, colstate, row, dd = kt.chunk_scan_bwd_dx(x, B, C, dtp, dA_cs, dy, dend, D, seq_idx,
                                                             dx_extra=dx_extra, wrap=wrap)
    if not side_dbc:
        dB, dC, da = dbc(lambda fn, *a, **k: fn(*a, **k))
    if dB_extra is not None:
        dB = (dB.float() + dB_extra).to(B.dtype)
    if da_v is not None:
        da = da + da_v
    # dL/d(dt_k A) from the pair terms whose span holds k, then back through clamp, softplus and the bias to
    # (batch, seqlen, nheads): one kernel (see _dt_bwd_kernel).
    ddt, dA_parts, dbias_parts = kt.dt_bwd(dt, dt_bias, A, dtp, ddt_x, ddt_v, da, col, colstate, row, dchunk,
                                           dt_softplus, dt_min, dt_max, has_limit, wrap=wrap)
    # The per-head sums of the partial sums of dA, dt_bias and D, in one launch.
    dA, ddt_bias, dD = kt.head_grads(dA_parts, dbias_parts, dd, A, dt_bias, D, wrap=wrap)
    ddt_bias = ddt_bias if dt_bias is not None else _empty(x)
    dD = dD if D is not None else _empty(x)
    dz = dz if z is not None else _empty(x)
    dinit = dinit.to(initial_states.dtype) if initial_states is not None else _empty(x)
    return [dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit]


def _varlen_states_bwd(dV, x, dtp, dA_cs, B, prev, cu_seqlens):
    """Backward of _varlen_states by hand (vectorised torch, indexing only). Returns float32 dx_extra
    (1, seqlen, nheads, headdim) and dB_extra (1, seqlen, ngroups, dstate), and the dL/d dt_proc, log-decay
    (as in _bwd_triton) and dprev contributions in the layouts of dtp and prev."""
    seqlen, nheads, headdim = x.shape[1], x.shape[2], x.shape[3]
    ngroups, dstate = B.shape[2], B.shape[3]
    chunk_size = dtp.shape[-1]
    ends, chunk, pos, pc, pj, valid, carry = _varlen_windows(cu_seqlens, chunk_size)
    a_w = dA_cs[0][:, pc, pj].permute(1, 2, 0)  # (nseq, chunk_size, nheads)
    dt_w = dtp[0][:, pc, pj].permute(1, 2, 0)
    a_end = a_w[:, 0]
    decay = torch.exp(torch.where(valid[..., None], a_end[:, None] - a_w, -math.inf))
    xw = x[0, pos].float()
    Bw = B[0, pos].float().repeat_interleave(nheads // ngroups, dim=2)
    GB = torch.einsum("khpn,kjhn->kjhp", dV, Bw)  # dV_k B_s
    r = (xw * GB).sum(-1) * decay  # dL/d dt_s
    w = decay * dt_w
    idx = pos.reshape(-1)
    dx = x.new_zeros(seqlen, nheads, headdim, dtype=torch.float32)
    dx.index_add_(0, idx, (w[..., None] * GB).flatten(0, 1))
    dBh = torch.einsum("kjh,khpn,kjhp->kjhn", w, dV, xw)
    dB = B.new_zeros(seqlen, ngroups, dstate, dtype=torch.float32)
    dB.index_add_(0, idx, dBh.unflatten(2, (ngroups, nheads // ngroups)).sum(3).flatten(0, 1))
    scale = torch.exp(a_end) * carry[:, None]  # (nseq, nheads)
    V = torch.einsum("kjh,kjhp,kjhn->khpn", w, xw, Bw) + scale[..., None, None] * prev[0, chunk]
    ddt, da = torch.zeros_like(dtp[0]), torch.zeros_like(dtp[0])  # (nheads, nchunks, chunk_size)
    ddt.permute(1, 2, 0).index_put_((pc, pj), r, accumulate=True)
    da.permute(1, 2, 0).index_put_((pc, pj), -(r * dt_w), accumulate=True)
    da.permute(1, 2, 0).index_put_((chunk, ends % chunk_size), (dV * V).sum((-1, -2)), accumulate=True)
    dprev = torch.zeros_like(prev[0]).index_add_(0, chunk, scale[..., None, None] * dV)
    return dx[None], dB[None], ddt[None], da[None], dprev[None]


# ----------------------------------------------------------------------------------------------------
# First eager CUDA call of a configuration: its Triton kernels compiled concurrently
# ----------------------------------------------------------------------------------------------------

_warm_configs: set = set()
_bwd_compiles: dict = {}  # configuration -> compiles the backward waits for


def _is_eager(x: torch.Tensor) -> bool:
    """A real tensor outside torch.compile/export tracing (where Inductor compiles the kernels itself)."""
    return not torch.compiler.is_compiling() and type(x) in (torch.Tensor, torch.nn.Parameter)


def _config_key(args) -> tuple:
    """What selects the Triton kernels and their specialisations, up to the ints Triton specialises on (cheap:
    it runs on every eager call)."""
    return (args[0].device, args[6] is not None and args[6].dim()) + tuple(
        t.dtype if isinstance(t, torch.Tensor) else t for t in args)


def _recorded_launches(args, with_backward: bool) -> tuple[list, list]:
    """The Triton launches (ssd_triton.record_launches' (kernel, grid, args, kwargs)) of the CUDA forward and,
    ``with_backward``, of the backward, for the forward op's arguments ``args``: the pipelines run on meta
    tensors of the same shapes, strides and dtypes, so nothing is launched."""
    from . import ssd_triton as kt

    meta = [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            if isinstance(t, torch.Tensor) else t for t in args]
    *fwd_args, keep = meta
    output = []
    fwd = kt.record_launches(lambda: output.extend(_fwd_triton(*fwd_args, wrap=False, keep=keep)))
    bwd = []
    if with_backward:
        bwd = kt.record_launches(_bwd_triton, torch.empty_like(output[0]), None, None, *fwd_args, wrap=False,
                                 **_kept(output, meta[7]))
    return fwd, bwd


def _compile_ahead(args) -> None:
    """The first forward of a configuration compiles the forward's kernels (and, when an input requires grad,
    the backward's) in threads, all at once, and waits for the forward's: about the longest single compile
    instead of the sum (see ssd_triton.compile_async). The launches are found by running the pipelines on meta
    tensors; whatever goes wrong here only leaves the kernels to compile at their first launch."""
    key = _config_key(args)
    needs_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in args)
    if (key, needs_grad) in _warm_configs:
        return
    _warm_configs.add((key, needs_grad))
    from . import ssd_triton as kt

    x = args[0]
    try:
        fwd, bwd = _recorded_launches(args, needs_grad)
    except Exception:  # noqa: BLE001
        return
    seen: set = set()
    fwd_compiles = kt.compile_async(fwd, x.device, seen)  # submitted first: the forward waits for these
    if bwd:
        _bwd_compiles[_config_key(args[:-1])] = kt.compile_async(bwd, x.device, seen)  # the key without keep
    kt.wait(fwd_compiles)


# ----------------------------------------------------------------------------------------------------
# Op registration
# ----------------------------------------------------------------------------------------------------


# The CUDA forward keeps, for a backward to come, the chunked dt, its cumsum and the states entering each chunk (which
# chunk_scan reads anyway), so that the backward does not run the state passing again; that costs one more tensor of
# x's size (at chunk 128 and dstate 128, in C's dtype) a call until the backward. False: the backward recomputes
# them, as the reference does. Session 33, H100 (benchmarks/probes/ssd_keep_states.py, graphs, alternating): the
# op's forward+backward 0.767-0.770 ms against 0.816-0.817 (2.385-2.386 against 2.559-2.560 at b2 l8192 h80),
# gradients bit for bit the same, 100 MiB held for the backward against 48 (331 against 160); Mamba-2's graphed
# training step (130M, b8 x 2048, train_ab --graph) 53.95 / 54.15 ms against 55.50 / 55.16, peak 12.49-12.65 GiB
# against 11.39-11.52.
KEEP_STATES = True


def _kept(output, z) -> dict:
    """The backward op's pre_gate and states arguments from the forward op's ``output`` (None where not kept: an
    output not kept is empty and 1-d, a rank known without guards under tracing)."""
    pre_gate, *states = output[3:7]
    return dict(pre_gate=pre_gate if z is not None and pre_gate.dim() == 4 else None,
                states=tuple(states) if states[2].dim() == 5 else None)


@triton_op("mamba_compile::ssd_chunk_scan_fwd", mutates_args=())
def ssd_chunk_scan_fwd(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
    initial_states: torch.Tensor | None, seq_idx: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    dt_softplus: bool, dt_min: float, dt_max: float, keep: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(out, final_states, varlen_states, pre_gate, dt_proc, dA_cumsum, chunk_states); varlen_states is empty
    without cu_seqlens. The last four are what the CUDA forward keeps for the backward op when ``keep`` (see
    _fwd_triton), empty where not kept and always on CPU."""
    chunk_size = _static_chunk(chunk_size)
    _check_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens)
    _check_dt_bounds(dt_min, dt_max)
    args = (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus,
            dt_min, dt_max)
    if x.device.type == "cuda":
        return _cuda_forward(args, keep, wrap=True)
    out, final, varlen = torch.ops.mamba_compile._ssd_chunk_scan_cpu(*args)
    return out, final, varlen, *(_empty(x) for _ in range(4))  # the CPU backward recomputes


@triton_op("mamba_compile::ssd_chunk_scan_bwd", mutates_args=())
def ssd_chunk_scan_bwd(
    dout: torch.Tensor, dfinal: torch.Tensor | None, dvarlen: torch.Tensor | None,
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, chunk_size: int,
    D: torch.Tensor | None, z: torch.Tensor | None, dt_bias: torch.Tensor | None,
    initial_states: torch.Tensor | None, seq_idx: torch.Tensor | None, cu_seqlens: torch.Tensor | None,
    dt_softplus: bool, dt_min: float, dt_max: float, pre_gate: torch.Tensor | None = None,
    dt_proc: torch.Tensor | None = None, dA_cumsum: torch.Tensor | None = None,
    chunk_states: torch.Tensor | None = None,
) -> list[torch.Tensor]:
    """[dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinitial_states]; empty tensors for absent inputs. What the CUDA
    forward kept (the forward op's last four outputs), or None to recompute it: pre_gate, its y + D x (with z);
    dt_proc, dA_cumsum and chunk_states, the three together. The CPU backward recomputes everything."""
    chunk_size = _static_chunk(chunk_size)
    _check_args(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens)
    _check_dt_bounds(dt_min, dt_max)
    if pre_gate is not None and (z is None or pre_gate.shape != x.shape):
        raise ValueError(f"pre_gate must be None without z, else of x's shape {tuple(x.shape)}; got "
                         f"{tuple(pre_gate.shape)}" + (" with z None" if z is None else ""))
    states = _check_states(x, B, C, chunk_size, cu_seqlens, dt_proc, dA_cumsum, chunk_states)
    args = (dout, dfinal, dvarlen, x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx,
            cu_seqlens, dt_softplus, dt_min, dt_max)
    if x.device.type == "cuda":
        return _cuda_backward(args, pre_gate, states, wrap=True)
    return torch.ops.mamba_compile._ssd_chunk_scan_bwd_cpu(*args)


def _check_states(x, B, C, chunk_size, cu_seqlens, dt_proc, dA_cumsum, chunk_states) -> tuple | None:
    """The backward op's kept (dt_proc, dA_cumsum, chunk_states), checked against what the CUDA forward keeps for
    these inputs, or None when none is given."""
    given = [t is not None for t in (dt_proc, dA_cumsum, chunk_states)]
    if not any(given):
        return None
    if not all(given):
        names = [n for n, g in zip(("dt_proc", "dA_cumsum", "chunk_states"), given) if g]
        raise ValueError("dt_proc, dA_cumsum and chunk_states (the forward's kept chunk states) are given together "
                         f"or not at all; got only {' and '.join(names)}")
    batch, seqlen, nheads, headdim = x.shape
    chunk = min(chunk_size, CUDA_CHUNK_MAX)
    nchunks = (seqlen + chunk - 1) // chunk
    expect = {"dt_proc": ((batch, nheads, nchunks, chunk), torch.float32),
              "dA_cumsum": ((batch, nheads, nchunks, chunk), torch.float32),
              "chunk_states": ((batch, nchunks, nheads, headdim, B.shape[-1]), _state_dtype(x, B, C, cu_seqlens))}
    for (name, (shape, dtype)), t in zip(expect.items(), (dt_proc, dA_cumsum, chunk_states)):
        if tuple(t.shape) != shape or t.dtype != dtype:
            raise ValueError(f"{name} must be the forward's, of shape {shape} and dtype {dtype}; got "
                             f"{tuple(t.shape)} {t.dtype}")
    return dt_proc, dA_cumsum, chunk_states


def _with_cuda_chunk(args: tuple, i: int) -> tuple:
    """args with the chunk size at position i capped at CUDA_CHUNK_MAX (see there)."""
    return (*args[:i], min(args[i], CUDA_CHUNK_MAX), *args[i + 1:])


def _cuda_forward(args: tuple, keep: bool, wrap: bool) -> tuple:
    """The Triton forward for the forward op's arguments ``args`` (without keep): the chunk capped, the kernels of
    a configuration's first eager CUDA call compiled ahead, and direct launches (wrap False) from a launch plan
    where one is held (see EAGER_PLANS)."""
    args = _with_cuda_chunk(args, 5)
    if not wrap and EAGER_PLANS:
        key = _plans.plan_key(("fwd", keep, _plan_settings()), args)
        return tuple(_PLANS.run(key, lambda *a: _fwd_unplanned(a, keep, wrap), args))
    return _fwd_unplanned(args, keep, wrap)


def _fwd_unplanned(args: tuple, keep: bool, wrap: bool) -> tuple:
    if args[0].is_cuda and _is_eager(args[0]):
        _compile_ahead(args + (keep,))
    return tuple(_fwd_triton(*args, wrap=wrap, keep=keep))


def _cuda_backward(args: tuple, pre_gate: torch.Tensor | None, states: tuple | None, wrap: bool) -> list:
    """The Triton backward for the backward op's arguments ``args`` (without what the forward kept), after the
    compiles the forward started for it; direct launches (wrap False) from a launch plan where one is held (see
    EAGER_PLANS)."""
    args = _with_cuda_chunk(args, 8)
    if _bwd_compiles and args[3].is_cuda and _is_eager(args[3]):  # none pending after a configuration's first call
        from . import ssd_triton as kt

        kt.wait(_bwd_compiles.pop(_config_key(args[3:]), []))
    if not wrap and EAGER_PLANS and _plan_backward(args[3]):
        flat = (*args, pre_gate, *(states or (None, None, None)))
        return _PLANS.run(_plans.plan_key(("bwd", _plan_settings()), flat), _bwd_flat, flat,
                          record=lambda *a: _bwd_flat(*a, one_stream=True))
    return _bwd_triton(*args, wrap=wrap, pre_gate=pre_gate, states=states)


def _bwd_flat(*args, one_stream: bool = False) -> list:
    """_bwd_triton(wrap=False) on _cuda_backward's flat arguments (ending with pre_gate and the three kept
    states)."""
    states = args[-3:] if args[-3] is not None else None
    return _bwd_triton(*args[:-4], wrap=False, pre_gate=args[-4], states=states, one_stream=one_stream)


# ----------------------------------------------------------------------------------------------------
# Eager launch plans
# ----------------------------------------------------------------------------------------------------

# Direct launches of the pipelines (eager calls through _EagerScan and _eager_forward, and the interpreter tests)
# replay a launch plan from a key's third call on: the same launches with this call's addresses, without the Python
# between them (_plans). Backwards are planned on one stream, and take the plan also where SIDE_STREAM "auto" would
# fork (the GPU busy), except while a CUDA graph is captured: unplanned, the fork's backward costs the host more
# than its overlap saves the GPU. False: every call runs the pipeline. Session 37, H100 (benchmarks/probes/
# ssd_plans.py, do_bench medians of three alternating rounds, plans against none): b8 l2048 h24 forward without
# grad 0.191 against 0.322 ms (the graph's 0.182: GPU-bound now), forward+backward 1.150 against 1.987; b1 l256 h4
# 0.125 against 0.256 and 1.118 against 1.574; b2 l8192 h80, GPU-bound either way, forward 0.599 against 0.599 and
# forward+backward 2.462 against 2.421 (one stream against the fork: the cost of planning a GPU-bound backward).
EAGER_PLANS = True
_PLANS = _plans.PlanCache()
_SETTING_TYPES = (bool, int, float, str, tuple, dict)
_setting_names: list | None = None


def _plan_settings() -> tuple:
    """The values of the module settings the pipelines read (the upper-case globals of this module and of
    ssd_triton, and FastLauncher's switch and Triton's debug knobs): part of every plan's key, so that a plan
    recorded under other settings is not replayed."""
    global _setting_names
    from . import _triton, ssd_triton as kt

    if _setting_names is None:
        _setting_names = [(m, k) for m in (globals(), vars(kt)) for k, v in m.items()
                          if k.lstrip("_")[:1].isupper() and k.lstrip("_").isupper() and type(v) in _SETTING_TYPES]
    from triton import knobs

    return (_triton.FAST_LAUNCH, knobs.runtime.debug, knobs.compilation.instrumentation_mode,
            *[tuple(v.items()) if type(v) is dict else v for v in (m[k] for m, k in _setting_names)])


def _plan_backward(x: torch.Tensor) -> bool:
    """Whether an eager backward on ``x`` takes a plan (see EAGER_PLANS): not where SIDE_STREAM forces the fork,
    nor while a CUDA graph is captured (the replay then takes the GPU's time, which the fork shortens)."""
    if SIDE_STREAM is True:
        return False
    return not (x.is_cuda and torch.cuda.is_current_stream_capturing())


def _setup_context(ctx, inputs, output):
    _save_for_backward(ctx, inputs, output, inputs[0].device.type == "cuda")


def _save_for_backward(ctx, inputs, output, triton_path: bool) -> None:
    (x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, dt_softplus, dt_min,
     dt_max, keep) = inputs
    ctx.mark_non_differentiable(*output[3:])
    ctx.set_materialize_grads(False)  # no zero-filled gradients for unused outputs (pre_gate is x's size)
    # Where the backward will take the CUDA path, what the forward kept.
    kept = _kept(output, z) if keep and triton_path else dict(pre_gate=None, states=None)
    ctx.save_for_backward(x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, kept["pre_gate"],
                          *(kept["states"] or (None, None, None)))
    ctx.chunk_size, ctx.dt_softplus, ctx.dt_min, ctx.dt_max = chunk_size, dt_softplus, dt_min, dt_max


def _backward(ctx, dout, dfinal, dvarlen, *_kept_grads):
    return _input_grads(ctx, dout, dfinal, dvarlen, torch.ops.mamba_compile.ssd_chunk_scan_bwd)


def _input_grads(ctx, dout, dfinal, dvarlen, bwd) -> tuple:
    """The forward's 16 input gradients from ``bwd``, which takes the backward op's arguments."""
    x, dt, A, B, C, D, z, dt_bias, initial_states, seq_idx, cu_seqlens, *kept = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(x)
    if dvarlen is not None and cu_seqlens is None:
        dvarlen = None
    grads = bwd(dout, dfinal, dvarlen, x, dt, A, B, C, ctx.chunk_size, D, z, dt_bias, initial_states, seq_idx,
                cu_seqlens, ctx.dt_softplus, ctx.dt_min, ctx.dt_max, *kept)
    dx, ddt, dA, dB, dC, dD, dz, ddt_bias, dinit = grads
    present = lambda g, t: g if t is not None else None  # noqa: E731
    return (dx, ddt, dA, dB, dC, None, present(dD, D), present(dz, z), present(ddt_bias, dt_bias),
            present(dinit, initial_states), None, None, None, None, None, None)


ssd_chunk_scan_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------------
# Eager calls: the Triton pipeline without the custom op's dispatch
# ----------------------------------------------------------------------------------------------------

# _plain_eager(*tensors): whether a call may take _EagerScan (see _eager.plain_eager); a module global, so that tests
# and probes can force either path.
_plain_eager = plain_eager


class _EagerScan(torch.autograd.Function):
    """ssd_chunk_scan_fwd's CUDA path as an autograd.Function, for plain eager calls (_plain_eager): the same
    kernels, launched directly (wrap=False), the same saved tensors and the same backward pipeline, without the
    dispatch of the two custom ops and of torch's autograd wrapper around them. H100 host, torch 2.11, b8 l2048
    h24 (benchmarks/probes/ssd_host.py --pieces, session 25, two rounds, ms per eager call): forward without grad
    0.37 / 0.61 against 0.52 / 0.67 through the ops, forward with grad 0.54 / 0.62 against 0.97 / 1.06,
    forward+backward 2.70 / 2.78 against 3.42 / 3.04. Its inputs are the forward op's, in its order; it returns
    the op's seven outputs. The interpreter tests drive the pipelines through it on CPU tensors."""

    @staticmethod
    def forward(ctx, *inputs):
        output = _cuda_forward(inputs[:-1], inputs[-1], wrap=False)
        _save_for_backward(ctx, inputs, output, True)
        return output

    @staticmethod
    def backward(ctx, dout, dfinal, dvarlen, *_kept_grads):
        return _input_grads(ctx, dout, dfinal, dvarlen, _eager_backward)


def _eager_forward(args: tuple) -> tuple:
    """A plain eager call's forward (args: the forward op's, ending with keep): through _EagerScan when a backward is
    to come, else the pipeline alone, without the autograd.Function that nothing would use (session 36, CPU,
    launches recorded instead of made: 78 against 111 us a forward, medians of nine rounds; not timed on the GPU)."""
    if args[-1]:
        return _EagerScan.apply(*args)
    return _cuda_forward(args[:-1], False, wrap=False)


def _eager_backward(*args) -> list:
    """ssd_chunk_scan_bwd's CUDA path, without its dispatch (see _EagerScan); args end with the kept pre_gate and
    (dt_proc, dA_cumsum, chunk_states), each None where not kept."""
    pre_gate, *states = args[-4:]
    return _cuda_backward(args[:-4], pre_gate, tuple(states) if states[0] is not None else None, wrap=False)
