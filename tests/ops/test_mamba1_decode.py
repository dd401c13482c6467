"""The fused Mamba-1 decode ops (mamba1_decode_in, mamba1_decode_ssm) against the unfused step.

The oracle is the unfused chain in float64: in_proj -> causal_conv1d_update_ref -> x_proj -> dt_proj ->
selective_state_update_ref, over several consecutive steps, comparing outputs and both states after each.
"""

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

import mamba_compile.models.mixers as mixers
from mamba_compile import MambaLM
from mamba_compile.ops import (
    causal_conv1d_update,
    mamba1_decode_in,
    mamba1_decode_ssm,
    selective_state_update,
)
from tests.models._configs import VOCAB, hybrid, mamba1
from tests.ops._fused_decode import assert_fused_equals_unfused, decode
from tests.reference.causal_conv1d import causal_conv1d_update_ref
from tests.reference.selective_state_update import selective_state_update_ref


def _params(*, d_model=32, d_inner=64, d_state=16, dt_rank=8, d_conv=4, param_dtype=torch.float32,
            in_bias=True, conv_bias=True, device="cpu", seed=0):
    """A Mamba-1 layer's decode parameters, random (never the init's zeros / ones)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).to(device, param_dtype)  # noqa: E731
    return dict(
        in_proj_weight=rnd(2 * d_inner, d_model, scale=d_model**-0.5),
        in_proj_bias=rnd(2 * d_inner, scale=0.1) if in_bias else None,
        conv_weight=rnd(d_inner, d_conv, scale=0.5),
        conv_bias=rnd(d_inner, scale=0.1) if conv_bias else None,
        x_proj_weight=rnd(dt_rank + 2 * d_state, d_inner, scale=d_inner**-0.5),
        dt_proj_weight=rnd(d_inner, dt_rank, scale=dt_rank**-0.5),
        dt_proj_bias=rnd(d_inner, scale=3.0) - 1.0,  # wide: dt from ~0 up to the softplus tail
        A_log=torch.log(torch.rand(d_inner, d_state, generator=g) * 4 + 0.5).to(device, param_dtype),
        D=rnd(d_inner),
    )


def _states(p, batch, state_dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    d_inner, d_conv = p["conv_weight"].shape
    d_state = p["A_log"].shape[1]
    conv = torch.randn(batch, d_inner, d_conv - 1, generator=g).to(device, state_dtype)
    ssm = (0.5 * torch.randn(batch, d_inner, d_state, generator=g)).to(device, state_dtype)
    return conv, ssm


def _hidden(p, batch, dtype, step, seed, device="cpu"):
    g = torch.Generator().manual_seed(1000 * seed + step)
    return torch.randn(batch, p["in_proj_weight"].shape[1], generator=g).to(device, dtype)


def _cpu(p):
    return {k: None if v is None else v.cpu() for k, v in p.items()}


def _oracle_step(p, hidden, conv_state, ssm_state):
    """One unfused step in float64; returns (x, z, y, new_conv_state, new_ssm_state) without touching inputs."""
    f = lambda t: None if t is None else t.double()  # noqa: E731
    d_state = p["A_log"].shape[1]
    dt_rank = p["dt_proj_weight"].shape[1]
    x, z = F.linear(f(hidden), f(p["in_proj_weight"]), f(p["in_proj_bias"])).chunk(2, dim=-1)
    x, new_conv = causal_conv1d_update_ref(x[..., None], conv_state, p["conv_weight"], f(p["conv_bias"]), "silu")
    x = x[..., 0]
    dt, B, C = F.linear(x, f(p["x_proj_weight"])).split([dt_rank, d_state, d_state], dim=-1)
    dt = F.linear(dt, f(p["dt_proj_weight"]))
    y, new_ssm = selective_state_update_ref(ssm_state, x, dt, -torch.exp(f(p["A_log"])), B, C, f(p["D"]), z,
                                            f(p["dt_proj_bias"]), dt_softplus=True)
    return x, z, y, new_conv, new_ssm


def _x_proj(p, x):
    """x_proj as the model runs it between the two ops: a plain linear in x's dtype."""
    return F.linear(x, p["x_proj_weight"].to(x.dtype))


