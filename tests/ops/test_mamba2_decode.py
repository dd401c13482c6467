"""The fused Mamba-2 decode ops (decode_in on the xBC rows, mamba2_decode_ssm) against the unfused step.

The oracle is the unfused chain in float64: in_proj -> causal_conv1d_update_ref on the xBC rows -> softplus and
dt_limit -> selective_state_update_ref, over several consecutive steps, comparing the in_proj / conv output, y
and both states after each.
"""

import math

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F

import mamba_compile.models.mixers as mixers
from mamba_compile import MambaLM
from mamba_compile.ops import decode_in, mamba2_decode_ssm
from tests.models._configs import VOCAB, hybrid, mamba2, mamba2_options, mamba_no_gate_norm
from tests.ops._fused_decode import assert_fused_equals_unfused, decode
from tests.reference.causal_conv1d import causal_conv1d_update_ref
from tests.reference.selective_state_update import selective_state_update_ref

NO_LIMIT = (0.0, math.inf)


def _params(*, d_model=32, d_mlp=0, nheads=4, headdim=8, ngroups=1, d_state=16, d_conv=4, D_hdim=False,
            param_dtype=torch.float32, in_bias=False, conv_bias=True, device="cpu", seed=0):
    """A Mamba-2 layer's decode parameters, random (never the init's zeros / ones), and its sizes."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s, scale=1.0: (scale * torch.randn(*s, generator=g)).to(device, param_dtype)  # noqa: E731
    d_ssm = nheads * headdim
    conv_dim = d_ssm + 2 * ngroups * d_state
    rows = 2 * d_mlp + d_ssm + conv_dim + nheads
    p = dict(
        in_proj_weight=rnd(rows, d_model, scale=d_model**-0.5),
        in_proj_bias=rnd(rows, scale=0.1) if in_bias else None,
        conv_weight=rnd(conv_dim, d_conv, scale=0.5),
        conv_bias=rnd(conv_dim, scale=0.1) if conv_bias else None,
        dt_bias=rnd(nheads, scale=3.0) - 1.0,  # wide: dt from ~0 up to the softplus tail
        A_log=torch.log(torch.rand(nheads, generator=g) * 8 + 0.5).to(device, param_dtype),
        D=rnd(nheads, headdim) if D_hdim else rnd(nheads),
    )
    sizes = dict(d_mlp=d_mlp, d_ssm=d_ssm, nheads=nheads, headdim=headdim, ngroups=ngroups, d_state=d_state,
                 conv_dim=conv_dim, conv_start=2 * d_mlp + d_ssm)
    return p, sizes


def _states(p, s, batch, state_dtype, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    conv_dim, d_conv = p["conv_weight"].shape
    conv = torch.randn(batch, conv_dim, d_conv - 1, generator=g).to(device, state_dtype)
    ssm = (0.5 * torch.randn(batch, s["nheads"], s["headdim"], s["d_state"], generator=g)).to(device, state_dtype)
    return conv, ssm


def _hidden(p, batch, dtype, step, seed, device="cpu"):
    g = torch.Generator().manual_seed(1000 * seed + step)
    return torch.randn(batch, p["in_proj_weight"].shape[1], generator=g).to(device, dtype)


def _split(s, out):
    """decode_in's output (b, rows) -> x (b, h, p), B, C (b, g, n), dt (b, h), z (b, h, p)."""
    _, _, z, xBC, dt = out.split([s["d_mlp"], s["d_mlp"], s["d_ssm"], s["conv_dim"], s["nheads"]], dim=-1)
    x, B, C = xBC.split([s["d_ssm"], s["ngroups"] * s["d_state"], s["ngroups"] * s["d_state"]], dim=-1)
    hp, gn = (s["nheads"], s["headdim"]), (s["ngroups"], s["d_state"])
    return x.unflatten(-1, hp), B.unflatten(-1, gn), C.unflatten(-1, gn), dt, z.unflatten(-1, hp)


