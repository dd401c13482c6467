"""rms_norm / layer_norm (fused residual add) and rms_norm_gated against the float64 oracle."""


import pytest
import torch
import torch._dynamo.testing

from mamba_compile.ops import layer_norm, rms_norm, rms_norm_gated
from tests.ops._eager_paths import assert_same_results, fwd_bwd
from tests.reference.norms import add_norm_ref, rms_norm_gated_ref

ADD_NORM_OPS = [pytest.param(rms_norm, True, id="rms"), pytest.param(layer_norm, False, id="layer")]
TOL = {torch.float32: 2e-5, torch.bfloat16: 3e-2, torch.float16: 4e-3}
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
          pytest.param(torch.float16, id="fp16")]


def _add_norm_inputs(shape, dtype, *, bias, residual, residual_dtype=None, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = shape[-1]
    x = torch.randn(shape, generator=g).to(device, dtype)
    weight = (1 + 0.3 * torch.randn(hidden, generator=g)).to(device)  # fp32 weights with bf16 x: mixed
    b = (0.3 * torch.randn(hidden, generator=g)).to(device) if bias else None
    res = torch.randn(shape, generator=g).to(device, residual_dtype or dtype) if residual else None
    return x, weight, b, res


def _f64(*ts):
    return [None if t is None else t.detach().double().requires_grad_() for t in ts]


def _close(got, want, tol, what):
    err = (got.double() - want).abs().max().item()
    scale = want.abs().max().item() + 1e-12
    assert err <= tol * max(scale, 1.0), f"{what}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


# ---------------------------------------------------------------------------------------------
# add_norm forward and backward against the oracle
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,is_rms", ADD_NORM_OPS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "bias,residual,prenorm,residual_in_fp32",
    [
        pytest.param(False, False, False, False, id="plain"),
        pytest.param(True, True, False, False, id="bias-res"),
        pytest.param(False, True, True, True, id="res-prenorm-fp32"),
        pytest.param(True, False, True, False, id="bias-prenorm-nores"),
    ],
)
def test_add_norm_matches_oracle(norm, is_rms, dtype, bias, residual, prenorm, residual_in_fp32):
    x, w, b, res = _add_norm_inputs((3, 5, 96), dtype, bias=bias, residual=residual, seed=1)
    leaves = [t.requires_grad_() for t in (x, w, b, res) if t is not None]
    result = norm(x, w, b, res, eps=1e-5, prenorm=prenorm, residual_in_fp32=residual_in_fp32)
    out, r = result if prenorm else (result, None)
    assert out.dtype == dtype and out.shape == x.shape
    x64, w64, b64, res64 = _f64(x, w, b, res)
    out_ref, r_ref = add_norm_ref(x64, w64, b64, res64, eps=1e-5, is_rms=is_rms)
    tol = TOL[dtype]
    _close(out, out_ref, tol, "out")
    g = torch.Generator().manual_seed(2)
    dout = torch.randn(out.shape, generator=g)
    loss = (out.float() * dout).sum()
    loss_ref = (out_ref * dout.double()).sum()
    if prenorm:
        assert r.dtype == (torch.float32 if residual_in_fp32 else dtype)
        _close(r, r_ref, tol, "r")
        dr = torch.randn(r.shape, generator=g)
        loss = loss + (r.float() * dr).sum()
        loss_ref = loss_ref + (r_ref * dr.double()).sum()
    grads = torch.autograd.grad(loss, leaves)
    refs = torch.autograd.grad(loss_ref, [t for t in (x64, w64, b64, res64) if t is not None])
    for name, got, want, leaf in zip(["x", "weight", "bias", "residual"], grads, refs, leaves):
        assert got.dtype == leaf.dtype
        _close(got, want, 2 * tol, f"d{name}")


@pytest.mark.parametrize("norm,is_rms", ADD_NORM_OPS)
def test_add_norm_gradcheck(norm, is_rms):
    g = torch.Generator().manual_seed(3)
    x, res = torch.randn(2, 3, 8, generator=g, dtype=torch.float64), torch.randn(2, 3, 8, generator=g, dtype=torch.float64)
    w, b = torch.randn(8, generator=g, dtype=torch.float64), torch.randn(8, generator=g, dtype=torch.float64)
    for t in (x, res, w, b):
        t.requires_grad_()

    def fn(x, w, b, res):
        out, r = norm(x, w, b, res, eps=1e-5, prenorm=True)
        return out, r

    assert torch.autograd.gradcheck(fn, (x, w, b, res))


