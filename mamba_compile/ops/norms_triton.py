"""Triton kernels for the norms: add_norm (RMSNorm / LayerNorm with residual add) and gated RMSNorm.

    add_norm: r = x + residual;  out = norm(r) * weight + bias
    gated:    u = x (* silu(z));  out = u * rsqrt(mean_group(u^2) + eps) * weight (* silu(z))

Forward: one program per row (per row and group for the gated norm); the row is held whole in
registers (BLOCK_N = next power of two >= hidden), statistics in fp32. Backward: each program
walks ROWS_PER_PROGRAM rows, writes dx (and dresidual / dz) per row and keeps its dweight / dbias
partial sums in registers; the partials, (programs, hidden) fp32, are summed afterwards.
Rows are addressed through their row stride; the last dim must be contiguous (the launchers
make it so).
"""

from __future__ import annotations

import torch

from ._triton import cdiv, launcher, tl, triton

ROWS_PER_PROGRAM = 16


@triton.jit
def _add_norm_fwd_kernel(
    X, RES, W, B, OUT, R, MEAN, RSTD,
    x_row, res_row, out_row, r_row, N, eps,
    IS_RMS: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    s = tl.load(X + row * x_row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RES:
        s += tl.load(RES + row * res_row + cols, mask=mask, other=0.0).to(tl.float32)
    if STORE_R:
        tl.store(R + row * r_row + cols, s.to(R.dtype.element_ty), mask=mask)
    if IS_RMS:
        xc = s
    else:
        mean = tl.sum(s, axis=0) / N
        tl.store(MEAN + row, mean)
        xc = tl.where(mask, s - mean, 0.0)
    rstd = tl.rsqrt(tl.sum(xc * xc, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    y = xc * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y += tl.load(B + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(OUT + row * out_row + cols, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _add_norm_bwd_kernel(
    DOUT, DR, X, RES, W, MEAN, RSTD, DX, DRES, DW, DB,
    dout_row, dr_row, x_row, res_row, dx_row, dres_row, M, N,
    IS_RMS: tl.constexpr, HAS_DR: tl.constexpr, HAS_RES: tl.constexpr, HAS_BIAS: tl.constexpr,
    ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK_N)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in range(ROWS):
        row = pid.to(tl.int64) * ROWS + i
        # rows past M: every load masked to 0, so they add nothing; every store masked off
        rmask = tl.where(row < M, mask, False)
        s = tl.load(X + row * x_row + cols, mask=rmask, other=0.0).to(tl.float32)
        if HAS_RES:
            s += tl.load(RES + row * res_row + cols, mask=rmask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row, mask=row < M, other=0.0)
        if IS_RMS:
            xhat = s * rstd
        else:
            xhat = tl.where(rmask, (s - tl.load(MEAN + row, mask=row < M, other=0.0)) * rstd, 0.0)
        dy = tl.load(DOUT + row * dout_row + cols, mask=rmask, other=0.0).to(tl.float32)
        dw += dy * xhat
        if HAS_BIAS:
            db += dy
        g = dy * w
        ds = g - xhat * (tl.sum(g * xhat, axis=0) / N)
        if not IS_RMS:
            ds -= tl.sum(g, axis=0) / N
        ds *= rstd
        if HAS_DR:
            ds += tl.load(DR + row * dr_row + cols, mask=rmask, other=0.0).to(tl.float32)
        tl.store(DX + row * dx_row + cols, ds.to(DX.dtype.element_ty), mask=rmask)
        if HAS_RES:
            tl.store(DRES + row * dres_row + cols, ds.to(DRES.dtype.element_ty), mask=rmask)
    tl.store(DW + pid.to(tl.int64) * N + cols, dw, mask=mask)
    if HAS_BIAS:
        tl.store(DB + pid.to(tl.int64) * N + cols, db, mask=mask)


@triton.jit
def _rms_norm_gated_fwd_kernel(
    X, Z, W, OUT, RSTD,
    x_row, z_row, out_row, G, ngroups, eps,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    grp = tl.program_id(1)
    cols = grp * G + tl.arange(0, BLOCK_N)
    mask = tl.arange(0, BLOCK_N) < G
    u = tl.load(X + row * x_row + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(Z + row * z_row + cols, mask=mask, other=0.0).to(tl.float32)
        silu_z = z * tl.sigmoid(z)
        if not NORM_BEFORE_GATE:
            u *= silu_z
    rstd = tl.rsqrt(tl.sum(u * u, axis=0) / G + eps)
    tl.store(RSTD + row * ngroups + grp, rstd)
    y = u * rstd * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_Z:
        if NORM_BEFORE_GATE:
            y *= silu_z
    tl.store(OUT + row * out_row + cols, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _rms_norm_gated_bwd_kernel(
    DOUT, X, Z, W, RSTD, DX, DZ, DW,
    dout_row, x_row, z_row, dx_row, dz_row, M, N, G, ngroups,
    HAS_Z: tl.constexpr, NORM_BEFORE_GATE: tl.constexpr, ROWS: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    grp = tl.program_id(1)
    cols = grp * G + tl.arange(0, BLOCK_N)
    mask = tl.arange(0, BLOCK_N) < G
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK_N], dtype=tl.float32)
    for i in range(ROWS):
        row = pid.to(tl.int64) * ROWS + i
        rmask = tl.where(row < M, mask, False)
        x = tl.load(X + row * x_row + cols, mask=rmask, other=0.0).to(tl.float32)
        rstd = tl.load(RSTD + row * ngroups + grp, mask=row < M, other=0.0)
        dy = tl.load(DOUT + row * dout_row + cols, mask=rmask, other=0.0).to(tl.float32)
        u = x
        if HAS_Z:
            z = tl.load(Z + row * z_row + cols, mask=rmask, other=0.0).to(tl.float32)
            sig = tl.sigmoid(z)
            silu_z = z * sig
            dsilu_z = sig * (1.0 + z * (1.0 - sig))
            if not NORM_BEFORE_GATE:
                u = x * silu_z
        xhat = u * rstd
        if HAS_Z:
            if NORM_BEFORE_GATE:
                tl.store(DZ + row * dz_row + cols, (dy * xhat * w * dsilu_z).to(DZ.dtype.element_ty), mask=rmask)
                dy *= silu_z
        dw += dy * xhat
        g = dy * w
        du = (g - xhat * (tl.sum(g * xhat, axis=0) / G)) * rstd
        if HAS_Z:
            if not NORM_BEFORE_GATE:
                tl.store(DZ + row * dz_row + cols, (du * x * dsilu_z).to(DZ.dtype.element_ty), mask=rmask)
                du *= silu_z
        tl.store(DX + row * dx_row + cols, du.to(DX.dtype.element_ty), mask=rmask)
    tl.store(DW + pid.to(tl.int64) * N + cols, dw, mask=mask)


def _rows(t: torch.Tensor | None) -> torch.Tensor | None:
    """(..., hidden) -> (rows, hidden) with a unit column stride (a copy only when needed)."""
    if t is None:
        return None
    t = t.reshape(-1, t.shape[-1])
    return t if t.stride(-1) == 1 else t.contiguous()


def _opt(t: torch.Tensor | None, placeholder: torch.Tensor) -> torch.Tensor:
    """An absent optional tensor is passed as ``placeholder`` (never read: its HAS_* flag is off),
    so no launch path sees a None pointer."""
    return placeholder if t is None else t


def next_power_of_2(n) -> int:
    """Smallest power of two >= n. A loop of comparisons, not bit tricks: under tracing n is a SymInt,
    and this guards only on the range (p/2, p] that n lies in, without specialising on n itself."""
    p = 1
    while p < n:
        p *= 2
    return p


def _programs(rows, rows_per_program: int):
    """Programs of a backward kernel, at least two (a spare one finds all its rows masked and writes zero
    partials): with a symbolic ``rows``, a count that could be 1 would make tracing specialise on it
    (a partials buffer with one row has a free stride), and a longer input would recompile."""
    return torch.sym_max(cdiv(rows, rows_per_program), 2)


def _block_n(n) -> tuple[int, int]:
    """(BLOCK_N, num_warps) for a row of ``n`` values held in registers."""
    block_n = next_power_of_2(n)
    return block_n, min(max(block_n // 256, 1), 8)


def add_norm_fwd(x, weight, bias, residual, eps, is_rms, prenorm, r_dtype, *, wrap: bool):
    """Returns (out, r, mean, rstd) as the op does; r is empty unless ``prenorm``, mean empty for RMSNorm."""
    hidden = x.shape[-1]
    x2, res2 = _rows(x), _rows(residual)
    weight = weight if weight.stride(0) == 1 else weight.contiguous()
    bias = bias if bias is None or bias.stride(0) == 1 else bias.contiguous()
    rows = x2.shape[0]
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    r = torch.empty(x.shape if prenorm else (0,), device=x.device, dtype=r_dtype if prenorm else torch.float32)
    mean = torch.empty(x.shape[:-1] if not is_rms else (0,), device=x.device, dtype=torch.float32)
    rstd = torch.empty(x.shape[:-1], device=x.device, dtype=torch.float32)
    BLOCK_N, num_warps = _block_n(hidden)
    launcher(_add_norm_fwd_kernel, wrap)[(rows,)](
        x2, _opt(res2, x2), weight, _opt(bias, weight), out, r, mean, rstd,
        x2.stride(0), 0 if res2 is None else res2.stride(0), hidden, hidden, hidden, eps,
        IS_RMS=is_rms, HAS_RES=residual is not None, HAS_BIAS=bias is not None, STORE_R=prenorm,
        BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    return out, r, mean, rstd


def add_norm_bwd(dout, dr, x, weight, bias, residual, mean, rstd, is_rms, *, wrap: bool,
                 rows_per_program: int = ROWS_PER_PROGRAM):
    """Returns (dx, dweight, dbias, dresidual); dbias / dresidual are empty without bias / residual."""
    hidden = x.shape[-1]
    dout2, dr2, x2, res2 = _rows(dout), _rows(dr), _rows(x), _rows(residual)
    weight = weight if weight.stride(0) == 1 else weight.contiguous()
    rows = x2.shape[0]
    programs = _programs(rows, rows_per_program)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dres = torch.empty(x.shape if residual is not None else (0,), device=x.device,
                       dtype=residual.dtype if residual is not None else torch.float32)
    dw = torch.empty((programs, hidden), device=x.device, dtype=torch.float32)
    db = torch.empty((programs, hidden) if bias is not None else (0,), device=x.device, dtype=torch.float32)
    BLOCK_N, num_warps = _block_n(hidden)
    launcher(_add_norm_bwd_kernel, wrap)[(programs,)](
        dout2, _opt(dr2, dout2), x2, _opt(res2, x2), weight, mean, rstd, dx, dres, dw, db,
        dout2.stride(0), 0 if dr2 is None else dr2.stride(0), x2.stride(0),
        0 if res2 is None else res2.stride(0), hidden, hidden, rows, hidden,
        IS_RMS=is_rms, HAS_DR=dr is not None, HAS_RES=residual is not None, HAS_BIAS=bias is not None,
        ROWS=rows_per_program, BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    dweight = dw.sum(0).to(weight.dtype)
    dbias = db.sum(0).to(bias.dtype) if bias is not None else db
    return dx, dweight, dbias, dres


def rms_norm_gated_fwd(x, weight, z, eps, group_size, norm_before_gate, *, wrap: bool):
    """Returns (out, rstd), rstd: (..., ngroups) fp32."""
    hidden = x.shape[-1]
    ngroups = hidden // group_size
    x2, z2 = _rows(x), _rows(z)
    weight = weight if weight.stride(0) == 1 else weight.contiguous()
    rows = x2.shape[0]
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    rstd = torch.empty((*x.shape[:-1], ngroups), device=x.device, dtype=torch.float32)
    BLOCK_N, num_warps = _block_n(group_size)
    launcher(_rms_norm_gated_fwd_kernel, wrap)[(rows, ngroups)](
        x2, _opt(z2, x2), weight, out, rstd,
        x2.stride(0), 0 if z2 is None else z2.stride(0), hidden, group_size, ngroups, eps,
        HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    return out, rstd


def rms_norm_gated_bwd(dout, x, weight, z, rstd, group_size, norm_before_gate, *, wrap: bool,
                       rows_per_program: int = ROWS_PER_PROGRAM):
    """Returns (dx, dweight, dz); dz is empty without z."""
    hidden = x.shape[-1]
    ngroups = hidden // group_size
    dout2, x2, z2 = _rows(dout), _rows(x), _rows(z)
    weight = weight if weight.stride(0) == 1 else weight.contiguous()
    rows = x2.shape[0]
    programs = _programs(rows, rows_per_program)
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    dz = torch.empty(x.shape if z is not None else (0,), device=x.device,
                     dtype=z.dtype if z is not None else torch.float32)
    dw = torch.empty((programs, hidden), device=x.device, dtype=torch.float32)
    BLOCK_N, num_warps = _block_n(group_size)
    launcher(_rms_norm_gated_bwd_kernel, wrap)[(programs, ngroups)](
        dout2, x2, _opt(z2, x2), weight, rstd, dx, dz, dw,
        dout2.stride(0), x2.stride(0), 0 if z2 is None else z2.stride(0), hidden, hidden,
        rows, hidden, group_size, ngroups,
        HAS_Z=z is not None, NORM_BEFORE_GATE=norm_before_gate, ROWS=rows_per_program,
        BLOCK_N=BLOCK_N, num_warps=num_warps,
    )
    return dx, dw.sum(0).to(weight.dtype), dz