def _oracle_step(p, s, hidden, conv_state, ssm_state, gate, dt_limit):
    """One unfused step in float64; returns (out, y, new_conv_state, new_ssm_state) without touching inputs."""
    f = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    out = F.linear(f(hidden), f(p["in_proj_weight"]), f(p["in_proj_bias"]))
    a, c = s["conv_start"], s["conv_start"] + s["conv_dim"]
    xBC, new_conv = causal_conv1d_update_ref(out[:, a:c, None], conv_state, f(p["conv_weight"]), f(p["conv_bias"]),
                                             "silu")
    out = torch.cat([out[:, :a], xBC[..., 0], out[:, c:]], dim=-1)
    x, B, C, dt, z = _split(s, out)
    h, hd, n = s["nheads"], s["headdim"], s["d_state"]
    dt = F.softplus(dt + f(p["dt_bias"])).clamp(*dt_limit)
    D = f(p["D"]) if p["D"].dim() == 2 else f(p["D"])[:, None].expand(h, hd)
    A = (-torch.exp(f(p["A_log"])))[:, None, None].expand(h, hd, n)
    y, new_ssm = selective_state_update_ref(ssm_state, x, dt[..., None].expand(-1, -1, hd), A, B, C, D,
                                            z if gate else None)
    return out, y, new_conv, new_ssm


def _close(got, want, tol, what):
    scale = max(want.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double().cpu(), want, rtol=0, atol=tol * scale, msg=lambda m: f"{what}: {m}")


def _ops_step(p, s, hidden, conv, ssm, gate, dt_limit):
    out = decode_in(hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"], p["conv_bias"],
                    conv_start=s["conv_start"])
    x, B, C, dt, z = _split(s, out)
    y = mamba2_decode_ssm(ssm, x, B, C, dt, p["A_log"], p["dt_bias"], p["D"], z if gate else None,
                          dt_limit=dt_limit)
    return out, y


def _kernel_step(p, s, hidden, conv, ssm, gate, dt_limit):
    from mamba_compile.ops import mamba1_decode_triton, mamba2_decode_triton

    out = mamba1_decode_triton.decode_in_fwd(hidden, p["in_proj_weight"], p["in_proj_bias"], conv,
                                             p["conv_weight"], p["conv_bias"], s["conv_start"], wrap=False)
    x, B, C, dt, z = _split(s, out)
    y = mamba2_decode_triton.mamba2_decode_ssm_fwd(ssm, x, B, C, dt, p["A_log"], p["dt_bias"], p["D"],
                                                   z if gate else None, dt_limit, wrap=False)
    return out, y


def _run_steps(step_fn, p, s, batch, dtype, state_dtype, gate, dt_limit, tol, steps=3, seed=0, device="cpu"):
    conv, ssm = _states(p, s, batch, state_dtype, seed, device)
    conv_ref, ssm_ref = conv.double().cpu(), ssm.double().cpu()
    for t in range(steps):
        hidden = _hidden(p, batch, dtype, t, seed, device)
        out, y = step_fn(p, s, hidden, conv, ssm, gate, dt_limit)
        out_ref, y_ref, conv_ref, ssm_ref = _oracle_step(p, s, hidden, conv_ref, ssm_ref, gate, dt_limit)
        assert out.dtype == y.dtype == dtype and conv.dtype == ssm.dtype == state_dtype
        for got, want, what in [(out, out_ref, "in_proj/conv out"), (y, y_ref, "y"), (conv, conv_ref, "conv_state"),
                                (ssm, ssm_ref, "ssm_state")]:
            _close(got, want, tol, f"step {t} {what}")