def test_add_norm_noncontiguous_input():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 6, generator=g).t()  # (6, 64), column stride 6
    w = torch.randn(64, generator=g)
    out = rms_norm(x, w, eps=1e-5)
    ref, _ = add_norm_ref(x.double(), w.double(), eps=1e-5, is_rms=True)
    _close(out, ref, 2e-5, "out")


# ---------------------------------------------------------------------------------------------
# rms_norm_gated
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "has_z,group_size,norm_before_gate",
    [
        pytest.param(True, None, True, id="z-full-before"),
        pytest.param(True, 16, False, id="z-g16-after"),
        pytest.param(True, 32, True, id="z-g32-before"),
        pytest.param(False, 16, True, id="noz-g16"),
    ],
)
def test_rms_norm_gated_matches_oracle(dtype, has_z, group_size, norm_before_gate):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, 64, generator=g).to(dtype).requires_grad_()
    w = (1 + 0.3 * torch.randn(64, generator=g)).requires_grad_()
    z = torch.randn(2, 7, 64, generator=g).to(dtype).requires_grad_() if has_z else None
    out = rms_norm_gated(x, w, z, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    assert out.dtype == dtype
    x64, w64, z64 = _f64(x, w, z)
    ref = rms_norm_gated_ref(x64, w64, z64, eps=1e-5, group_size=group_size, norm_before_gate=norm_before_gate)
    _close(out, ref, TOL[dtype], "out")
    dout = torch.randn(out.shape, generator=g)
    leaves = [t for t in (x, w, z) if t is not None]
    grads = torch.autograd.grad((out.float() * dout).sum(), leaves)
    refs = torch.autograd.grad((ref * dout.double()).sum(), [t for t in (x64, w64, z64) if t is not None])
    for name, got, want in zip(["x", "weight", "z"], grads, refs):
        _close(got, want, 2 * TOL[dtype], f"d{name}")


@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["before", "after"])
def test_rms_norm_gated_gradcheck(norm_before_gate):
    g = torch.Generator().manual_seed(6)
    x, z = (torch.randn(3, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    w = torch.randn(8, generator=g, dtype=torch.float64).requires_grad_()
    fn = lambda x, w, z: rms_norm_gated(x, w, z, eps=1e-5, group_size=4, norm_before_gate=norm_before_gate)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, z))


# ---------------------------------------------------------------------------------------------
# opcheck, compile, export, autocast
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "is_rms,bias,residual,prenorm,residual_in_fp32,dtype",
    [
        (True, False, False, False, False, torch.float32),
        (True, True, True, True, True, torch.bfloat16),
        (False, True, True, True, False, torch.float32),
        (False, False, False, True, True, torch.float16),
    ],
    ids=["rms", "rms-all-bf16", "ln-res-prenorm", "ln-prenorm-nores-fp16"],
)
def test_add_norm_opcheck(is_rms, bias, residual, prenorm, residual_in_fp32, dtype):
    x, w, b, res = _add_norm_inputs((4, 32), dtype, bias=bias, residual=residual, seed=7)
    for t in (x, w, b, res):
        if t is not None:
            t.requires_grad_()
    torch.library.opcheck(
        torch.ops.mamba_compile.add_norm.default, (x, w, b, res, 1e-5, is_rms, prenorm, residual_in_fp32)
    )


@pytest.mark.parametrize("has_z,norm_before_gate", [(True, True), (True, False), (False, True)],
                         ids=["z-before", "z-after", "noz"])
def test_rms_norm_gated_opcheck(has_z, norm_before_gate):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3, 32, generator=g, dtype=torch.bfloat16).requires_grad_()
    w = torch.randn(32, generator=g).requires_grad_()
    z = torch.randn(3, 32, generator=g, dtype=torch.bfloat16).requires_grad_() if has_z else None
    torch.library.opcheck(torch.ops.mamba_compile.rms_norm_gated.default, (x, w, z, 1e-5, 16, norm_before_gate))


