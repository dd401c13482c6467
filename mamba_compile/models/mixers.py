"""Sequence mixers: Mamba-1 (selective scan), Mamba-2 (SSD) and causal multi-head attention.

Mamba-1, per channel d:  h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t,   y_t = C_t h_t + D x_t,  out = y * silu(z)
Mamba-2, per head h:     same with a scalar A per head and B, C shared by the heads of a group.

Shapes: hidden_states (batch, seqlen, d_model); one decode token (batch, d_model).
Mamba-1: x, z, dt (batch, d_inner, seqlen); B, C (batch, d_state, seqlen); A_log (d_inner, d_state).
Mamba-2: x, z (batch, seqlen, nheads, headdim); dt (batch, seqlen, nheads); B, C (batch, seqlen, ngroups, d_state);
         A_log, dt_bias (nheads,); D (nheads,) or (nheads * headdim,) with D_has_hdim.
Parameter names follow the reference (mamba_ssm/modules/mamba_simple.py, mamba2.py, mha.py), so its
checkpoints load without renaming. Each mixer reads and writes its own layer of an InferenceCache.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import (
    add_matmul,
    add_matmul_,
    causal_conv1d,
    causal_conv1d_update,
    decode_in,
    decode_linear,
    decode_norm_in,
    mamba1_decode_in,
    mamba1_decode_ssm,
    mamba2_decode_ssm,
    mamba2_decode_ssm_gated,
    matmul_into_,
    rms_norm_gated,
    selective_scan,
    selective_state_update,
    ssd_chunk_scan,
)
from ..ops.mamba1_decode import gate_scale

# Mamba1Mixer.step through the two fused decode ops (add_norm, mamba1_decode_in, x_proj, mamba1_decode_ssm,
# out_proj: five launches a layer instead of about nine), and Mamba2Mixer.step likewise (add_norm, decode_in,
# mamba2_decode_ssm, rms_norm_gated, out_proj; the d_mlp > 0 gate as before). Read at call time, so a compiled
# step is guarded on it. 130M decode step on an H100 (benchmarks/probes/decode_fused.py, CUDA-graph replay):
# Mamba-1 b1 0.925 -> 0.521 ms, Mamba-2 b1 0.713 -> 0.490 ms.
FUSED_DECODE = True
# Mamba-1's x_proj and dt_proj as matmuls on (channels, batch * time) matrices (False: batched over (b, channels, l)).
CHANNEL_MAJOR_PROJ = True
# Mamba-2's sequence forward computes dt's columns of the in-projection as a second matmul (see Mamba2Mixer.forward).
SPLIT_DT_PROJ = True
# Mamba-1's sequence forward computes x and z as two matmuls on the halves of in_proj's weight instead of one on the
# whole: their gradients then reach the weight and the hidden states as two matmuls each, without first being
# concatenated into one (2 d_inner, b l) tensor (a 100 MB copy per layer and training step at the 130M shape).
SPLIT_IN_PROJ = True
# Mamba-2's likewise (with SPLIT_DT_PROJ): z0, x0, z as one matmul and xBC as another, so that the backward does not
# concatenate dz and the conv's dxBC into one (b, l, 3328) tensor before the weight and hidden-state gradients (the
# H100 profile of the 130M step shows that copy at 0.073 ms a layer). The graphed 130M training step on an H100
# (benchmarks/probes/train_ab.py --arch mamba2 --mamba2 xbc-joined xbc-split xbc-joined xbc-split --graph, fresh
# compiles): 64.78 and 64.73 ms split against 65.40 and 65.54 ms as one matmul.
SPLIT_XBC_PROJ = True
# Mamba-1's training forward (CHANNEL_MAJOR_PROJ and SPLIT_IN_PROJ, gradients on) through _InProjXZ and _XDtProj:
# autograd functions of plain matmuls (Dynamo traces both directions, so the compiler sees everything) whose backward
# sums the two gradients meeting at a tensor inside a matmul (cuBLAS with beta 1) instead of a matmul and then an
# Inductor add over the whole tensor. At the conv's output x: the scan's du and
# x_proj's input gradient, (d_inner, b l); at the hidden states: the two in-projection halves' gradients, (b l,
# d_model). In the fifteenth session's profile of the 130M step (H100) those adds were
# triton_poi_fused_add_empty_like_squeeze_transpose_view (45 us a layer, 1.09 ms a step) and
# triton_poi_fused_add_permute_t_view (23 us, 0.52 ms). Inductor turns the first into an addmm when it compiles a
# block alone (benchmarks/probes/block_code.py), but not in the whole model's step. The two are separate switches:
# ACCUMULATE_IN_PROJ_GRADS (_InProjXZ, the hidden states) and ACCUMULATE_X_PROJ_GRADS (_XDtProj, x). Both on, the
# graphed 130M step on an H100 (train_ab.py --mamba1 new proj-acc new proj-acc --graph, session 18, one call) took
# 75.31 and 75.15 ms against 75.16 and 74.52 for the defaults. cuBLAS's addmm for x's sum turned out slower than its
# mm and an add (82.3 against 76.5 us at (1536, 16384), k 80), so x's now goes through ops.add_matmul (44.5 us);
# with it, x's alone (proj-acc-x, one call) 74.06 and 74.14 ms against 74.70 and 74.15: within the spread of the
# defaults' repeats (73.8-74.8 over the session's calls, the first variant of a process the slowest). Session 19
# (train_ab --discard-first, the first variant run once more and dropped): x's alone 73.21 and 73.35 ms against 74.50
# and 74.64 for both off (quartiles 73.1-73.5 against 74.3-74.7), so it is on. The profiled step's kernels took
# 72.69 ms against 73.04 (the add kernel, 1.10 ms, and a GEMM, 0.52, gone; add_matmul 1.00). The in-projection's sum
# then went in place (ops.add_matmul_: torch.addmm had copied the first product into a fresh output first, 0.35 ms a
# step of device-to-device copies): both on 73.53 and 73.90 ms against 73.92 and 73.43 for x's alone, on another
# machine in one call; on a third, 72.96 and 72.84 against 74.06 and 73.37 for x's alone. Its profiled step: 47
# launches fewer, the add (0.52 ms), the weight halves' casts and the weight gradient's assembly (0.43) gone, the
# GEMM with beta 1 0.11 ms slower than the plain one: about 0.55 ms less kernel time. On.
ACCUMULATE_IN_PROJ_GRADS = True
ACCUMULATE_X_PROJ_GRADS = True
# Mamba-1's training forward under autocast: in_proj, x_proj, dt_proj (through _InProjXZ and _XDtProj) and out_proj
# (through _Linear) take their fp32 weights and cast them themselves, and their backward writes each weight's
# gradient in fp32 straight from the GEMM (ops.matmul_into_), where autocast's linear rounds it to bf16 and a
# separate kernel casts it back (four launches a layer). Session 20, 130M step on an H100: the profiled step had 1151
# launches and 71.57 ms of kernels, against 1277 and 71.62 ms in session 19's profile (which also had nn.Embedding's
# backward); the graphed step (train_ab --graph --discard-first, two calls, alternating) took 72.92, 73.42, 72.88 and
# 73.59 ms against 72.89, 72.97, 72.89 and 72.90 with it off. Off: no faster, and less steady. The in-projection's
# two halves are written into one gradient buffer either way (no concatenation).
FP32_WEIGHT_GRADS = False
# Above this batch the in-projection is cuBLAS + causal_conv1d_update instead of decode_in, whose GEMV grows
# with the batch (H100, 130M: decode_in 3.0-3.6 us against cuBLAS 3.4 us + the conv update at b1, but 16.6
# against 3.6 at b64); the fused state update is kept at every batch (b64: 7.6 us against 15.3 unfused).
FUSED_DECODE_IN_MAX_BATCH = 8
# Up to this batch (with FUSED_DECODE on), a model whose blocks are all Mamba mixers without an MLP decodes through
# the mixers' block_step: three launches a layer instead of five. decode_norm_in takes the block's add + norm
# (and Mamba-2's deferred gated-norm scale) into the in-projection; Mamba-1's x_proj becomes partial sums
# inside it; Mamba-2's gated RMSNorm moves into the state update, up to the scale.
FUSED_BLOCK_MAX_BATCH = 2
# On the block path, out_proj through decode_linear (a GEMV kernel) and norm_f + the LM head through
# decode_norm_head, instead of cuBLAS.
DECODE_GEMV = True


def _dt_bias_init(n: int, dt_min: float, dt_max: float, dt_init_floor: float) -> torch.Tensor:
    """Inverse softplus of dt ~ log-uniform(dt_min, dt_max), as the reference initialises dt's bias."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_init_floor)
    return dt + torch.log(-torch.expm1(-dt))