LIMIT = (0.01, 0.5)  # clamps both ends for the dt_bias spread above
# (batch, dtype, param_dtype, state_dtype, gate, dt_limit, shape options, tol)
CASES = [
    pytest.param(1, torch.float32, torch.float32, torch.float32, True, NO_LIMIT, dict(), 1e-5, id="b1-fp32-g1-z"),
    pytest.param(3, torch.float32, torch.float32, torch.float32, False, LIMIT,
                 dict(ngroups=2, D_hdim=True, d_mlp=8, in_bias=True), 1e-5, id="b3-fp32-g2-Dhp-limit-mlp-bias"),
    pytest.param(2, torch.float16, torch.float32, torch.float32, True, LIMIT, dict(ngroups=2), 5e-3,
                 id="b2-fp16-fp32params-g2-limit-z"),
    pytest.param(2, torch.float16, torch.float16, torch.float16, False, NO_LIMIT,
                 dict(D_hdim=True, conv_bias=False, d_conv=2), 1e-2, id="b2-fp16-fp16state-Dhp-w2"),
    pytest.param(3, torch.float16, torch.float32, torch.float16, True, LIMIT,
                 dict(ngroups=2, d_state=4, headdim=4, d_mlp=4), 1e-2, id="b3-fp16-fp16state-g2-n4-limit-z-mlp"),
]


@pytest.mark.parametrize("batch,dtype,param_dtype,state_dtype,gate,dt_limit,opts,tol", CASES)
def test_triton_kernels_match_oracle(batch, dtype, param_dtype, state_dtype, gate, dt_limit, opts, tol):
    p, s = _params(param_dtype=param_dtype, seed=batch, **opts)
    _run_steps(_kernel_step, p, s, batch, dtype, state_dtype, gate, dt_limit, tol, seed=batch)


@pytest.mark.parametrize("batch,dtype,param_dtype,state_dtype,gate,dt_limit,opts,tol", CASES)
def test_cpu_ops_match_oracle(batch, dtype, param_dtype, state_dtype, gate, dt_limit, opts, tol):
    p, s = _params(param_dtype=param_dtype, seed=10 + batch, **opts)
    _run_steps(_ops_step, p, s, batch, dtype, state_dtype, gate, dt_limit, tol, seed=10 + batch)


def test_triton_ssm_strided_state_rows_and_block_override():
    """States that are row slices of a larger cache, a column-major D and a smaller BLOCK_P than the
    heuristic's (several programs per head)."""
    from mamba_compile.ops import mamba2_decode_triton

    p, s = _params(ngroups=2, D_hdim=True, seed=5)
    p["D"] = p["D"].t().contiguous().t()
    batch = 2
    _, ssm_big = _states(p, s, batch + 2, torch.float32, seed=5)
    ssm = ssm_big[1 : batch + 1]
    ssm_ref = ssm.double().clone()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(batch, 4, 8, generator=g)
    B, C = torch.randn(batch, 2, 16, generator=g), torch.randn(batch, 2, 16, generator=g)
    dt = torch.randn(batch, 6, generator=g)[:, 1:5]  # a strided slice, as from decode_in's output
    y = mamba2_decode_triton.mamba2_decode_ssm_fwd(ssm, x, B, C, dt, p["A_log"], p["dt_bias"], p["D"], None, LIMIT,
                                                   wrap=False, block_p=2)
    dt_ref = F.softplus(dt.double() + p["dt_bias"].double()).clamp(*LIMIT)
    A = (-torch.exp(p["A_log"].double()))[:, None, None].expand(4, 8, 16)
    y_ref, ssm_ref = selective_state_update_ref(ssm_ref, x.double(), dt_ref[..., None].expand(-1, -1, 8), A,
                                                B.double(), C.double(), p["D"].double())
    _close(y, y_ref, 1e-5, "y")
    _close(ssm, ssm_ref, 1e-5, "ssm_state")
    _, ssm_big0 = _states(p, s, batch + 2, torch.float32, seed=5)
    assert torch.equal(ssm_big[0], ssm_big0[0]) and torch.equal(ssm_big[-1], ssm_big0[-1])