def _close(got, want, tol, what):
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _run_steps(step_fn, p, batch, dtype, state_dtype, tol, steps=3, seed=0, device="cpu"):
    """Runs ``step_fn(p, hidden, conv_state, ssm_state) -> (x, z, y)`` for several tokens against the oracle."""
    conv, ssm = _states(p, batch, state_dtype, seed, device)
    conv_ref, ssm_ref = conv.double().cpu(), ssm.double().cpu()
    for t in range(steps):
        hidden = _hidden(p, batch, dtype, t, seed, device)
        x, z, y = step_fn(p, hidden, conv, ssm)
        x_ref, z_ref, y_ref, conv_ref, ssm_ref = _oracle_step(_cpu(p), hidden.cpu(), conv_ref, ssm_ref)
        assert x.dtype == z.dtype == y.dtype == dtype and conv.dtype == ssm.dtype == state_dtype
        for got, want, what in [(x, x_ref, "x"), (z, z_ref, "z"), (y, y_ref, "y"), (conv, conv_ref, "conv_state"),
                                (ssm, ssm_ref, "ssm_state")]:
            _close(got, want, tol, f"step {t} {what}")


def _ops_step(p, hidden, conv, ssm):
    x, z = mamba1_decode_in(hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"], p["conv_bias"])
    y = mamba1_decode_ssm(ssm, x, _x_proj(p, x), p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"], p["D"], z)
    return x, z, y


def _kernel_step(p, hidden, conv, ssm):
    from mamba_compile.ops import mamba1_decode_triton as kernels

    x, z = kernels.mamba1_decode_in_fwd(hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"],
                                        p["conv_bias"], wrap=False)
    y = kernels.mamba1_decode_ssm_fwd(ssm, x, _x_proj(p, x), p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"],
                                      p["D"], z, wrap=False)
    return x, z, y


# (batch, dtype, param_dtype, state_dtype, shape options, tol)
CASES = [
    pytest.param(1, torch.float32, torch.float32, torch.float32, dict(), 1e-5, id="b1-fp32"),
    pytest.param(3, torch.float32, torch.float32, torch.float32, dict(d_state=4, d_conv=2, in_bias=False,
                                                                      conv_bias=False), 1e-5,
                 id="b3-fp32-n4-w2-nobias"),
    pytest.param(3, torch.float16, torch.float32, torch.float32, dict(), 5e-3, id="b3-fp16-fp32params"),
    pytest.param(1, torch.float16, torch.float16, torch.float16, dict(d_conv=2), 1e-2, id="b1-fp16-fp16state-w2"),
    pytest.param(3, torch.float16, torch.float16, torch.float16, dict(d_state=4), 1e-2, id="b3-fp16-fp16state-n4"),
]


@pytest.mark.parametrize("batch,dtype,param_dtype,state_dtype,opts,tol", CASES)
def test_triton_kernels_match_oracle(batch, dtype, param_dtype, state_dtype, opts, tol):
    p = _params(param_dtype=param_dtype, seed=batch, **opts)
    _run_steps(_kernel_step, p, batch, dtype, state_dtype, tol, seed=batch)


@pytest.mark.parametrize("batch,block_n,block_k", [(1, 8, 64), (1, 64, 16), (3, 64, 16), (3, 16, 64)],
                         ids=["gemv-n8-k64", "gemv-n64-k16", "dot-n64-k16", "dot-n16-k64"])
def test_decode_in_block_overrides(batch, block_n, block_k):
    """Other tilings than the heuristic's (the probe sweeps them on the GPU): tiles straddling the x / z
    boundary, one K step or several."""
    from mamba_compile.ops import mamba1_decode_triton as kernels

    p = _params(d_inner=48, param_dtype=torch.float16, seed=9)
    conv, _ = _states(p, batch, torch.float32, seed=9)
    conv_ref = conv.double().clone()
    hidden = _hidden(p, batch, torch.float16, 0, seed=9)
    x, z = kernels.mamba1_decode_in_fwd(hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"],
                                        p["conv_bias"], wrap=False, block_n=block_n, block_k=block_k)
    x_ref, z_ref, _, conv_ref, _ = _oracle_step(p, hidden, conv_ref, torch.zeros(batch, 48, 16, dtype=torch.float64))
    for got, want, what in [(x, x_ref, "x"), (z, z_ref, "z"), (conv, conv_ref, "conv_state")]:
        _close(got, want, 5e-3, what)


def test_triton_kernels_strided_inputs():
    """Non-contiguous hidden / x_dbl / weights and states that are row slices of a larger cache."""
    from mamba_compile.ops import mamba1_decode_triton as kernels

    p = _params(seed=7)
    p_t = {k: None if v is None else v.t().contiguous().t() for k, v in p.items()}  # column-major 2D weights
    batch = 3
    conv_big, ssm_big = _states(p, batch + 2, torch.float32, seed=7)
    conv, ssm = conv_big[1 : batch + 1], ssm_big[1 : batch + 1]
    conv_ref, ssm_ref = conv.double().clone(), ssm.double().clone()
    hidden = torch.randn(batch, 2 * p["in_proj_weight"].shape[1], generator=torch.Generator().manual_seed(8))[:, ::2]
    x, z = kernels.mamba1_decode_in_fwd(hidden, p_t["in_proj_weight"], p["in_proj_bias"], conv, p_t["conv_weight"],
                                        p["conv_bias"], wrap=False)
    x_dbl = torch.cat([_x_proj(p, x), torch.randn(batch, 5)], dim=1)[:, : p["x_proj_weight"].shape[0]]
    y = kernels.mamba1_decode_ssm_fwd(ssm, x, x_dbl, p_t["dt_proj_weight"], p["dt_proj_bias"], p_t["A_log"], p["D"],
                                      z, wrap=False)
    x_ref, z_ref, y_ref, conv_ref, ssm_ref = _oracle_step(p, hidden, conv_ref, ssm_ref)
    for got, want, what in [(x, x_ref, "x"), (z, z_ref, "z"), (y, y_ref, "y"), (conv, conv_ref, "conv_state"),
                            (ssm, ssm_ref, "ssm_state")]:
        _close(got, want, 1e-5, what)
    # the rows around the slice are untouched
    conv_big0, ssm_big0 = _states(p, batch + 2, torch.float32, seed=7)
    assert torch.equal(conv_big[0], conv_big0[0]) and torch.equal(conv_big[-1], conv_big0[-1])
    assert torch.equal(ssm_big[0], ssm_big0[0]) and torch.equal(ssm_big[-1], ssm_big0[-1])


@pytest.mark.parametrize(
    "batch,dtype,param_dtype,state_dtype,tol",
    [(2, torch.float32, torch.float32, torch.float32, 1e-5), (3, torch.bfloat16, torch.float32, torch.float32, 3e-2),
     (2, torch.bfloat16, torch.bfloat16, torch.bfloat16, 5e-2)],
    ids=["fp32", "bf16-fp32params", "bf16-bf16state"],
)
def test_cpu_ops_match_oracle(batch, dtype, param_dtype, state_dtype, tol):
    p = _params(param_dtype=param_dtype, seed=20 + batch)
    _run_steps(_ops_step, p, batch, dtype, state_dtype, tol, steps=4, seed=20 + batch)


def _unfused_step(p, hidden, conv, ssm):
    """Mamba1Mixer.step's unfused chain with the existing ops."""
    x, z = F.linear(hidden, p["in_proj_weight"], p["in_proj_bias"]).chunk(2, dim=-1)
    x = causal_conv1d_update(x, conv, p["conv_weight"], p["conv_bias"], activation="silu")
    dt_rank, d_state = p["dt_proj_weight"].shape[1], p["A_log"].shape[1]
    dt, B, C = _x_proj(p, x).split([dt_rank, d_state, d_state], dim=-1)
    dt = F.linear(dt, p["dt_proj_weight"])
    y = selective_state_update(ssm, x, dt, -torch.exp(p["A_log"].float()), B, C, p["D"].float(), z=z,
                               dt_bias=p["dt_proj_bias"].float(), dt_softplus=True)
    return x, z, y


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_ops_equal_unfused_ops(dtype):
    """The CPU branch composes the unfused ops' CPU code: the same numbers, bit for bit."""
    p = {k: None if v is None else v.to(dtype) for k, v in _params(seed=30).items()}
    conv, ssm = _states(p, 2, torch.float32, seed=30)
    conv2, ssm2 = conv.clone(), ssm.clone()
    for t in range(3):
        hidden = _hidden(p, 2, dtype, t, seed=30)
        for a, b in zip(_ops_step(p, hidden, conv, ssm), _unfused_step(p, hidden, conv2, ssm2)):
            assert torch.equal(a, b)
        assert torch.equal(conv, conv2) and torch.equal(ssm, ssm2)


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck, compile, export
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype,param_dtype,state_dtype,bias",
    [(torch.float32, torch.float32, torch.float32, True), (torch.bfloat16, torch.float32, torch.float32, False),
     (torch.bfloat16, torch.bfloat16, torch.bfloat16, True)],
    ids=["fp32-bias", "bf16-fp32params-nobias", "bf16-bf16state-bias"],
)
def test_opcheck(dtype, param_dtype, state_dtype, bias):
    p = _params(param_dtype=param_dtype, in_bias=bias, conv_bias=bias, seed=40)
    conv, ssm = _states(p, 3, state_dtype, seed=40)
    hidden = _hidden(p, 3, dtype, 0, seed=40)
    torch.library.opcheck(torch.ops.mamba_compile.decode_in.default,
                          (hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"], p["conv_bias"], 0))
    x, z = mamba1_decode_in(hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"], p["conv_bias"])
    torch.library.opcheck(torch.ops.mamba_compile.mamba1_decode_ssm.default,
                          (ssm, x, _x_proj(p, x), p["dt_proj_weight"], p["dt_proj_bias"], p["A_log"], p["D"], z))


def _layer_step(hidden, conv, ssm, w_in, w_conv, b_conv, w_x, w_dt, b_dt, A_log, D):
    x, z = mamba1_decode_in(hidden, w_in, None, conv, w_conv, b_conv)
    y = mamba1_decode_ssm(ssm, x, F.linear(x, w_x), w_dt, b_dt, A_log, D, z)
    return y


def test_compile_fullgraph_dynamic_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_layer_step, fullgraph=True, dynamic=True, backend=counter)
    p = _params(in_bias=False, seed=50)
    weights = [p[k] for k in ("in_proj_weight", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight",
                              "dt_proj_bias", "A_log", "D")]
    for batch in (5, 6, 7):  # distinct from every other size (duck sizing would tie them; d_conv - 1 = 3)
        conv, ssm = _states(p, batch, torch.float32, seed=50 + batch)
        conv_eager, ssm_eager = conv.clone(), ssm.clone()
        for t in range(2):
            hidden = _hidden(p, batch, torch.float32, t, seed=50 + batch)
            y = compiled(hidden, conv, ssm, *weights)
            y_eager = _layer_step(hidden, conv_eager, ssm_eager, *weights)
            torch.testing.assert_close(y, y_eager)
            torch.testing.assert_close(conv, conv_eager)  # the compiled calls updated the states in place
            torch.testing.assert_close(ssm, ssm_eager)
    assert counter.frame_count == 1


class _Layer(torch.nn.Module):
    """A decode layer whose states live in buffers, as a cache does."""

    def __init__(self, p, batch):
        super().__init__()
        for k, v in p.items():
            if v is not None:
                setattr(self, k, torch.nn.Parameter(v.clone()))
        self.in_bias = p["in_proj_bias"] is not None
        conv, ssm = _states(p, batch, torch.float32, seed=60)
        self.register_buffer("conv_state", conv)
        self.register_buffer("ssm_state", ssm)

    def forward(self, hidden):
        x, z = mamba1_decode_in(hidden, self.in_proj_weight, self.in_proj_bias if self.in_bias else None,
                                self.conv_state, self.conv_weight, self.conv_bias)
        return mamba1_decode_ssm(self.ssm_state, x, F.linear(x, self.x_proj_weight), self.dt_proj_weight,
                                 self.dt_proj_bias, self.A_log, self.D, z)


def test_export_matches_eager():
    p = _params(seed=60)
    mod, mod_ref = _Layer(p, 2), _Layer(p, 2)
    hidden = _hidden(p, 2, torch.float32, 0, seed=60)
    ep = torch.export.export(mod, (hidden,)).run_decompositions()
    assert {"conv_state", "ssm_state"} <= set(ep.graph_signature.buffers_to_mutate.values())
    exported = ep.module()
    for t in range(2):
        h = _hidden(p, 2, torch.float32, t, seed=60)
        torch.testing.assert_close(exported(h), mod_ref(h))
    torch.testing.assert_close(exported.conv_state, mod_ref.conv_state)
    torch.testing.assert_close(exported.ssm_state, mod_ref.ssm_state)


# ---------------------------------------------------------------------------------------------
# Bad inputs: the error type, and a message naming the argument
# ---------------------------------------------------------------------------------------------
def _in_args(**change):
    p = _params(seed=70)
    conv, _ = _states(p, 2, torch.float32, seed=70)
    args = dict(hidden=_hidden(p, 2, torch.float32, 0, seed=70), in_proj_weight=p["in_proj_weight"],
                in_proj_bias=p["in_proj_bias"], conv_state=conv, conv_weight=p["conv_weight"],
                conv_bias=p["conv_bias"])
    args.update(change)
    return args


def _ssm_args(**change):
    p = _params(seed=71)
    _, ssm = _states(p, 2, torch.float32, seed=71)
    x = torch.randn(2, 64)
    args = dict(ssm_state=ssm, x=x, x_dbl=_x_proj(p, x), dt_proj_weight=p["dt_proj_weight"],
                dt_proj_bias=p["dt_proj_bias"], A_log=p["A_log"], D=p["D"], z=torch.randn(2, 64))
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change,exc,name",
    [
        (dict(hidden=torch.randn(2, 32, 1)), ValueError, "hidden"),
        (dict(hidden=torch.randint(0, 3, (2, 32))), TypeError, "hidden"),
        (dict(in_proj_weight=torch.randn(128, 31)), ValueError, "in_proj_weight"),
        (dict(in_proj_weight=torch.randn(127, 32)), ValueError, "in_proj_weight"),
        (dict(in_proj_bias=torch.randn(64)), ValueError, "in_proj_bias"),
        (dict(conv_state=torch.randn(2, 64, 4)), ValueError, "conv_state"),
        (dict(conv_state=torch.randn(3, 64, 3)), ValueError, "conv_state"),
        (dict(conv_weight=torch.randn(64, 1)), ValueError, "conv_weight"),
        (dict(conv_weight=torch.randn(63, 4)), ValueError, "conv_weight"),
        (dict(conv_bias=torch.randn(65)), ValueError, "conv_bias"),
        (dict(conv_state=None), TypeError, "conv_state"),
    ],
    ids=["hidden-rank", "hidden-dtype", "W-dmodel", "W-odd", "in-bias", "conv-state-width", "conv-state-batch",
         "conv-width-1", "conv-weight-dinner", "conv-bias", "conv-state-none"],
)
def test_decode_in_bad_inputs(change, exc, name):
    with pytest.raises(exc, match=name):
        mamba1_decode_in(**_in_args(**change))


@pytest.mark.parametrize(
    "change,exc,name",
    [
        (dict(ssm_state=torch.randn(2, 64)), ValueError, "ssm_state"),
        (dict(ssm_state=torch.randn(2, 64, 300)), ValueError, "d_state"),
        (dict(x=torch.randn(3, 64)), ValueError, "x"),
        (dict(z=torch.randn(2, 63)), ValueError, "z"),
        (dict(x_dbl=torch.randn(2, 41)), ValueError, "x_dbl"),
        (dict(dt_proj_weight=torch.randn(64, 8, 1)), ValueError, "dt_proj_weight"),
        (dict(dt_proj_bias=torch.randn(63)), ValueError, "dt_proj_bias"),
        (dict(A_log=torch.randn(64, 8)), ValueError, "A_log"),
        (dict(D=torch.randn(64, 1)), ValueError, "D"),
        (dict(D=torch.ones(64, dtype=torch.int64)), TypeError, "D"),
        (dict(z=None), TypeError, "z"),
    ],
    ids=["state-rank", "dstate-limit", "x-batch", "z-dinner", "x_dbl-width", "W_dt-rank", "dt-bias", "A_log",
         "D-shape", "D-dtype", "z-none"],
)
def test_decode_ssm_bad_inputs(change, exc, name):
    with pytest.raises(exc, match=name):
        mamba1_decode_ssm(**_ssm_args(**change))


def test_op_body_checks_direct_calls():
    """torch.ops.mamba_compile.* validates too (the checks also run inside the op bodies)."""
    args = _in_args(conv_state=torch.randn(2, 64, 2))
    with pytest.raises(ValueError, match="conv_state"):
        torch.ops.mamba_compile.decode_in(*args.values(), 0)
    args = _ssm_args(A_log=torch.randn(64, 15))
    with pytest.raises(ValueError, match="A_log"):
        torch.ops.mamba_compile.mamba1_decode_ssm(*args.values())


# ---------------------------------------------------------------------------------------------
# Model: Mamba1Mixer.step through the fused ops (mixers.FUSED_DECODE) equals the unfused step
# ---------------------------------------------------------------------------------------------
MODEL_CONFIGS = {
    "mamba1": mamba1,
    "mamba1_bias": lambda: mamba1(ssm_cfg=dict(layer="Mamba1", d_state=8, bias=True, conv_bias=False)),
    "hybrid1": lambda: hybrid("Mamba1"),
}


@pytest.mark.parametrize("name", list(MODEL_CONFIGS))
@pytest.mark.parametrize("state_dtype", [torch.float32, torch.bfloat16], ids=["fp32state", "bf16state"])
@pytest.mark.parametrize("in_max_batch", [8, 0], ids=["decode_in", "linear_in"])
def test_model_fused_decode_equals_unfused(name, state_dtype, in_max_batch, monkeypatch):
    assert_fused_equals_unfused(MODEL_CONFIGS[name](), mixers.Mamba1Mixer, state_dtype, in_max_batch, monkeypatch)


def test_model_fused_decode_under_autocast(monkeypatch):
    """fp32 weights under bf16 autocast: the fused ops take the mixed dtypes without casts and give the
    unfused logits."""
    torch.manual_seed(0)
    model = MambaLM(mamba1()).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = decode(model, ids, False, monkeypatch)
        got, _ = decode(model, ids, True, monkeypatch)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want)


def test_model_fused_decode_compiles_one_frame(monkeypatch):
    torch.manual_seed(0)
    model = MambaLM(mamba1()).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    want, _ = decode(model, ids, True, monkeypatch)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model.decode_step, fullgraph=True, backend=counter)
    got, _ = decode(model, ids, True, monkeypatch, step_fn=compiled)
    torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------------------------