def _conv_silu(conv1d: nn.Conv1d, x: torch.Tensor, conv_state: torch.Tensor | None) -> torch.Tensor:
    """Causal depthwise conv + silu over x (b, channels, l). With a cache row ``conv_state``
    (b, channels, d_conv - 1) the conv continues from it, and it is overwritten with the new final states."""
    weight = conv1d.weight.squeeze(1)  # (channels, d_conv)
    if conv_state is None:
        return causal_conv1d(x, weight, conv1d.bias, activation="silu")
    out, final = causal_conv1d(x, weight, conv1d.bias, initial_states=conv_state, return_final_states=True,
                               activation="silu")
    conv_state.copy_(final)
    return out


def _matmul_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on t runs in: autocast's where it is on for t's device, else t's own."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class _InProjXZ(torch.autograd.Function):
    """x = W[:d] hT and z = W[d:] hT as two matmuls (SPLIT_IN_PROJ), with the backward's hidden-state gradient
    dx^T Wx + dz^T Wz summed inside the second matmul. hT (d_model, b l) in ``dtype``; W (2 d, d_model) in its own
    dtype (the parameter's), cast to ``dtype`` here; its gradient in W's dtype, each half's product written into its
    rows of it (ops.matmul_into_: float32 from 16-bit operands straight from the GEMM, no cast and no concatenation)."""

    @staticmethod
    def forward(ctx, hT: torch.Tensor, weight: torch.Tensor, d: int, dtype: torch.dtype):
        w = weight.to(dtype)
        ctx.save_for_backward(hT, w)
        ctx.d, ctx.weight_dtype = d, weight.dtype
        return w[:d] @ hT, w[d:] @ hT

    @staticmethod
    def backward(ctx, dx: torch.Tensor | None, dz: torch.Tensor | None):
        hT, w = ctx.saved_tensors
        d = ctx.d
        dx = torch.zeros_like(dz) if dx is None else dx
        dz = torch.zeros_like(dx) if dz is None else dz
        # dh (b l, d_model) row-major, as the add+norm backward reads it; hT's gradient is its transpose (a view). The
        # second product is added in place into the first's buffer (an out-of-place addmm would copy it first).
        dh = dz.T @ w[d:]
        add_matmul_(dh, dx, w[:d])
        dweight = hT.new_empty(w.shape, dtype=ctx.weight_dtype)
        matmul_into_(dweight[:d], dx.T, hT.T)
        matmul_into_(dweight[d:], dz.T, hT.T)
        return dh.T, dweight, None, None