# ---------------------------------------------------------------------------------------------
# torch.library: opcheck, compile, export
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype,param_dtype,state_dtype,gate,dt_limit,opts",
    [(torch.float32, torch.float32, torch.float32, True, NO_LIMIT, dict()),
     (torch.bfloat16, torch.float32, torch.float32, False, LIMIT, dict(ngroups=2, D_hdim=True, d_mlp=8)),
     (torch.bfloat16, torch.bfloat16, torch.bfloat16, True, LIMIT, dict(in_bias=True))],
    ids=["fp32-z", "bf16-fp32params-g2-Dhp-limit-mlp", "bf16-bf16state-limit-z-bias"],
)
def test_opcheck(dtype, param_dtype, state_dtype, gate, dt_limit, opts):
    p, s = _params(param_dtype=param_dtype, seed=40, **opts)
    conv, ssm = _states(p, s, 3, state_dtype, seed=40)
    hidden = _hidden(p, 3, dtype, 0, seed=40)
    torch.library.opcheck(torch.ops.mamba_compile.decode_in.default,
                          (hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"], p["conv_bias"],
                           s["conv_start"]))
    out = decode_in(hidden, p["in_proj_weight"], p["in_proj_bias"], conv, p["conv_weight"], p["conv_bias"],
                    conv_start=s["conv_start"])
    x, B, C, dt, z = _split(s, out)
    torch.library.opcheck(torch.ops.mamba_compile.mamba2_decode_ssm.default,
                          (ssm, x, B, C, dt, p["A_log"], p["dt_bias"], p["D"], z if gate else None, *dt_limit))


def _layer_step(hidden, conv, ssm, w_in, w_conv, b_conv, dt_bias, A_log, D, conv_start: int, sizes: dict):
    out = decode_in(hidden, w_in, None, conv, w_conv, b_conv, conv_start=conv_start)
    x, B, C, dt, z = _split(sizes, out)
    # a literal: floats read from a global or an argument are traced as symbolic under dynamic=True, then
    # specialised by a restart of the analysis (which CompileCounter counts as a second frame)
    return mamba2_decode_ssm(ssm, x, B, C, dt, A_log, dt_bias, D, z, dt_limit=(0.01, 0.5))


def test_compile_fullgraph_dynamic_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_layer_step, fullgraph=True, dynamic=True, backend=counter)
    p, s = _params(ngroups=2, seed=50)
    weights = [p[k] for k in ("in_proj_weight", "conv_weight", "conv_bias", "dt_bias", "A_log", "D")]
    for batch in (5, 6, 7):  # distinct from every other size (duck sizing would tie them; d_conv - 1 = 3)
        conv, ssm = _states(p, s, batch, torch.float32, seed=50 + batch)
        conv_eager, ssm_eager = conv.clone(), ssm.clone()
        for t in range(2):
            hidden = _hidden(p, batch, torch.float32, t, seed=50 + batch)
            y = compiled(hidden, conv, ssm, *weights, s["conv_start"], s)
            y_eager = _layer_step(hidden, conv_eager, ssm_eager, *weights, s["conv_start"], s)
            torch.testing.assert_close(y, y_eager)
            torch.testing.assert_close(conv, conv_eager)  # the compiled calls updated the states in place
            torch.testing.assert_close(ssm, ssm_eager)
    assert counter.frame_count == 1


class _Layer(torch.nn.Module):
    """A decode layer whose states live in buffers, as a cache does."""

    def __init__(self, p, s, batch):
        super().__init__()
        self.s = s
        for k, v in p.items():
            if v is not None:
                setattr(self, k, torch.nn.Parameter(v.clone()))
        conv, ssm = _states(p, s, batch, torch.float32, seed=60)
        self.register_buffer("conv_state", conv)
        self.register_buffer("ssm_state", ssm)

    def forward(self, hidden):
        return _layer_step(hidden, self.conv_state, self.ssm_state, self.in_proj_weight, self.conv_weight,
                           self.conv_bias, self.dt_bias, self.A_log, self.D, self.s["conv_start"], self.s)


