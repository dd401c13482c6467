"""RMSNorm / LayerNorm with a fused residual add, and Mamba-2's gated RMSNorm.

    add_norm:       r = x + residual;  out = (r - mean(r)) * rsqrt(var(r) + eps) * weight + bias   (LayerNorm)
                                       out = r * rsqrt(mean(r^2) + eps) * weight + bias          (RMSNorm)
    rms_norm_gated: u = x * silu(z) if not norm_before_gate else x;
                    out = u * rsqrt(mean_group(u^2) + eps) * weight, times silu(z) if norm_before_gate

Shapes (statistics over the last dim, or over groups of it)::

    x, residual, z, out: (..., hidden)          activations: fp32, fp16 or bf16 (may differ from weight's); fp64 on CPU
    weight, bias: (hidden,)
    r (prenorm=True): (..., hidden)            fp32 if residual_in_fp32 else x's dtype
    group_size: a divisor of hidden (default hidden); ngroups = hidden // group_size

Statistics and all math are fp32; the norm reads the fp32 sum x + residual (before r is rounded to
its dtype). ``out`` has x's dtype. Gradients flow to x, weight, bias, residual and z, including a
gradient arriving through the returned r (prenorm). ``hidden`` (resp. ``group_size``) is at most
``MAX_HIDDEN``: the CUDA kernels hold one whole row (group) in registers.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ._checks import FLOAT_DTYPES, check_same_device, check_tensor
from ._eager import plain_eager

MAX_HIDDEN = 16384

_EMPTY = (0,)


def _empty(like: torch.Tensor) -> torch.Tensor:
    return like.new_empty(_EMPTY, dtype=torch.float32)


def _acc_dtype(x: torch.Tensor) -> torch.dtype:
    """fp32, or fp64 for fp64 inputs (CPU only: lets gradcheck run on the real op)."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dtypes(x: torch.Tensor) -> tuple:
    return FLOAT_DTYPES + (torch.float64,) if x.device.type == "cpu" else FLOAT_DTYPES


# ---------------------------------------------------------------------------------------------
# add_norm: RMSNorm / LayerNorm with fused residual add
# ---------------------------------------------------------------------------------------------


def _check_add_norm(x, weight, bias, residual, eps) -> None:
    check_tensor("x", x, dtypes=None)
    check_tensor("x", x, dtypes=_dtypes(x))
    if x.dim() < 1:
        raise ValueError("x must have shape (..., hidden), got a 0-dim tensor")
    hidden = x.shape[-1]
    check_tensor("weight", weight, dtypes=_dtypes(x), shape=(hidden,), letters="(hidden,)")
    check_tensor("bias", bias, dtypes=_dtypes(x), shape=(hidden,), letters="(hidden,)", optional=True)
    if residual is not None:
        check_tensor("residual", residual, dtypes=_dtypes(x))
        if residual.shape != x.shape:
            raise ValueError(
                f"residual must have x's shape (..., hidden) = {tuple(x.shape)}, got {tuple(residual.shape)}"
            )
    if hidden > MAX_HIDDEN:
        raise ValueError(f"x has hidden = {hidden}; at most {MAX_HIDDEN} is supported")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    check_same_device(x=x, weight=weight, bias=bias, residual=residual)


def _default_eps(eps: float | None) -> float:
    """eps, or the default 1e-6 for None. The default is a literal here, not in the public signatures: under
    torch.compile(dynamic=True) Dynamo turns a float it reads from a function's ``__defaults__`` (or any other
    Python float with a source: a global, an argument, a module attribute) into a symbolic float, which cannot
    reach the op's ``float`` argument, so it restarts the analysis of the whole frame once to specialise it
    (the backend runs twice; about twice the compile time). A literal is a constant: no restart."""
    return 1e-6 if eps is None else eps


def _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms):
    eps = _default_eps(eps)
    _check_add_norm(x, weight, bias, residual, eps)
    args = (x, weight, bias, residual, eps, is_rms, prenorm, residual_in_fp32)
    if x.device.type == "cuda" and _plain_eager(x, weight, bias, residual):
        out, r, _, _ = _EagerAddNorm.apply(*args)
    else:
        out, r, _, _ = torch.ops.mamba_compile.add_norm(*args)
    return (out, r) if prenorm else out


def rms_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """RMSNorm of r = x + residual; returns out, or (out, r) with ``prenorm``. ``eps=None`` means 1e-6."""
    return _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms=True)