class _XDtProj(torch.autograd.Function):
    """x_proj and dt_proj on channel-major matrices (CHANNEL_MAJOR_PROJ), passing x through: x (d_inner, b l) in,
    x, dt (d_inner, b l), B and C (d_state, b l) out. The scan's gradient for u arrives at the passed-through x, and
    the backward adds x_proj's input gradient to it in one launch (ops.add_matmul: on CUDA a Triton kernel that
    adds the product to the scan's gradient as it writes it; cuBLAS's addmm was slower than its mm and an add).
    x in ``dtype``; the weights in their own (the parameters'), cast here, their gradients written in it by the GEMMs
    (ops.matmul_into_)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w_x: torch.Tensor, w_dt: torch.Tensor, dt_rank: int, dtype: torch.dtype):
        wx, wdt = w_x.to(dtype), w_dt.to(dtype)
        x_dbl = wx @ x  # (dt_rank + 2 d_state, b l)
        d_state = (w_x.shape[0] - dt_rank) // 2
        dt_low, B, C = x_dbl.split([dt_rank, d_state, d_state])
        ctx.save_for_backward(x, wx, wdt, dt_low)
        ctx.weight_dtypes = w_x.dtype, w_dt.dtype
        return x, wdt @ dt_low, B, C

    @staticmethod
    def backward(ctx, dx, ddt, dB, dC):
        x, w_x, w_dt, dt_low = ctx.saved_tensors
        n = (w_x.shape[0] - dt_low.shape[0]) // 2
        zeros = x.new_zeros(n, x.shape[1])
        ddt = x.new_zeros(w_dt.shape[0], x.shape[1]) if ddt is None else ddt
        dx_dbl = torch.cat([w_dt.T @ ddt, zeros if dB is None else dB, zeros if dC is None else dC])
        dx = w_x.T @ dx_dbl if dx is None else add_matmul(dx, w_x, dx_dbl)
        dw_x = x.new_empty(w_x.shape, dtype=ctx.weight_dtypes[0])
        matmul_into_(dw_x, dx_dbl.T, x.T)
        dw_dt = x.new_empty(w_dt.shape, dtype=ctx.weight_dtypes[1])
        matmul_into_(dw_dt, ddt.T, dt_low.T)
        return dx, dw_x, dw_dt, None, None


class _Linear(torch.autograd.Function):
    """x @ W^T without a bias, x (..., k) in ``dtype`` and W (n, k) in its own dtype (the parameter's), cast here; W's
    gradient is written in W's dtype by the GEMM (ops.matmul_into_), not rounded to ``dtype`` and cast back as
    autocast's linear does (one launch less per weight and step). x's gradient comes out in x's layout when x, as
    rows (-1, k), is column-major (Mamba-1's out_proj input, the scan's (b, d_inner, l) output transposed): the scan
    backward then reads it with time contiguous. Row-major, the 130M training step's scan backward took 1.46 ms a
    layer instead of 1.32 (H100, session 20)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype):
        w = weight.to(dtype)
        x2 = x.to(dtype).reshape(-1, x.shape[-1])
        ctx.save_for_backward(x2, w)
        ctx.weight_dtype = weight.dtype
        ctx.column_major = x2.stride(0) == 1 and x2.shape[1] > 1
        return (x2 @ w.T).unflatten(0, x.shape[:-1])

    @staticmethod
    def backward(ctx, dout: torch.Tensor):
        x2, w = ctx.saved_tensors
        dout2 = dout.reshape(-1, dout.shape[-1])
        dweight = x2.new_empty(w.shape, dtype=ctx.weight_dtype)
        matmul_into_(dweight, dout2, x2)
        dx2 = (w.T @ dout2.T).T if ctx.column_major else dout2 @ w
        return dx2.unflatten(0, dout.shape[:-1]), dweight, None