def test_export_matches_eager():
    p, s = _params(ngroups=2, D_hdim=True, d_mlp=4, seed=60)
    mod, mod_ref = _Layer(p, s, 2), _Layer(p, s, 2)
    ep = torch.export.export(mod, (_hidden(p, 2, torch.float32, 0, seed=60),)).run_decompositions()
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
    p, s = _params(seed=70)
    conv, _ = _states(p, s, 2, torch.float32, seed=70)
    args = dict(hidden=_hidden(p, 2, torch.float32, 0, seed=70), in_proj_weight=p["in_proj_weight"],
                in_proj_bias=None, conv_state=conv, conv_weight=p["conv_weight"], conv_bias=p["conv_bias"],
                conv_start=s["conv_start"])
    args.update(change)
    return args


def _ssm_args(**change):
    p, s = _params(ngroups=2, seed=71)
    _, ssm = _states(p, s, 2, torch.float32, seed=71)
    g = torch.Generator().manual_seed(72)
    args = dict(ssm_state=ssm, x=torch.randn(2, 4, 8, generator=g), B=torch.randn(2, 2, 16, generator=g),
                C=torch.randn(2, 2, 16, generator=g), dt=torch.randn(2, 4, generator=g), A_log=p["A_log"],
                dt_bias=p["dt_bias"], D=p["D"], z=torch.randn(2, 4, 8, generator=g))
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change,exc,name",
    [
        (dict(conv_start=100), ValueError, "conv_start"),
        (dict(conv_start=-1), ValueError, "conv_start"),
        (dict(conv_start=1.5), TypeError, "conv_start"),
        (dict(conv_state=torch.randn(2, 63, 3)), ValueError, "conv_state"),
        (dict(conv_bias=torch.randn(65)), ValueError, "conv_bias"),
        (dict(in_proj_bias=torch.randn(7)), ValueError, "in_proj_bias"),
        (dict(conv_weight=torch.randn(64)), ValueError, "conv_weight"),
    ],
    ids=["start-past-rows", "start-negative", "start-float", "conv-state-dim", "conv-bias", "in-bias", "conv-rank"],
)
def test_decode_in_bad_inputs(change, exc, name):
    with pytest.raises(exc, match=name):
        decode_in(**_in_args(**change))


@pytest.mark.parametrize(
    "change,exc,name",
    [
        (dict(ssm_state=torch.randn(2, 4, 8)), ValueError, "ssm_state"),
        (dict(ssm_state=torch.randn(2, 4, 8, 300)), ValueError, "d_state"),
        (dict(x=torch.randn(2, 4, 7)), ValueError, "x"),
        (dict(B=torch.randn(2, 3, 16)), ValueError, "B"),
        (dict(C=torch.randn(2, 1, 16)), ValueError, "C"),
        (dict(dt=torch.randn(2, 4, 8)), ValueError, "dt"),
        (dict(A_log=torch.randn(4, 16)), ValueError, "A_log"),
        (dict(dt_bias=torch.randn(5)), ValueError, "dt_bias"),
        (dict(D=torch.randn(4, 7)), ValueError, "D"),
        (dict(D=torch.ones(4, dtype=torch.int64)), TypeError, "D"),
        (dict(z=torch.randn(2, 4)), ValueError, "z"),
        (dict(dt_limit=(0.5, 0.1)), ValueError, "dt_limit"),
        (dict(dt_limit=0.1), TypeError, "dt_limit"),
    ],
    ids=["state-rank", "dstate-limit", "x-headdim", "B-groups", "C-groups", "dt-rank", "A_log", "dt_bias",
         "D-headdim", "D-dtype", "z-rank", "limit-order", "limit-scalar"],
)
def test_decode_ssm_bad_inputs(change, exc, name):
    with pytest.raises(exc, match=name):
        mamba2_decode_ssm(**_ssm_args(**change))