def _block(x, res, w, b, wg, z):
    out, r = layer_norm(x, w, b, res, eps=1e-5, prenorm=True, residual_in_fp32=True)
    y = rms_norm(out, w, residual=None, eps=1e-5)
    return rms_norm_gated(y, wg, z, eps=1e-5, group_size=16, norm_before_gate=False), r


def test_compile_fullgraph_dynamic_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_block, fullgraph=True, dynamic=True, backend=counter)
    g = torch.Generator().manual_seed(9)
    w, b, wg = (torch.randn(32, generator=g).requires_grad_() for _ in range(3))
    for seqlen in (3, 7, 12):
        x, res, z = (torch.randn(2, seqlen, 32, generator=g).requires_grad_() for _ in range(3))
        out, r = compiled(x, res, w, b, wg, z)
        out_e, r_e = _block(x, res, w, b, wg, z)
        torch.testing.assert_close(out, out_e)
        torch.testing.assert_close(r, r_e)
        grads = torch.autograd.grad(out.sum() + r.sum(), (x, res, w, b, wg, z))
        grads_e = torch.autograd.grad(out_e.sum() + r_e.sum(), (x, res, w, b, wg, z))
        for got, want in zip(grads, grads_e):
            torch.testing.assert_close(got, want)
    assert counter.frame_count == 1


@pytest.mark.inductor
def test_compile_inductor_matches_eager():
    compiled = torch.compile(_block, fullgraph=True, dynamic=True)
    g = torch.Generator().manual_seed(10)
    w, b, wg = (torch.randn(32, generator=g).requires_grad_() for _ in range(3))
    x, res, z = (torch.randn(2, 5, 32, generator=g).requires_grad_() for _ in range(3))
    out, r = compiled(x, res, w, b, wg, z)
    out_e, r_e = _block(x, res, w, b, wg, z)
    torch.testing.assert_close(out, out_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(r, r_e)
    dx, dw = torch.autograd.grad(out.sum(), (x, w))
    dx_e, dw_e = torch.autograd.grad(out_e.sum(), (x, w))
    torch.testing.assert_close(dx, dx_e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dw, dw_e, rtol=1e-4, atol=1e-4)


class _NormModule(torch.nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.w = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden))
        self.b = torch.nn.Parameter(0.1 * torch.randn(hidden))
        self.wg = torch.nn.Parameter(1 + 0.1 * torch.randn(hidden))

    def forward(self, x, res, z):
        return _block(x, res, self.w, self.b, self.wg, z)


def test_export_matches_eager():
    torch.manual_seed(11)
    mod = _NormModule(32)
    x, res, z = (torch.randn(2, 6, 32) for _ in range(3))
    seq = torch.export.Dim("seq", min=2, max=64)
    ep = torch.export.export(mod, (x, res, z), dynamic_shapes=({1: seq}, {1: seq}, {1: seq}))
    x2, res2, z2 = (torch.randn(2, 9, 32) for _ in range(3))
    for got, want in zip(ep.module()(x2, res2, z2), mod(x2, res2, z2)):
        torch.testing.assert_close(got, want)