# CUDA path (the lead runs these with -m gpu): the 130M Mamba-1 layer's shapes
# ---------------------------------------------------------------------------------------------
SHAPE_130M = dict(d_model=768, d_inner=1536, d_state=16, dt_rank=48, d_conv=4)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize(
    "dtype,param_dtype,state_dtype,tol",
    [(torch.bfloat16, torch.bfloat16, torch.float32, 3e-2), (torch.bfloat16, torch.bfloat16, torch.bfloat16, 3e-2),
     (torch.float32, torch.float32, torch.float32, 1e-4)],
    ids=["bf16-fp32state", "bf16-bf16state", "fp32"],
)
def test_gpu_matches_cpu(batch, dtype, param_dtype, state_dtype, tol):
    """CUDA ops against the CPU ops on the same inputs, four steps, outputs and states."""
    p = _params(param_dtype=param_dtype, seed=80, device="cuda", **SHAPE_130M)
    p_cpu = _cpu(p)
    conv, ssm = _states(p, batch, state_dtype, seed=80, device="cuda")
    conv_cpu, ssm_cpu = conv.cpu().clone(), ssm.cpu().clone()
    for t in range(4):
        hidden = _hidden(p, batch, dtype, t, seed=80, device="cuda")
        got = _ops_step(p, hidden, conv, ssm)
        want = _ops_step(p_cpu, hidden.cpu(), conv_cpu, ssm_cpu)
        for g, w, what in zip(got + (conv, ssm), want + (conv_cpu, ssm_cpu), ("x", "z", "y", "conv", "ssm")):
            scale = max(w.abs().max().item(), 1.0)
            torch.testing.assert_close(g.cpu().float(), w.float(), rtol=tol, atol=tol * scale,
                                       msg=lambda m, t=t, what=what: f"step {t} {what}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 16])
def test_gpu_kernels_match_oracle_fp32(batch):
    """fp32 everywhere: the CUDA kernels against the float64 oracle (GEMV and tl.dot paths; the oracle loops
    over channels in Python, hence batch 16 rather than 64)."""
    p = _params(seed=81, device="cuda", **SHAPE_130M)
    _run_steps(_ops_step, p, batch, torch.float32, torch.float32, 1e-4, steps=2, seed=81, device="cuda")


@pytest.mark.gpu
def test_gpu_model_fused_decode_close_to_unfused(monkeypatch):
    """A small bf16 model on CUDA: fused and unfused decode logits agree to bf16 rounding."""
    torch.manual_seed(0)
    model = MambaLM(mamba1(d_model=256, n_layer=3), device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, VOCAB, (4, 10), device="cuda")
    want, _ = decode(model, ids, False, monkeypatch)
    got, _ = decode(model, ids, True, monkeypatch)
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert err < 5e-2


@pytest.mark.gpu
def test_gpu_compile_inductor_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(_layer_step, fullgraph=True, dynamic=True, backend=counter)
    p = _params(in_bias=False, param_dtype=torch.bfloat16, seed=82, device="cuda", **SHAPE_130M)
    weights = [p[k] for k in ("in_proj_weight", "conv_weight", "conv_bias", "x_proj_weight", "dt_proj_weight",
                              "dt_proj_bias", "A_log", "D")]
    for batch in (5, 6, 7):
        conv, ssm = _states(p, batch, torch.float32, seed=82 + batch, device="cuda")
        conv_eager, ssm_eager = conv.clone(), ssm.clone()
        hidden = _hidden(p, batch, torch.bfloat16, 0, seed=82 + batch, device="cuda")
        y = compiled(hidden, conv, ssm, *weights)
        y_eager = _layer_step(hidden, conv_eager, ssm_eager, *weights)
        torch.testing.assert_close(y, y_eager, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(conv, conv_eager, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(ssm, ssm_eager, rtol=1e-3, atol=1e-3)
    assert counter.frame_count == 1