def layer_norm(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    residual: torch.Tensor | None = None,
    eps: float | None = None,
    prenorm: bool = False,
    residual_in_fp32: bool = False,
):
    """LayerNorm of r = x + residual; returns out, or (out, r) with ``prenorm``. ``eps=None`` means 1e-6."""
    return _add_norm(x, weight, bias, residual, eps, prenorm, residual_in_fp32, is_rms=False)


def _add_norm_cpu(x, weight, bias, residual, eps, is_rms):
    """(out fp32, s = x + residual in fp32, mean, rstd) over the last dim."""
    acc = _acc_dtype(x)
    s = x.to(acc) if residual is None else x.to(acc) + residual.to(acc)
    if is_rms:
        mean = None
        rstd = torch.rsqrt(s.square().mean(-1) + eps)
        xhat = s * rstd[..., None]
    else:
        mean = s.mean(-1)
        centred = s - mean[..., None]
        rstd = torch.rsqrt(centred.square().mean(-1) + eps)
        xhat = centred * rstd[..., None]
    out = xhat * weight.to(acc)
    if bias is not None:
        out = out + bias.to(acc)
    return out, s, mean, rstd


@torch.library.triton_op("mamba_compile::add_norm", mutates_args=())
def _add_norm_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    eps: float,
    is_rms: bool,
    prenorm: bool,
    residual_in_fp32: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (out, r, mean, rstd); r is empty unless prenorm, mean is empty for RMSNorm."""
    _check_add_norm(x, weight, bias, residual, eps)
    r_dtype = torch.float32 if residual_in_fp32 else x.dtype
    if x.device.type == "cuda":
        from . import norms_triton

        return norms_triton.add_norm_fwd(
            x, weight, bias, residual, eps, is_rms, prenorm, r_dtype, wrap=True
        )
    out, s, mean, rstd = _add_norm_cpu(x, weight, bias, residual, eps, is_rms)
    r = s.to(r_dtype, copy=True) if prenorm else _empty(x)  # copy: s may be x itself
    return out.to(x.dtype), r, _empty(x) if mean is None else mean, rstd


@torch.library.triton_op("mamba_compile::add_norm_bwd", mutates_args=())
def _add_norm_bwd_op(
    dout: torch.Tensor,
    dr: torch.Tensor | None,
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    residual: torch.Tensor | None,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    is_rms: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dbias, dresidual); dbias / dresidual are empty without bias / residual."""
    if x.device.type == "cuda":
        from . import norms_triton

        return norms_triton.add_norm_bwd(
            dout, dr, x, weight, bias, residual, mean, rstd, is_rms, wrap=True
        )
    acc = _acc_dtype(x)
    s = x.to(acc) if residual is None else x.to(acc) + residual.to(acc)
    xhat = (s if is_rms else s - mean[..., None]) * rstd[..., None]
    dout = dout.to(acc)
    g = dout * weight.to(acc)
    ds = g - xhat * (g * xhat).mean(-1, keepdim=True)
    if not is_rms:
        ds = ds - g.mean(-1, keepdim=True)
    ds = ds * rstd[..., None]
    if dr is not None:
        ds = ds + dr.to(acc)
    hidden = x.shape[-1]
    dweight = (dout * xhat).reshape(-1, hidden).sum(0).to(weight.dtype)
    dbias = _empty(x) if bias is None else dout.reshape(-1, hidden).sum(0).to(bias.dtype)
    # copy: dx and dresidual must not alias each other when their dtypes match
    dresidual = _empty(x) if residual is None else ds.to(residual.dtype, copy=True)
    return ds.to(x.dtype), dweight, dbias, dresidual


def _add_norm_setup_context(ctx, inputs, output):
    x, weight, bias, residual, eps, is_rms, prenorm, residual_in_fp32 = inputs
    _, _, mean, rstd = output
    ctx.save_for_backward(x, weight, bias, residual, mean, rstd)
    ctx.is_rms = is_rms
    ctx.prenorm = prenorm


def _add_norm_backward(ctx, dout, dr, dmean, drstd):
    return _add_norm_grads(ctx, dout, dr, torch.ops.mamba_compile.add_norm_bwd)