def test_autocast_bf16_needs_no_casts():
    g = torch.Generator().manual_seed(12)
    x, res = torch.randn(4, 32, generator=g), torch.randn(4, 32, generator=g)
    w = torch.randn(32, generator=g)
    lin = torch.nn.Linear(32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = lin(x)  # bf16 under autocast, fp32 weight and residual
        out, r = rms_norm(h, w, residual=res, prenorm=True, residual_in_fp32=True)
    assert out.dtype == torch.bfloat16 and r.dtype == torch.float32
    ref, _ = add_norm_ref(h.double(), w.double(), residual=res.double(), eps=1e-6, is_rms=True)
    _close(out, ref, TOL[torch.bfloat16], "out")


# ---------------------------------------------------------------------------------------------
# Triton kernels, launched directly (the interpreter on CPU)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_rms", [True, False], ids=["rms", "layer"])
def test_triton_add_norm_kernels_match_oracle(is_rms):
    from mamba_compile.ops import norms_triton

    x, w, b, res = _add_norm_inputs((19, 40), torch.bfloat16, bias=True, residual=True, seed=13)
    out, r, mean, rstd = norms_triton.add_norm_fwd(x, w, b, res, 1e-5, is_rms, True, torch.float32, wrap=False)
    x64, w64, b64, res64 = _f64(x, w, b, res)
    out_ref, r_ref = add_norm_ref(x64, w64, b64, res64, eps=1e-5, is_rms=is_rms)
    _close(out, out_ref, TOL[torch.bfloat16], "out")
    _close(r, r_ref, 1e-6, "r")
    g = torch.Generator().manual_seed(14)
    dout = torch.randn(out.shape, generator=g).bfloat16()
    dr = torch.randn(r.shape, generator=g)
    dx, dw, db, dres = norms_triton.add_norm_bwd(dout, dr, x, w, b, res, mean, rstd, is_rms, wrap=False)
    refs = torch.autograd.grad(
        (out_ref * dout.double()).sum() + (r_ref * dr.double()).sum(), (x64, w64, b64, res64)
    )
    for name, got, want in zip(["x", "weight", "bias", "residual"], (dx, dw, db, dres), refs):
        _close(got, want, 2 * TOL[torch.bfloat16], f"d{name}")


@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["before", "after"])
def test_triton_rms_norm_gated_kernels_match_oracle(norm_before_gate):
    from mamba_compile.ops import norms_triton

    g = torch.Generator().manual_seed(15)
    x, z = torch.randn(21, 48, generator=g), torch.randn(21, 48, generator=g)
    w = torch.randn(48, generator=g)
    out, rstd = norms_triton.rms_norm_gated_fwd(x, w, z, 1e-5, 16, norm_before_gate, wrap=False)
    x64, w64, z64 = _f64(x, w, z)
    ref = rms_norm_gated_ref(x64, w64, z64, eps=1e-5, group_size=16, norm_before_gate=norm_before_gate)
    _close(out, ref, 2e-5, "out")
    dout = torch.randn(out.shape, generator=g)
    dx, dw, dz = norms_triton.rms_norm_gated_bwd(dout, x, w, z, rstd, 16, norm_before_gate, wrap=False)
    refs = torch.autograd.grad((ref * dout.double()).sum(), (x64, w64, z64))
    for name, got, want in zip(["x", "weight", "z"], (dx, dw, dz), refs):
        _close(got, want, 4e-5, f"d{name}")


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        (dict(weight=torch.randn(31)), ValueError, "weight"),
        (dict(bias=torch.randn(4)), ValueError, "bias"),
        (dict(residual=torch.randn(4, 31)), ValueError, "residual"),
        (dict(x=torch.randint(0, 3, (4, 32))), TypeError, "x"),
        (dict(weight=None), TypeError, "weight"),
        (dict(eps=0.0), ValueError, "eps"),
    ],
    ids=["weight-shape", "bias-shape", "residual-shape", "x-dtype", "weight-none", "eps"],
)
@pytest.mark.parametrize("norm", [rms_norm, layer_norm], ids=["rms", "layer"])
def test_add_norm_bad_inputs(norm, kwargs, exc, name):
    args = dict(x=torch.randn(4, 32), weight=torch.randn(32))
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        norm(**args)


@pytest.mark.parametrize(
    "kwargs,exc,name",
    [
        (dict(group_size=5), ValueError, "group_size"),
        (dict(z=torch.randn(4, 16)), ValueError, "z"),
        (dict(weight=torch.randn(2, 16)), ValueError, "weight"),
    ],
    ids=["group-size", "z-shape", "weight-rank"],
)
def test_rms_norm_gated_bad_inputs(kwargs, exc, name):
    args = dict(x=torch.randn(4, 32), weight=torch.randn(32))
    args.update(kwargs)
    with pytest.raises(exc, match=name):
        rms_norm_gated(**args)


def test_op_body_checks_direct_calls():
    with pytest.raises(ValueError, match="weight"):
        torch.ops.mamba_compile.add_norm(torch.randn(4, 32), torch.randn(8), None, None, 1e-5, True, False, False)