class Mamba1Mixer(nn.Module):
    def __init__(self, d_model: int, layer_idx: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int = 48, dt_min: float = 0.001, dt_max: float = 0.1, dt_init: str = "random",
                 dt_scale: float = 1.0, dt_init_floor: float = 1e-4, conv_bias: bool = True, bias: bool = False,
                 use_fast_path: bool = True):
        super().__init__()
        self.layer_idx, self.d_state, self.d_conv, self.dt_rank = layer_idx, d_state, d_conv, dt_rank
        self.d_inner = d_inner = expand * d_model
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=bias)
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1, dtype=torch.float32)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)
        with torch.no_grad():
            std = dt_rank**-0.5 * dt_scale
            if dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(_dt_bias_init(d_inner, dt_min, dt_max, dt_init_floor))
        self.dt_proj.bias._no_reinit = True

    def state_shapes(self, batch: int, max_seqlen: int) -> dict:
        return {"conv": (batch, self.d_inner, self.d_conv - 1), "ssm": (batch, self.d_inner, self.d_state)}

    def _split_x_dbl(self, x_dbl: torch.Tensor, dim: int = -1):
        return x_dbl.split([self.dt_rank, self.d_state, self.d_state], dim=dim)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        # hidden_states: (b, l, d_model); cache: InferenceCache rows of this batch, or None.
        # The projections are computed feature-major (W @ X^T), so x, z, dt, B and C come out as
        # (b, channels, l) with time contiguous: the layout the conv and scan kernels read fastest (with
        # time strided by the channel count, the scan measured 2.5x slower in a training step).
        b, l, _ = hidden_states.shape
        grads = torch.is_grad_enabled() and CHANNEL_MAJOR_PROJ
        if ACCUMULATE_IN_PROJ_GRADS and SPLIT_IN_PROJ and grads:
            dtype = _matmul_dtype(hidden_states)
            hT = hidden_states.flatten(0, 1).T.to(dtype)
            xz = _InProjXZ.apply(hT, self._weight(self.in_proj, dtype), self.d_inner, dtype)
            x, z = (self._in_proj_rows(hT, rows, b, l, out) for out, rows in zip(xz, self._xz_rows()))
        elif SPLIT_IN_PROJ:
            hT = hidden_states.flatten(0, 1).T  # (d_model, b * l)
            x, z = (self._in_proj_rows(hT, rows, b, l) for rows in self._xz_rows())
        else:
            xz = self.in_proj.weight @ hidden_states.flatten(0, 1).T  # (2 * d_inner, b * l)
            if self.in_proj.bias is not None:
                xz = xz + self.in_proj.bias[:, None].to(xz.dtype)
            x, z = xz.unflatten(1, (b, l)).transpose(0, 1).chunk(2, dim=1)  # (b, d_inner, l) each
        A = -torch.exp(self.A_log.float())  # (d_inner, d_state)
        x = _conv_silu(self.conv1d, x, None if cache is None else cache.conv_states[self.layer_idx])
        if ACCUMULATE_X_PROJ_GRADS and grads:
            dtype = _matmul_dtype(x)
            xm, dt, B, C = _XDtProj.apply(x.transpose(0, 1).reshape(x.shape[1], b * l).to(dtype),
                                          self._weight(self.x_proj, dtype), self._weight(self.dt_proj, dtype),
                                          self.dt_rank, dtype)
            x, dt, B, C = (t.unflatten(1, (b, l)).transpose(0, 1) for t in (xm, dt, B, C))
        elif CHANNEL_MAJOR_PROJ:
            # x_proj and dt_proj on (channels, b * l) matrices: x keeps xz's layout through the conv (channel, then
            # batch, then time), so this is a view, and dt comes out (d_inner, b * l), time contiguous for the
            # scan. Batched as (b, channels, l), Inductor computed dt_proj time-major and then transposed its
            # (b, d_inner, l) result: a 50 MB copy per layer and step at the 130M training shape.
            x_dbl = self.x_proj.weight @ x.transpose(0, 1).reshape(x.shape[1], b * l)  # (dt_rank + 2 d_state, b l)
            dt, B, C = self._split_x_dbl(x_dbl.unflatten(1, (b, l)).transpose(0, 1), dim=1)  # (b, ., l) views
            dt = self.dt_proj.weight @ dt.transpose(0, 1).flatten(1)  # (d_inner, b l)
            dt = dt.unflatten(1, (b, l)).transpose(0, 1)  # (b, d_inner, l)
        else:
            dt, B, C = self._split_x_dbl(self.x_proj.weight @ x, dim=1)  # (b, dt_rank / d_state / d_state, l)
            dt = self.dt_proj.weight @ dt  # (b, d_inner, l); the bias goes in the scan
        kwargs = dict(D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        if cache is None:
            y = selective_scan(x, dt, A, B, C, **kwargs)
        else:
            ssm_state = cache.ssm_states[self.layer_idx]
            y, last_state = selective_scan(x, dt, A, B, C, **kwargs, initial_state=ssm_state, return_last_state=True)
            ssm_state.copy_(last_state)
        if FP32_WEIGHT_GRADS and grads and self.out_proj.bias is None:
            dtype = _matmul_dtype(y)
            return _Linear.apply(y.transpose(1, 2), self._weight(self.out_proj, dtype), dtype)
        return self.out_proj(y.transpose(1, 2))  # (b, l, d_model)

    @staticmethod
    def _weight(linear: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
        """A projection's weight for the training-forward autograd functions, which cast it to ``dtype`` themselves
        and write its gradient in its own dtype (FP32_WEIGHT_GRADS); with that off, cast here, so that the gradient
        is taken in ``dtype`` and cast back by autograd."""
        return linear.weight if FP32_WEIGHT_GRADS else linear.weight.to(dtype)

    def _xz_rows(self) -> tuple[slice, slice]:
        return slice(0, self.d_inner), slice(self.d_inner, None)

    def _in_proj_rows(self, hT: torch.Tensor, rows: slice, b: int, l: int, out: torch.Tensor | None = None):
        """in_proj's output rows ``rows`` for hT (d_model, b * l), as (b, len(rows), l) with time contiguous; ``out``,
        when given, is their matmul already done (len(rows), b * l), the bias still to add."""
        if out is None:
            out = self.in_proj.weight[rows] @ hT  # (len(rows), b * l)
        if self.in_proj.bias is not None:
            out = out + self.in_proj.bias[rows, None].to(out.dtype)
        return out.unflatten(1, (b, l)).transpose(0, 1)

    def step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        # hidden_states: (b, d_model): one token per row, states updated in place
        if FUSED_DECODE:
            return self._fused_step(hidden_states, cache)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)  # (b, d_inner) each
        x = causal_conv1d_update(x, cache.conv_states[self.layer_idx], self.conv1d.weight.squeeze(1),
                                 self.conv1d.bias, activation="silu")
        dt, B, C = self._split_x_dbl(self.x_proj(x))  # (b, dt_rank), (b, d_state), (b, d_state)
        dt = F.linear(dt, self.dt_proj.weight)  # (b, d_inner)
        A = -torch.exp(self.A_log.float())
        y = selective_state_update(cache.ssm_states[self.layer_idx], x, dt, A, B, C, self.D.float(), z=z,
                                   dt_bias=self.dt_proj.bias.float(), dt_softplus=True)
        return self.out_proj(y)  # (b, d_model)

    def _fused_step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        # the same step in two fused ops around x_proj (see mamba_compile/ops/mamba1_decode.py)
        conv_state, conv_weight = cache.conv_states[self.layer_idx], self.conv1d.weight.squeeze(1)
        if hidden_states.shape[0] > FUSED_DECODE_IN_MAX_BATCH:
            x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
            x = causal_conv1d_update(x, conv_state, conv_weight, self.conv1d.bias, activation="silu")
        else:
            x, z = mamba1_decode_in(hidden_states, self.in_proj.weight, self.in_proj.bias, conv_state,
                                    conv_weight, self.conv1d.bias)  # (b, d_inner) each
        x_dbl = self.x_proj(x)  # (b, dt_rank + 2 * d_state)
        y = mamba1_decode_ssm(cache.ssm_states[self.layer_idx], x, x_dbl, self.dt_proj.weight, self.dt_proj.bias,
                              self.A_log, self.D, z)
        return self.out_proj(y)  # (b, d_model)

    block_step_ok = True

    def block_step(self, hidden_states, residual, scale, cache, norm, residual_in_fp32: bool):
        """The block's add + norm and its decode step in three launches: (hidden_states (b, d_model), residual,
        scale) from the previous block -> the same for the next (see MixerModel._fused_step)."""
        out, residual, x_parts = decode_norm_in(
            hidden_states, residual, norm.weight, norm.bias, self.in_proj.weight, self.in_proj.bias,
            cache.conv_states[self.layer_idx], self.conv1d.weight.squeeze(1), self.conv1d.bias,
            **_norm_kwargs(norm, residual_in_fp32, scale), x_proj_weight=self.x_proj.weight)
        x, z = out.chunk(2, dim=-1)
        y = mamba1_decode_ssm(cache.ssm_states[self.layer_idx], x, x_parts, self.dt_proj.weight, self.dt_proj.bias,
                              self.A_log, self.D, z)
        return decode_out_proj(self.out_proj, y), residual, None


class Mamba2Mixer(nn.Module):
    def __init__(self, d_model: int, layer_idx: int, d_state: int = 128, d_conv: int = 4, conv_init=None,
                 expand: int = 2, headdim: int = 64, d_ssm: int | None = None, ngroups: int = 1,
                 A_init_range=(1, 16), D_has_hdim: bool = False, rmsnorm: bool = True,
                 norm_before_gate: bool = False, dt_min: float = 0.001, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, dt_limit=(0.0, float("inf")), bias: bool = False,
                 conv_bias: bool = True, chunk_size: int = 256, use_mem_eff_path: bool = True,
                 norm_eps: float = 1e-5):
        super().__init__()
        self.layer_idx, self.d_state, self.d_conv, self.headdim = layer_idx, d_state, d_conv, headdim
        self.ngroups, self.chunk_size, self.rmsnorm = ngroups, chunk_size, rmsnorm
        self.norm_before_gate, self.D_has_hdim, self.norm_eps = norm_before_gate, D_has_hdim, norm_eps
        self.dt_limit = tuple(float(v) for v in dt_limit)
        d_inner = expand * d_model
        self.d_ssm = d_ssm = d_inner if d_ssm is None else d_ssm
        self.nheads = d_ssm // headdim
        self.d_mlp = d_inner - d_ssm  # the reference's optional gated-MLP part of in_proj
        self.conv_dim = d_ssm + 2 * ngroups * d_state
        # in_proj output, in order: [z0, x0 (d_mlp each), z (d_ssm), xBC (conv_dim), dt (nheads)]
        self.in_proj = nn.Linear(d_model, 2 * self.d_mlp + d_ssm + self.conv_dim + self.nheads, bias=bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, d_conv, groups=self.conv_dim,
                                padding=d_conv - 1, bias=conv_bias)
        if conv_init is not None:
            nn.init.uniform_(self.conv1d.weight, -conv_init, conv_init)
        self.dt_bias = nn.Parameter(_dt_bias_init(self.nheads, dt_min, dt_max, dt_init_floor))
        self.dt_bias._no_weight_decay = True
        A = torch.empty(self.nheads).uniform_(*A_init_range)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(d_ssm if D_has_hdim else self.nheads))
        if rmsnorm:
            self.norm = _GatedRMSNorm(d_ssm, eps=norm_eps, group_size=d_ssm // ngroups,
                                      norm_before_gate=norm_before_gate)
        self.out_proj = nn.Linear(d_inner, d_model, bias=bias)

    def state_shapes(self, batch: int, max_seqlen: int) -> dict:
        return {"conv": (batch, self.conv_dim, self.d_conv - 1),
                "ssm": (batch, self.nheads, self.headdim, self.d_state)}

    def _D(self) -> torch.Tensor:
        return self.D.float().view(self.nheads, self.headdim) if self.D_has_hdim else self.D.float()

    def _split_in_proj(self, zxbcdt: torch.Tensor):
        return zxbcdt.split([self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim, self.nheads], dim=-1)

    def _gate_and_project(self, y: torch.Tensor, z: torch.Tensor, z0: torch.Tensor, x0: torch.Tensor):
        # y, z: (..., d_ssm); z0, x0: (..., d_mlp)
        if self.rmsnorm:
            y = self.norm(y, z)
        if self.d_mlp > 0:
            y = torch.cat([F.silu(z0) * x0, y], dim=-1)
        return self.out_proj(y)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        # hidden_states: (b, l, d_model)
        b, l, _ = hidden_states.shape
        if SPLIT_DT_PROJ:
            # dt's nheads columns as a matmul of their own: the rest of the in-projection is then usually a multiple
            # of 64 wide (3328 at 130M; 3352 with dt), a width Inductor does not pad. A padded row stride differs
            # from the one the Triton kernels were traced with, so the compiled graph copied z and xBC (xBC once
            # per argument it was passed as) before the kernels: about 0.4 GB a layer in the 130M training step.
            w, bias = self.in_proj.weight, self.in_proj.bias

            def columns(cols: slice) -> torch.Tensor:  # in_proj's output columns cols, as a matmul of their own
                return F.linear(hidden_states, w[cols], None if bias is None else bias[cols])

            n_z = 2 * self.d_mlp + self.d_ssm
            if SPLIT_XBC_PROJ:
                z0, x0, z = columns(slice(None, n_z)).split([self.d_mlp, self.d_mlp, self.d_ssm], dim=-1)
                xBC = columns(slice(n_z, -self.nheads))
            else:
                z0, x0, z, xBC = columns(slice(None, -self.nheads)).split(
                    [self.d_mlp, self.d_mlp, self.d_ssm, self.conv_dim], dim=-1)
            dt = columns(slice(-self.nheads, None))
        else:
            z0, x0, z, xBC, dt = self._split_in_proj(self.in_proj(hidden_states))
        conv_state = None if cache is None else cache.conv_states[self.layer_idx]
        xBC = _conv_silu(self.conv1d, xBC.transpose(1, 2), conv_state)  # (b, conv_dim, l)
        x, B, C = xBC.transpose(1, 2).split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        x = x.unflatten(-1, (self.nheads, self.headdim))  # (b, l, nheads, headdim)
        B = B.unflatten(-1, (self.ngroups, self.d_state))  # (b, l, ngroups, d_state)
        C = C.unflatten(-1, (self.ngroups, self.d_state))
        A = -torch.exp(self.A_log.float())  # (nheads,)
        kwargs = dict(D=self._D(), z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, self.headdim)),
                      dt_bias=self.dt_bias.float(), dt_softplus=True, dt_limit=self.dt_limit)
        if cache is None:
            y = ssd_chunk_scan(x, dt, A, B, C, self.chunk_size, **kwargs)
        else:
            ssm_state = cache.ssm_states[self.layer_idx]
            y, final_state = ssd_chunk_scan(x, dt, A, B, C, self.chunk_size, **kwargs,
                                            initial_states=ssm_state, return_final_states=True)
            ssm_state.copy_(final_state)
        return self._gate_and_project(y.flatten(-2), z, z0, x0)  # (b, l, d_model)

    def step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        # hidden_states: (b, d_model)
        if FUSED_DECODE:
            return self._fused_step(hidden_states, cache)
        z0, x0, z, xBC, dt = self._split_in_proj(self.in_proj(hidden_states))
        xBC = causal_conv1d_update(xBC, cache.conv_states[self.layer_idx], self.conv1d.weight.squeeze(1),
                                   self.conv1d.bias, activation="silu")  # (b, conv_dim)
        x, B, C = xBC.split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        p, n = self.headdim, self.d_state
        x = x.unflatten(-1, (self.nheads, p))  # (b, nheads, headdim)
        B, C = B.unflatten(-1, (self.ngroups, n)), C.unflatten(-1, (self.ngroups, n))  # (b, ngroups, d_state)
        A = (-torch.exp(self.A_log.float()))[:, None, None].expand(self.nheads, p, n)
        D = self._D()
        D = D if self.D_has_hdim else D[:, None].expand(self.nheads, p)
        dt_bias = self.dt_bias.float()
        if self.dt_limit != (0.0, float("inf")):
            # The update op has no dt_limit: apply softplus and the clamp here, as the scan does.
            dt = F.softplus(dt.float() + dt_bias).clamp(*self.dt_limit)
            dt_bias, dt_softplus = None, False
        else:
            dt_bias, dt_softplus = dt_bias[:, None].expand(self.nheads, p), True
        y = selective_state_update(cache.ssm_states[self.layer_idx], x, dt[..., None].expand(-1, -1, p), A, B, C, D,
                                   z=None if self.rmsnorm else z.unflatten(-1, (self.nheads, p)),
                                   dt_bias=dt_bias, dt_softplus=dt_softplus)
        return self._gate_and_project(y.flatten(-2), z, z0, x0)  # (b, d_model)

    def _fused_step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        # the same step in two fused ops (see mamba_compile/ops/mamba1_decode.py and mamba2_decode.py)
        conv_state, conv_weight = cache.conv_states[self.layer_idx], self.conv1d.weight.squeeze(1)
        if hidden_states.shape[0] > FUSED_DECODE_IN_MAX_BATCH:
            z0, x0, z, xBC, dt = self._split_in_proj(self.in_proj(hidden_states))
            xBC = causal_conv1d_update(xBC, conv_state, conv_weight, self.conv1d.bias, activation="silu")
        else:
            zxbcdt = decode_in(hidden_states, self.in_proj.weight, self.in_proj.bias, conv_state, conv_weight,
                               self.conv1d.bias, conv_start=2 * self.d_mlp + self.d_ssm)  # xBC through conv + silu
            z0, x0, z, xBC, dt = self._split_in_proj(zxbcdt)
        x, B, C = xBC.split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        p, n = self.headdim, self.d_state
        D = self.D.view(self.nheads, p) if self.D_has_hdim else self.D
        y = mamba2_decode_ssm(cache.ssm_states[self.layer_idx], x.unflatten(-1, (self.nheads, p)),
                              B.unflatten(-1, (self.ngroups, n)), C.unflatten(-1, (self.ngroups, n)), dt,
                              self.A_log, self.dt_bias, D,
                              None if self.rmsnorm else z.unflatten(-1, (self.nheads, p)), dt_limit=self.dt_limit)
        return self._gate_and_project(y.flatten(-2), z, z0, x0)  # (b, d_model)

    @property
    def block_step_ok(self) -> bool:
        # the in_proj MLP part and a grouped gated norm (whose scales do not commute with out_proj) keep step()
        return self.d_mlp == 0 and (not self.rmsnorm or self.norm.group_size == self.d_ssm)

    def block_step(self, hidden_states, residual, scale, cache, norm, residual_in_fp32: bool):
        """As Mamba1Mixer.block_step. With the gated RMSNorm, the state update returns its output up to the
        scale, which goes to the next block's decode_norm_in (it commutes with out_proj) as ``scale``."""
        out, residual, _ = decode_norm_in(
            hidden_states, residual, norm.weight, norm.bias, self.in_proj.weight, self.in_proj.bias,
            cache.conv_states[self.layer_idx], self.conv1d.weight.squeeze(1), self.conv1d.bias,
            **_norm_kwargs(norm, residual_in_fp32, scale), conv_start=self.d_ssm)
        _, _, z, xBC, dt = self._split_in_proj(out)
        x, B, C = xBC.split([self.d_ssm, self.ngroups * self.d_state, self.ngroups * self.d_state], dim=-1)
        p, n = self.headdim, self.d_state
        D = self.D.view(self.nheads, p) if self.D_has_hdim else self.D
        args = (cache.ssm_states[self.layer_idx], x.unflatten(-1, (self.nheads, p)), B.unflatten(-1, (self.ngroups, n)),
                C.unflatten(-1, (self.ngroups, n)), dt, self.A_log, self.dt_bias, D, z.unflatten(-1, (self.nheads, p)))
        if not self.rmsnorm:
            y = mamba2_decode_ssm(*args, dt_limit=self.dt_limit)
            return decode_out_proj(self.out_proj, y.flatten(-2)), residual, None
        u, sumsq = mamba2_decode_ssm_gated(*args, self.norm.weight, norm_before_gate=self.norm_before_gate,
                                           dt_limit=self.dt_limit)
        return decode_out_proj(self.out_proj, u.flatten(-2)), residual, (sumsq, self.d_ssm, float(self.norm.eps))