def test_op_body_checks_direct_calls():
    """torch.ops.mamba_compile.* validates too (the checks also run inside the op bodies)."""
    with pytest.raises(ValueError, match="conv_start"):
        torch.ops.mamba_compile.decode_in(*_in_args(conv_start=1000).values())
    with pytest.raises(ValueError, match="A_log"):
        torch.ops.mamba_compile.mamba2_decode_ssm(*_ssm_args(A_log=torch.randn(5)).values(), 0.0, math.inf)


# ---------------------------------------------------------------------------------------------
# Model: Mamba2Mixer.step through the fused ops (mixers.FUSED_DECODE) equals the unfused step
# ---------------------------------------------------------------------------------------------
MODEL_CONFIGS = {
    "mamba2": mamba2,  # ngroups 2, rmsnorm gate
    "mamba2_options": mamba2_options,  # dt_limit, D (h, p), d_mlp > 0, biases, norm before gate
    "mamba2_no_gate_norm": mamba_no_gate_norm,  # z gate inside the op, no conv bias
    "hybrid2": hybrid,
}


@pytest.mark.parametrize(
    "name,state_dtype",
    [(n, torch.float32) for n in MODEL_CONFIGS] + [("mamba2", torch.bfloat16), ("mamba2_options", torch.bfloat16)],
    ids=[f"{n}-fp32state" for n in MODEL_CONFIGS] + ["mamba2-bf16state", "mamba2_options-bf16state"],
)
@pytest.mark.parametrize("in_max_batch", [8, 0], ids=["decode_in", "linear_in"])
def test_model_fused_decode_equals_unfused(name, state_dtype, in_max_batch, monkeypatch):
    assert_fused_equals_unfused(MODEL_CONFIGS[name](), mixers.Mamba2Mixer, state_dtype, in_max_batch, monkeypatch)


def test_model_fused_decode_under_autocast(monkeypatch):
    """fp32 weights under bf16 autocast: the fused ops take the mixed dtypes without casts. The unfused step
    rounds in_proj's output to bf16 (autocast's linear) where decode_in keeps it in hidden's dtype (fp32 here),
    so the two differ by bf16 rounding: both are compared with the fp32 logits, the fused no further off."""
    torch.manual_seed(0)
    model = MambaLM(mamba2_options()).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(3))
    ref, _ = decode(model, ids, False, monkeypatch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want, _ = decode(model, ids, False, monkeypatch)
        got, _ = decode(model, ids, True, monkeypatch)
    assert got.dtype == want.dtype == torch.bfloat16
    err_fused, err_unfused = ((t.float() - ref).abs().max().item() for t in (got, want))
    assert err_fused <= 1e-2 * ref.abs().max().item()
    assert err_fused <= 1.5 * err_unfused


def test_model_fused_decode_compiles_one_frame(monkeypatch):
    torch.manual_seed(0)
    model = MambaLM(mamba2_options()).eval()
    ids = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(2))
    want, _ = decode(model, ids, True, monkeypatch)
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model.decode_step, fullgraph=True, backend=counter)
    got, _ = decode(model, ids, True, monkeypatch, step_fn=compiled)
    torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