# ---------------------------------------------------------------------------------------------
# The plain-eager CUDA path past the custom ops (_EagerAddNorm, _EagerGated), on CPU through the interpreter
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("is_rms, bias, residual, prenorm, used", [
    (True, False, True, True, (0, 1)),  # as a Mamba block calls it, the gradient through r too
    (False, True, True, True, (0,)),  # r returned but unused: its gradient is materialised as zeros
    (True, True, False, False, (0,)),
], ids=["rms-prenorm", "layer-r-unused", "rms-bias-nores"])
def test_eager_add_norm_function_equals_the_op(is_rms, bias, residual, prenorm, used):
    """norms._EagerAddNorm, the plain-eager CUDA path past the custom ops, run here on CPU tensors through the Triton
    interpreter: outputs and gradients match the op's (its CPU path) to fp32 rounding."""
    from mamba_compile.ops import norms

    x, w, b, res = _add_norm_inputs((2, 9, 40), torch.float32, bias=bias, residual=residual, seed=31)
    tail = (1e-5, is_rms, prenorm, True)
    got = fwd_bwd(lambda *a: norms._EagerAddNorm.apply(*a, *tail), (x, w, b, res), used, 32)
    want = fwd_bwd(lambda *a: torch.ops.mamba_compile.add_norm(*a, *tail), (x, w, b, res), used, 32)
    assert len(got[1]) == 2 + bias + residual
    assert_same_results(got, want)


@pytest.mark.parametrize("has_z, norm_before_gate", [(True, False), (True, True), (False, True)],
                         ids=["z-after", "z-before", "noz"])
def test_eager_rms_norm_gated_function_equals_the_op(has_z, norm_before_gate):
    """norms._EagerGated (two groups) on CPU tensors through the Triton interpreter against the op's CPU path."""
    from mamba_compile.ops import norms

    g = torch.Generator().manual_seed(33)
    x, z = torch.randn(2, 7, 48, generator=g), torch.randn(2, 7, 48, generator=g) if has_z else None
    w = 1 + 0.3 * torch.randn(48, generator=g)
    tail = (1e-5, 24, norm_before_gate)
    got = fwd_bwd(lambda x, w, z: norms._EagerGated.apply(x, w, z, *tail), (x, w, z), (0,), 34)
    want = fwd_bwd(lambda x, w, z: torch.ops.mamba_compile.rms_norm_gated(x, w, z, *tail), (x, w, z), (0,), 34)
    assert len(got[1]) == 2 + has_z
    assert_same_results(got, want)  # out and rstd, and the gradients


# ---------------------------------------------------------------------------------------------
# CUDA path against the CPU path (the lead runs these with -m gpu)
# ---------------------------------------------------------------------------------------------