def decode_out_proj(linear: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """A linear layer on the block path's few rows: decode_linear (DECODE_GEMV) or the module itself."""
    return decode_linear(x, linear.weight, linear.bias) if DECODE_GEMV else linear(x)


def scale_kwargs(scale) -> dict:
    """decode_norm_in's / decode_norm_head's keyword arguments for a deferred gated-norm scale (or None)."""
    return {} if scale is None else dict(sumsq=scale[0], gate_group_size=scale[1], gate_eps=scale[2])


def _norm_kwargs(norm, residual_in_fp32: bool, scale) -> dict:
    """decode_norm_in's keyword arguments for a block's norm and the previous block's deferred scale."""
    return dict(eps=float(norm.eps), is_rms=norm.rms, residual_in_fp32=residual_in_fp32, **scale_kwargs(scale))


def apply_scale(hidden_states: torch.Tensor, scale) -> torch.Tensor:
    """The deferred gated-norm scale of a block_step's output, in fp32 (see Mamba2Mixer.block_step)."""
    return hidden_states if scale is None else gate_scale(hidden_states, *scale)


class _GatedRMSNorm(nn.Module):
    """Mamba-2's group-wise RMSNorm gated by silu(z); parameter ``weight`` as in the reference."""

    def __init__(self, d: int, eps: float, group_size: int, norm_before_gate: bool):
        super().__init__()
        self.eps, self.group_size, self.norm_before_gate = eps, group_size, norm_before_gate
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return rms_norm_gated(x, self.weight, z, eps=self.eps, group_size=self.group_size,
                              norm_before_gate=self.norm_before_gate)


def _rotary(x: torch.Tensor, positions: torch.Tensor, rotary_dim: int, base: float) -> torch.Tensor:
    """GPT-NeoX (non-interleaved) rotary embedding on the first ``rotary_dim`` channels.

    x: (b, l, heads, head_dim); positions: (b, l) int
    """
    inv_freq = 1.0 / base ** (torch.arange(0, rotary_dim, 2, device=x.device, dtype=torch.float32) / rotary_dim)
    freqs = positions.float()[..., None] * inv_freq  # (b, l, rotary_dim / 2)
    cos, sin = freqs.cos()[:, :, None], freqs.sin()[:, :, None]  # (b, l, 1, rotary_dim / 2)
    x1, x2, rest = x[..., : rotary_dim // 2].float(), x[..., rotary_dim // 2 : rotary_dim].float(), x[..., rotary_dim:]
    rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)
    return torch.cat([rotated, rest], dim=-1)


class MHA(nn.Module):
    """Causal multi-head attention with GQA, rotary embedding and an optional gated MLP in the same
    projections (the reference's mha.py). Its KV cache is (batch, max_seqlen, nheads_kv, head_dim)."""

    def __init__(self, d_model: int, layer_idx: int, num_heads: int, num_heads_kv: int, head_dim: int,
                 mlp_dim: int = 0, qkv_proj_bias: bool = True, out_proj_bias: bool = True,
                 softmax_scale: float | None = None, causal: bool = True, d_conv: int = 0,
                 rotary_emb_dim: int = 0, rotary_emb_base: float = 10000.0, rotary_emb_interleaved: bool = False):
        super().__init__()
        self.layer_idx, self.num_heads, self.num_heads_kv, self.head_dim = layer_idx, num_heads, num_heads_kv, head_dim
        self.rotary_emb_dim, self.rotary_emb_base, self.softmax_scale = rotary_emb_dim, rotary_emb_base, softmax_scale
        self.mlp_dim = math.ceil(mlp_dim / 256) * 256
        self.qkv_dim = head_dim * (num_heads + 2 * num_heads_kv)
        self.in_proj = nn.Linear(d_model, self.qkv_dim + self.mlp_dim, bias=qkv_proj_bias)
        self.out_proj = nn.Linear(head_dim * num_heads + self.mlp_dim // 2, d_model, bias=out_proj_bias)

    def state_shapes(self, batch: int, max_seqlen: int) -> dict:
        return {"key": (batch, max_seqlen, self.num_heads_kv, self.head_dim)}

    def _qkv(self, hidden_states: torch.Tensor, positions: torch.Tensor):
        # hidden_states: (b, l, d_model); positions: (b, l)
        qkv, x_mlp = self.in_proj(hidden_states).split([self.qkv_dim, self.mlp_dim], dim=-1)
        q, k, v = qkv.split([self.num_heads * self.head_dim, self.num_heads_kv * self.head_dim,
                             self.num_heads_kv * self.head_dim], dim=-1)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))  # (b, l, nheads, head_dim)
        k = k.unflatten(-1, (self.num_heads_kv, self.head_dim))  # (b, l, nheads_kv, head_dim)
        v = v.unflatten(-1, (self.num_heads_kv, self.head_dim))
        if self.rotary_emb_dim:
            q = _rotary(q, positions, self.rotary_emb_dim, self.rotary_emb_base)
            k = _rotary(k, positions, self.rotary_emb_dim, self.rotary_emb_base)
        if self.mlp_dim:
            up, gate = x_mlp.chunk(2, dim=-1)
            x_mlp = up * F.silu(gate)
        return q, k, v, x_mlp

    def _attend(self, q, k, v, mask):
        # q: (b, l, nheads, head_dim); k, v: (b, s, nheads_kv, head_dim); mask: (b, 1, l, s) bool or None
        rep = self.num_heads // self.num_heads_kv
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None,
                                           scale=self.softmax_scale)
        return o.transpose(1, 2).flatten(-2)  # (b, l, nheads * head_dim)

    def _out(self, context, x_mlp):
        if self.mlp_dim:
            context = torch.cat([context, x_mlp], dim=-1)
        return self.out_proj(context)

    def forward(self, hidden_states: torch.Tensor, cache=None) -> torch.Tensor:
        b, l, _ = hidden_states.shape
        steps = torch.arange(l, device=hidden_states.device)
        if cache is None:
            q, k, v, x_mlp = self._qkv(hidden_states, steps.expand(b, l))
            return self._out(self._attend(q, k, v, None), x_mlp)
        positions = cache.lengths[:, None] + steps  # (b, l): rows may start at different offsets
        q, k, v, x_mlp = self._qkv(hidden_states, positions)
        key_cache, value_cache = cache.key_cache[self.layer_idx], cache.value_cache[self.layer_idx]
        rows = torch.arange(b, device=hidden_states.device)[:, None]
        key_cache.index_put_((rows, positions), k.to(key_cache.dtype))
        value_cache.index_put_((rows, positions), v.to(value_cache.dtype))
        # Attend over the whole (static-size) cache; later and unwritten positions are masked.
        slots = torch.arange(key_cache.shape[1], device=hidden_states.device)
        mask = (slots <= positions[..., None])[:, None]  # (b, 1, l, max_seqlen)
        return self._out(self._attend(q, key_cache.to(q.dtype), value_cache.to(q.dtype), mask), x_mlp)

    def step(self, hidden_states: torch.Tensor, cache) -> torch.Tensor:
        # hidden_states: (b, d_model)
        return self.forward(hidden_states[:, None], cache)[:, 0]