# ---------------------------------------------------------------------------------------------
# CUDA path (the lead runs these with -m gpu): the 130M Mamba-2 layer's shapes
# ---------------------------------------------------------------------------------------------
SHAPE_130M = dict(d_model=768, nheads=24, headdim=64, ngroups=1, d_state=128, d_conv=4)


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize(
    "dtype,param_dtype,state_dtype,tol",
    [(torch.bfloat16, torch.bfloat16, torch.float32, 3e-2), (torch.bfloat16, torch.bfloat16, torch.bfloat16, 3e-2),
     (torch.float32, torch.float32, torch.float32, 1e-4)],
    ids=["bf16-fp32state", "bf16-bf16state", "fp32"],
)
@pytest.mark.parametrize("gate,dt_limit", [(False, NO_LIMIT), (True, LIMIT)], ids=["nogate", "z-limit"])
def test_gpu_matches_cpu(batch, dtype, param_dtype, state_dtype, tol, gate, dt_limit):
    """CUDA ops against the CPU ops on the same inputs, four steps, outputs and states."""
    p, s = _params(param_dtype=param_dtype, seed=80, device="cuda", **SHAPE_130M)
    p_cpu = {k: None if v is None else v.cpu() for k, v in p.items()}
    conv, ssm = _states(p, s, batch, state_dtype, seed=80, device="cuda")
    conv_cpu, ssm_cpu = conv.cpu().clone(), ssm.cpu().clone()
    for t in range(4):
        hidden = _hidden(p, batch, dtype, t, seed=80, device="cuda")
        got = _ops_step(p, s, hidden, conv, ssm, gate, dt_limit)
        want = _ops_step(p_cpu, s, hidden.cpu(), conv_cpu, ssm_cpu, gate, dt_limit)
        for g, w, what in zip(got + (conv, ssm), want + (conv_cpu, ssm_cpu), ("out", "y", "conv", "ssm")):
            scale = max(w.abs().max().item(), 1.0)
            torch.testing.assert_close(g.cpu().float(), w.float(), rtol=tol, atol=tol * scale,
                                       msg=lambda m, t=t, what=what: f"step {t} {what}: {m}")


@pytest.mark.gpu
@pytest.mark.parametrize("batch", [1, 4])
def test_gpu_kernels_match_oracle_fp32(batch):
    """fp32 everywhere: the CUDA kernels against the float64 oracle (GEMV and tl.dot paths; the oracle loops
    over (batch, head, headdim) in Python, hence batch 4), two groups, D (h, p), dt_limit, z gate."""
    p, s = _params(seed=81, device="cuda", D_hdim=True, **{**SHAPE_130M, "ngroups": 2})
    _run_steps(_ops_step, p, s, batch, torch.float32, torch.float32, True, LIMIT, 1e-4, steps=2, seed=81,
               device="cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mamba2", "mamba2_options", "mamba2_no_gate_norm"])
def test_gpu_model_fused_decode_close_to_unfused(name, monkeypatch):
    """Small bf16 models on CUDA: fused and unfused decode logits agree to bf16 rounding."""
    torch.manual_seed(0)
    model = MambaLM(MODEL_CONFIGS[name](), device="cuda", dtype=torch.bfloat16).eval()
    ids = torch.randint(0, VOCAB, (4, 10), device="cuda")
    want, _ = decode(model, ids, False, monkeypatch)
    got, _ = decode(model, ids, True, monkeypatch)
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max()).item()
    assert err < 5e-2


@pytest.mark.gpu
@pytest.mark.inductor
def test_gpu_compile_inductor_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(_layer_step, fullgraph=True, dynamic=True, backend=counter)
    p, s = _params(param_dtype=torch.bfloat16, seed=82, device="cuda", **SHAPE_130M)
    weights = [p[k] for k in ("in_proj_weight", "conv_weight", "conv_bias", "dt_bias", "A_log", "D")]
    for batch in (5, 6, 7):
        conv, ssm = _states(p, s, batch, torch.float32, seed=82 + batch, device="cuda")
        conv_eager, ssm_eager = conv.clone(), ssm.clone()
        hidden = _hidden(p, batch, torch.bfloat16, 0, seed=82 + batch, device="cuda")
        y = compiled(hidden, conv, ssm, *weights, s["conv_start"], s)
        y_eager = _layer_step(hidden, conv_eager, ssm_eager, *weights, s["conv_start"], s)
        torch.testing.assert_close(y, y_eager, rtol=2e-2, atol=2e-2)
        torch.testing.assert_close(conv, conv_eager, rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(ssm, ssm_eager, rtol=1e-3, atol=1e-3)
    assert counter.frame_count == 1