def _add_norm_grads(ctx, dout, dr, bwd) -> tuple:
    """The forward op's 8 input gradients from ``bwd``, which takes the backward op's arguments."""
    x, weight, bias, residual, mean, rstd = ctx.saved_tensors
    dx, dweight, dbias, dresidual = bwd(
        dout, dr if ctx.prenorm else None, x, weight, bias, residual, mean, rstd, ctx.is_rms
    )
    return (
        dx,
        dweight,
        None if bias is None else dbias,
        None if residual is None else dresidual,
        None, None, None, None,
    )


_add_norm_op.register_autograd(_add_norm_backward, setup_context=_add_norm_setup_context)


# ---------------------------------------------------------------------------------------------
# rms_norm_gated: Mamba-2's gated, grouped RMSNorm
# ---------------------------------------------------------------------------------------------


def _check_gated(x, weight, z, eps, group_size) -> None:
    check_tensor("x", x, dtypes=None)
    check_tensor("x", x, dtypes=_dtypes(x))
    if x.dim() < 1:
        raise ValueError("x must have shape (..., hidden), got a 0-dim tensor")
    hidden = x.shape[-1]
    check_tensor("weight", weight, dtypes=_dtypes(x), shape=(hidden,), letters="(hidden,)")
    if z is not None:
        check_tensor("z", z, dtypes=_dtypes(x))
        if z.shape != x.shape:
            raise ValueError(f"z must have x's shape (..., hidden) = {tuple(x.shape)}, got {tuple(z.shape)}")
    if not isinstance(group_size, (int, torch.SymInt)) or group_size <= 0 or hidden % group_size != 0:
        raise ValueError(f"group_size must be a positive divisor of hidden = {hidden}, got {group_size!r}")
    if group_size > MAX_HIDDEN:
        raise ValueError(f"group_size is {group_size}; at most {MAX_HIDDEN} is supported")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    check_same_device(x=x, weight=weight, z=z)


def rms_norm_gated(
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None = None,
    eps: float | None = None,
    group_size: int | None = None,
    norm_before_gate: bool = True,
) -> torch.Tensor:
    """Gated RMSNorm over groups of ``group_size`` channels (default: all of hidden); ``eps=None`` means 1e-6."""
    eps = _default_eps(eps)
    if isinstance(x, torch.Tensor) and x.dim() >= 1 and group_size is None:
        group_size = x.shape[-1]
    _check_gated(x, weight, z, eps, group_size)
    args = (x, weight, z, eps, group_size, norm_before_gate)
    if x.device.type == "cuda" and _plain_eager(x, weight, z):
        out, _ = _EagerGated.apply(*args)
    else:
        out, _ = torch.ops.mamba_compile.rms_norm_gated(*args)
    return out