def _cpu_vs_cuda(fn, inputs, tol):
    """fn on CUDA and on CPU copies; compares outputs and gradients of every floating input."""
    cuda_in = [None if t is None else t.cuda().requires_grad_(t.is_floating_point()) for t in inputs]
    cpu_in = [None if t is None else t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    outs_gpu, outs_cpu = fn(*cuda_in), fn(*cpu_in)
    outs_gpu = outs_gpu if isinstance(outs_gpu, tuple) else (outs_gpu,)
    outs_cpu = outs_cpu if isinstance(outs_cpu, tuple) else (outs_cpu,)
    g = torch.Generator().manual_seed(99)
    douts = [torch.randn(o.shape, generator=g) for o in outs_cpu]
    loss_g = sum((o.float() * d.cuda()).sum() for o, d in zip(outs_gpu, douts))
    loss_c = sum((o.float() * d).sum() for o, d in zip(outs_cpu, douts))
    leaves_g = [t for t in cuda_in if t is not None]
    leaves_c = [t for t in cpu_in if t is not None]
    for o_g, o_c in zip(outs_gpu, outs_cpu):
        assert o_g.dtype == o_c.dtype
        _close(o_g.cpu(), o_c.double(), tol, "out")
    for got, want in zip(torch.autograd.grad(loss_g, leaves_g), torch.autograd.grad(loss_c, leaves_c)):
        _close(got.cpu(), want.double(), 2 * tol, "grad")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("is_rms", [True, False], ids=["rms", "layer"])
@pytest.mark.parametrize("hidden", [768, 2560, 5000])
def test_gpu_add_norm_matches_cpu(dtype, is_rms, hidden):
    x, w, b, res = _add_norm_inputs((2, 1000, hidden), dtype, bias=not is_rms, residual=True,
                                    residual_dtype=torch.float32, seed=20)
    fn = lambda x, w, b, res: (rms_norm if is_rms else layer_norm)(  # noqa: E731
        x, w, b, res, eps=1e-5, prenorm=True, residual_in_fp32=True)
    _cpu_vs_cuda(fn, (x, w, b, res), TOL[dtype])


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("norm_before_gate", [True, False], ids=["before", "after"])
def test_gpu_rms_norm_gated_matches_cpu(dtype, norm_before_gate):
    g = torch.Generator().manual_seed(21)
    x, z = (torch.randn(2, 1000, 3072, generator=g).to(dtype) for _ in range(2))
    w = 1 + 0.3 * torch.randn(3072, generator=g)
    fn = lambda x, w, z: rms_norm_gated(x, w, z, eps=1e-5, group_size=384, norm_before_gate=norm_before_gate)  # noqa: E731
    _cpu_vs_cuda(fn, (x, w, z), TOL[dtype])


@pytest.mark.gpu
def test_gpu_compile_fullgraph_dynamic_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(_block, fullgraph=True, dynamic=True, backend=counter)
    g = torch.Generator().manual_seed(22)
    w, b, wg = (torch.randn(64, generator=g).cuda().requires_grad_() for _ in range(3))
    for seqlen in (3, 7, 12):
        x, res, z = (torch.randn(2, seqlen, 64, generator=g).cuda().requires_grad_() for _ in range(3))
        out, r = compiled(x, res, w, b, wg, z)
        out_e, r_e = _block(x, res, w, b, wg, z)
        torch.testing.assert_close(out, out_e, rtol=1e-4, atol=1e-5)
        grads = torch.autograd.grad(out.sum() + r.sum(), (x, res, w))
        grads_e = torch.autograd.grad(out_e.sum() + r_e.sum(), (x, res, w))
        for got, want in zip(grads, grads_e):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert counter.frame_count == 1


@pytest.mark.gpu
def test_gpu_eager_norms_skip_the_ops_and_equal_them(monkeypatch):
    """Plain eager CUDA calls of rms_norm / layer_norm / rms_norm_gated run through norms._EagerAddNorm /
    _EagerGated, not the custom ops: the same kernels, so the same outputs and gradients bit for bit as through
    the ops (forced by making _plain_eager say no)."""
    from mamba_compile.ops import norms

    x, w, b, res = _add_norm_inputs((2, 300, 768), torch.bfloat16, bias=True, residual=True,
                                    residual_dtype=torch.float32, device="cuda", seed=35)
    z = torch.randn(x.shape, device="cuda").bfloat16()
    calls = {
        "rms": (lambda x, w, res: rms_norm(x, w, None, res, eps=1e-5, prenorm=True, residual_in_fp32=True),
                (x, w, res), (0, 1), "EagerAddNorm", "add_norm"),
        "layer": (lambda x, w, b, res: (layer_norm(x, w, b, res, eps=1e-5),), (x, w, b, res), (0,),
                  "EagerAddNorm", "add_norm"),
        "gated": (lambda x, w, z: (rms_norm_gated(x, w, z, eps=1e-5, group_size=384, norm_before_gate=False),),
                  (x, w, z), (0,), "EagerGated", "rms_norm_gated"),
    }
    for name, (fn, args, used, eager_node, op_node) in calls.items():
        nodes = []

        def spy(*a):
            outs = fn(*a)
            nodes.append(type(outs[0].grad_fn).__name__)
            return outs

        monkeypatch.setattr(norms, "_plain_eager", norms.plain_eager)
        got = fwd_bwd(spy, args, used, 36)
        monkeypatch.setattr(norms, "_plain_eager", lambda *t: False)
        want = fwd_bwd(spy, args, used, 36)
        assert eager_node in nodes[0] and op_node in nodes[1], (name, nodes)
        for i in used:
            assert torch.equal(got[0][i], want[0][i]), name
        for a, e in zip(got[1], want[1]):
            assert torch.equal(a, e), name