def _grouped(t: torch.Tensor, group_size: int) -> torch.Tensor:
    """(..., hidden) -> (..., ngroups, group_size)."""
    return t.unflatten(-1, (t.shape[-1] // group_size, group_size))


@torch.library.triton_op("mamba_compile::rms_norm_gated", mutates_args=())
def _rms_norm_gated_op(
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None,
    eps: float,
    group_size: int,
    norm_before_gate: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (out, rstd), rstd: (..., ngroups) fp32."""
    _check_gated(x, weight, z, eps, group_size)
    if x.device.type == "cuda":
        from . import norms_triton

        return norms_triton.rms_norm_gated_fwd(x, weight, z, eps, group_size, norm_before_gate, wrap=True)
    acc = _acc_dtype(x)
    u = _grouped(x.to(acc), group_size)
    if z is not None and not norm_before_gate:
        u = u * F.silu(_grouped(z.to(acc), group_size))
    rstd = torch.rsqrt(u.square().mean(-1) + eps)
    out = (u * rstd[..., None]).flatten(-2) * weight.to(acc)
    if z is not None and norm_before_gate:
        out = out * F.silu(z.to(acc))
    return out.to(x.dtype), rstd


@torch.library.triton_op("mamba_compile::rms_norm_gated_bwd", mutates_args=())
def _rms_norm_gated_bwd_op(
    dout: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    z: torch.Tensor | None,
    rstd: torch.Tensor,
    group_size: int,
    norm_before_gate: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (dx, dweight, dz); dz is empty without z."""
    if x.device.type == "cuda":
        from . import norms_triton

        return norms_triton.rms_norm_gated_bwd(
            dout, x, weight, z, rstd, group_size, norm_before_gate, wrap=True
        )
    hidden = x.shape[-1]
    acc = _acc_dtype(x)
    dout = dout.to(acc)
    x32 = x.to(acc)
    if z is not None:
        z32 = z.to(acc)
        sig = torch.sigmoid(z32)
        silu_z = z32 * sig
        dsilu_z = sig * (1 + z32 * (1 - sig))
    u = x32 * silu_z if z is not None and not norm_before_gate else x32
    xhat = (_grouped(u, group_size) * rstd[..., None]).flatten(-2)
    y = xhat * weight.to(acc)
    dz = _empty(x)
    if z is not None and norm_before_gate:
        dz = (dout * y * dsilu_z).to(z.dtype)
        dout = dout * silu_z
    dweight = (dout * xhat).reshape(-1, hidden).sum(0).to(weight.dtype)
    g = _grouped(dout * weight.to(acc), group_size)
    xg = _grouped(xhat, group_size)
    du = ((g - xg * (g * xg).mean(-1, keepdim=True)) * rstd[..., None]).flatten(-2)
    if z is not None and not norm_before_gate:
        dz = (du * x32 * dsilu_z).to(z.dtype)
        du = du * silu_z
    return du.to(x.dtype), dweight, dz


def _gated_setup_context(ctx, inputs, output):
    x, weight, z, eps, group_size, norm_before_gate = inputs
    _, rstd = output
    ctx.save_for_backward(x, weight, z, rstd)
    ctx.group_size = group_size
    ctx.norm_before_gate = norm_before_gate


def _gated_backward(ctx, dout, drstd):
    return _gated_grads(ctx, dout, torch.ops.mamba_compile.rms_norm_gated_bwd)


def _gated_grads(ctx, dout, bwd) -> tuple:
    """The forward op's 6 input gradients from ``bwd``, which takes the backward op's arguments."""
    x, weight, z, rstd = ctx.saved_tensors
    dx, dweight, dz = bwd(dout, x, weight, z, rstd, ctx.group_size, ctx.norm_before_gate)
    return dx, dweight, None if z is None else dz, None, None, None


_rms_norm_gated_op.register_autograd(_gated_backward, setup_context=_gated_setup_context)


# ---------------------------------------------------------------------------------------------
# Eager calls: the Triton kernels without the custom ops' dispatch
# ---------------------------------------------------------------------------------------------

# _plain_eager(*tensors): whether a public call may take the autograd.Functions below (see _eager.plain_eager); a
# module global, so that tests and probes can force either path.
_plain_eager = plain_eager


class _EagerAddNorm(torch.autograd.Function):
    """The add_norm op's CUDA path for plain eager calls: the same kernels, launched directly (wrap=False), the same
    outputs, saved tensors and backward, without the dispatch of the two custom ops. Its inputs and outputs are the
    forward op's. The interpreter tests drive it on CPU tensors."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual, eps, is_rms, prenorm, residual_in_fp32):
        from . import norms_triton

        r_dtype = torch.float32 if residual_in_fp32 else x.dtype
        out, r, mean, rstd = norms_triton.add_norm_fwd(x, weight, bias, residual, eps, is_rms, prenorm, r_dtype,
                                                       wrap=False)
        ctx.mark_non_differentiable(mean, rstd)
        _add_norm_setup_context(ctx, (x, weight, bias, residual, eps, is_rms, prenorm, residual_in_fp32),
                                (out, r, mean, rstd))
        return out, r, mean, rstd

    @staticmethod
    def backward(ctx, dout, dr, dmean, drstd):
        from . import norms_triton

        return _add_norm_grads(ctx, dout, dr, functools.partial(norms_triton.add_norm_bwd, wrap=False))


class _EagerGated(torch.autograd.Function):
    """The rms_norm_gated op's CUDA path for plain eager calls, as _EagerAddNorm is add_norm's."""

    @staticmethod
    def forward(ctx, x, weight, z, eps, group_size, norm_before_gate):
        from . import norms_triton

        out, rstd = norms_triton.rms_norm_gated_fwd(x, weight, z, eps, group_size, norm_before_gate, wrap=False)
        ctx.mark_non_differentiable(rstd)
        _gated_setup_context(ctx, (x, weight, z, eps, group_size, norm_before_gate), (out, rstd))
        return out, rstd

    @staticmethod
    def backward(ctx, dout, drstd):
        from . import norms_triton

        return _gated_grads(ctx, dout, functools.partial(norms_triton.rms_norm_gated_bwd, wrap=False))
