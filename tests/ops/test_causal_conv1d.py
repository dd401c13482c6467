"""causal_conv1d / causal_conv1d_update against the float64 oracle in tests/reference/causal_conv1d.py.

CPU tests run the ops' torch branches; the Triton kernels are launched directly under the interpreter
on tiny shapes; ``gpu`` tests compare the CUDA path with the CPU path on realistic shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo.testing

from mamba_compile.ops import causal_conv1d, causal_conv1d_update
from tests.ops._eager_paths import assert_same_results, fwd_bwd
from tests.reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref

HAS_CUDA = torch.cuda.is_available()


def _inputs(batch=2, dim=6, seqlen=23, width=4, dtype=torch.float32, wdtype=None, *, bias=True, init=False,
            seq=False, layout="contiguous", device="cpu", seed=0, requires_grad=True):
    """Random inputs: x (batch, dim, seqlen) in the given layout, weight (dim, width), bias (dim,),
    initial_states (batch, dim, width - 1), seq_idx (batch, seqlen) with three packed sequences per row."""
    g = torch.Generator().manual_seed(seed)
    wdtype = wdtype or dtype

    def rnd(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dt)

    if layout == "channel_last":  # stride(1) == 1, like the reference's channel-last input
        x = rnd(batch, seqlen, dim).transpose(1, 2)
    elif layout == "strided":  # every other time step of a wider buffer
        x = rnd(batch, dim, 2 * seqlen)[:, :, ::2]
    else:
        x = rnd(batch, dim, seqlen)
    inp = dict(
        x=x,
        weight=rnd(dim, width, dt=wdtype) / width**0.5,
        bias=rnd(dim, dt=wdtype) if bias else None,
        initial_states=rnd(batch, dim, width - 1) if init else None,
        seq_idx=None,
    )
    if seq:
        cuts = torch.sort(torch.randint(1, seqlen, (batch, 2), generator=g), dim=1).values
        t = torch.arange(seqlen)
        inp["seq_idx"] = ((t >= cuts[:, :1]).int() + (t >= cuts[:, 1:]).int()).to(device=device, dtype=torch.int32)
    for k, v in inp.items():
        if v is not None and v.is_floating_point():
            inp[k] = v.detach().requires_grad_(requires_grad)
    return inp


def _grads(out, final, inputs, g, gf):
    names = [k for k in ("x", "weight", "bias", "initial_states") if inputs[k] is not None]
    loss = (out.double() * g).sum() + ((final.double() * gf).sum() if final is not None else 0)
    return dict(zip(names, torch.autograd.grad(loss, [inputs[k] for k in names])))


def _assert_close(got, want, tol, name):
    got, want = got.double(), want.double()
    err = (got - want).abs().max().item()
    scale = want.abs().max().item() + 1e-6
    assert err <= tol * scale, f"{name}: max abs error {err:.3g} > {tol} * {scale:.3g}"


# ----------------------------------------------------------------------------------------------
# Forward and backward against the oracle (CPU path)
# ----------------------------------------------------------------------------------------------
CASES = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(silu=True), id="silu-bias"),
    pytest.param(dict(silu=True, bias=False), id="silu-nobias"),
    pytest.param(dict(init=True, final=True, silu=True), id="init-final"),
    pytest.param(dict(final=True, seqlen=2), id="final-short"),  # seqlen < width - 1: final_states reach into the zeros
    pytest.param(dict(init=True, final=True, seqlen=2), id="init-final-short"),
    pytest.param(dict(seq=True, silu=True), id="seq_idx"),
    pytest.param(dict(width=2), id="width2"),
    pytest.param(dict(width=3, init=True), id="width3-init"),
    pytest.param(dict(width=6, silu=True), id="width6"),
    pytest.param(dict(layout="channel_last", init=True, final=True), id="channel-last"),
    pytest.param(dict(layout="strided", seq=True), id="strided"),
]
DTYPES = [
    pytest.param(torch.float32, None, 1e-5, id="fp32"),
    pytest.param(torch.bfloat16, None, 2e-2, id="bf16"),
    pytest.param(torch.bfloat16, torch.float32, 2e-2, id="bf16-x-fp32-w"),
]


@pytest.mark.parametrize("dtype, wdtype, tol", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_matches_oracle(case, dtype, wdtype, tol):
    case = dict(case)
    silu, final = case.pop("silu", False), case.pop("final", False)
    inp = _inputs(dtype=dtype, wdtype=wdtype, seed=1, **case)
    act = "silu" if silu else None
    res = causal_conv1d(inp["x"], inp["weight"], inp["bias"], inp["seq_idx"], inp["initial_states"], final, act)
    out, fin = res if final else (res, None)
    ref_out, ref_fin = causal_conv1d_ref(inp["x"], inp["weight"], inp["bias"], inp["seq_idx"], inp["initial_states"], act)
    assert out.dtype == inp["x"].dtype and out.shape == inp["x"].shape
    _assert_close(out, ref_out, tol, "out")
    if final:
        assert fin.shape == ref_fin.shape and fin.dtype == inp["x"].dtype
        _assert_close(fin, ref_fin, tol, "final_states")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    gf = torch.randn(ref_fin.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    got = _grads(out, fin, inp, g, gf)
    want = _grads(ref_out, ref_fin if final else None, inp, g, gf)
    for name in want:
        assert got[name].dtype == inp[name].dtype
        _assert_close(got[name], want[name], tol, f"d{name}")


def test_seq_idx_blocks_taps_across_sequences():
    """Changing the first sequence must not change any output of the second."""
    inp = _inputs(batch=1, seqlen=12, requires_grad=False)
    seq_idx = torch.tensor([[0] * 5 + [1] * 7], dtype=torch.int32)
    out = causal_conv1d(inp["x"], inp["weight"], inp["bias"], seq_idx)
    x2 = inp["x"].clone()
    x2[..., :5] += 10.0
    out2 = causal_conv1d(x2, inp["weight"], inp["bias"], seq_idx)
    torch.testing.assert_close(out[..., 5:], out2[..., 5:])
    assert not torch.allclose(out[..., :5], out2[..., :5])


@pytest.mark.parametrize("case", [dict(init=True, final=True), dict(seq=True)], ids=["init-final", "seq_idx"])
def test_gradcheck(case):
    case = dict(case)
    final = case.pop("final", False)
    inp = _inputs(batch=2, dim=3, seqlen=7, width=3, dtype=torch.float64, seed=4, **case)

    def f(x, weight, bias, *init):
        res = causal_conv1d(x, weight, bias, inp["seq_idx"], init[0] if init else None, final, "silu")
        return res

    args = [inp["x"], inp["weight"], inp["bias"]] + ([inp["initial_states"]] if case.get("init") else [])
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize(
    "opts",
    [
        dict(bias=True, init=False, seq=False, final=False, silu=False),
        dict(bias=True, init=True, seq=False, final=True, silu=True, layout="channel_last"),
        dict(bias=False, init=False, seq=True, final=False, silu=True),
    ],
    ids=["plain", "init-final-silu-channel-last", "seq_idx"],
)
def test_opcheck(opts):
    opts = dict(opts)
    final, silu = opts.pop("final"), opts.pop("silu")
    inp = _inputs(batch=2, dim=4, seqlen=9, seed=5, **opts)
    args = (inp["x"], inp["weight"], inp["bias"], inp["seq_idx"], inp["initial_states"], final, silu)
    torch.library.opcheck(torch.ops.mamba_compile.causal_conv1d_fwd.default, args)
    dout = torch.randn_like(inp["x"]).detach()
    dfinal = torch.randn(2, 4, 3) if final else None
    bwd_args = (*[a.detach() if isinstance(a, torch.Tensor) else a for a in args[:5]], dout, dfinal, silu)
    torch.library.opcheck(torch.ops.mamba_compile.causal_conv1d_bwd.default, bwd_args)


def test_opcheck_update():
    x = torch.randn(3, 4, 2)
    weight, bias = torch.randn(4, 4), torch.randn(4)
    for seqlens, indices in [(None, None), (torch.tensor([0, 5, 9], dtype=torch.int32), torch.tensor([2, -1, 0], dtype=torch.int32))]:
        state = torch.randn(3, 4, 5)
        torch.library.opcheck(torch.ops.mamba_compile.causal_conv1d_update.default,
                              (x, state, weight, bias, True, seqlens, indices))


# ----------------------------------------------------------------------------------------------
# Compile and export
# ----------------------------------------------------------------------------------------------
def test_compile_one_frame_fwd_bwd():
    def f(x, weight, bias, init):
        out, final = causal_conv1d(x, weight, bias, initial_states=init, return_final_states=True, activation="silu")
        return out.sum() + (final * final).sum()

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for seqlen in (5, 11, 30):
        inp = _inputs(seqlen=seqlen, init=True, seed=seqlen)
        args = [inp["x"], inp["weight"], inp["bias"], inp["initial_states"]]
        got = torch.autograd.grad(compiled(*args), args)
        want = torch.autograd.grad(f(*args), args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1


def test_compile_seq_idx_one_frame():
    def f(x, weight, seq_idx):
        return causal_conv1d(x, weight, None, seq_idx, activation="silu")

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for seqlen in (7, 13, 21):
        inp = _inputs(seqlen=seqlen, seq=True, seed=seqlen, bias=False)
        args = [inp["x"], inp["weight"], inp["seq_idx"]]
        out = compiled(*args)
        torch.testing.assert_close(out, f(*args))
        gx = torch.autograd.grad(out.sum(), inp["x"])[0]
        torch.testing.assert_close(gx, torch.autograd.grad(f(*args).sum(), inp["x"])[0])
    assert counter.frame_count == 1


@pytest.mark.inductor
def test_inductor_fwd_bwd():
    def f(x, weight, bias):
        return causal_conv1d(x, weight, bias, activation="silu").square().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for seqlen in (19,):
        inp = _inputs(seqlen=seqlen, seed=seqlen)
        args = [inp["x"], inp["weight"], inp["bias"]]
        got = torch.autograd.grad(compiled(*args), args)
        want = torch.autograd.grad(f(*args), args)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_export():
    class Conv(torch.nn.Module):
        def __init__(self, dim, width):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(dim, width))
            self.bias = torch.nn.Parameter(torch.randn(dim))

        def forward(self, x, init):
            out, final = causal_conv1d(x, self.weight, self.bias, initial_states=init, return_final_states=True,
                                       activation="silu")
            return out, final

    torch.manual_seed(6)
    m = Conv(6, 4)
    x, init = torch.randn(2, 6, 17), torch.randn(2, 6, 3)
    seqlen = torch.export.Dim("seqlen", min=2, max=4096)
    ep = torch.export.export(m, (x, init), dynamic_shapes=({2: seqlen}, None))
    for L in (17, 40):
        x = torch.randn(2, 6, L)
        got, want = ep.module()(x, init), m(x, init)
        torch.testing.assert_close(got[0], want[0])
        torch.testing.assert_close(got[1], want[1])


def test_compile_update_mutates_state():
    def step(x, state, weight, bias, seqlens, indices):
        return causal_conv1d_update(x, state, weight, bias, "silu", seqlens, indices) * 2

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, fullgraph=True, dynamic=True, backend=counter)
    torch.manual_seed(7)
    weight, bias = torch.randn(8, 4), torch.randn(8)
    state = torch.randn(5, 8, 6)
    state_eager = state.clone()
    indices = torch.tensor([3, -1, 0], dtype=torch.int32)
    for i in range(3):
        x = torch.randn(3, 8)
        seqlens = torch.tensor([i, i + 2, 7], dtype=torch.int32)
        got = compiled(x, state, weight, bias, seqlens, indices)
        want = step(x, state_eager, weight, bias, seqlens, indices)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(state, state_eager)
    assert counter.frame_count == 1


# ----------------------------------------------------------------------------------------------
# Decode: update against the oracle, and token-by-token decode reproducing the full convolution
# ----------------------------------------------------------------------------------------------
UPDATE_CASES = [
    pytest.param(dict(), id="shift"),
    pytest.param(dict(state_len=5, seqlen=3), id="shift-long-state-3tok"),
    pytest.param(dict(circular=True), id="circular"),
    pytest.param(dict(circular=True, state_len=5, seqlen=7), id="circular-wrapping-7tok"),
    pytest.param(dict(indices=True), id="indices-padding"),
    pytest.param(dict(indices=True, circular=True, seqlen=2), id="indices-circular"),
]


def _update_inputs(batch=4, dim=8, seqlen=1, width=4, state_len=None, circular=False, indices=False,
                   dtype=torch.float32, device="cpu", seed=8):
    g = torch.Generator().manual_seed(seed)
    state_len = state_len or width - 1
    cache_batch = batch + 2 if indices else batch
    inp = dict(
        x=torch.randn(batch, dim, seqlen, generator=g).to(device, dtype),
        conv_state=torch.randn(cache_batch, dim, state_len, generator=g).to(device, dtype),
        weight=torch.randn(dim, width, generator=g).to(device),
        bias=torch.randn(dim, generator=g).to(device),
        cache_seqlens=torch.randint(0, 50, (batch,), generator=g).to(device, torch.int32) if circular else None,
        conv_state_indices=None,
    )
    if indices:  # a permutation of cache rows, one padding row (-1) and one out of range
        rows = torch.randperm(cache_batch, generator=g)[:batch]
        rows[1], rows[-1] = -1, cache_batch + 3
        inp["conv_state_indices"] = rows.to(device, torch.int32)
    return inp


@pytest.mark.parametrize("case", UPDATE_CASES)
def test_update_matches_oracle(case):
    inp = _update_inputs(**case)
    want_out, want_state = causal_conv1d_update_ref(**inp, activation="silu")
    state = inp["conv_state"].clone()
    out = causal_conv1d_update(inp["x"], state, inp["weight"], inp["bias"], "silu", inp["cache_seqlens"],
                               inp["conv_state_indices"])
    _assert_close(out, want_out, 1e-5, "out")
    torch.testing.assert_close(state.double(), want_state)  # state entries are copies: exact
    if inp["conv_state_indices"] is not None:
        assert (out[1] == 0).all() and (out[-1] == 0).all()  # padding rows give zeros


def test_update_2d_x_and_bf16():
    inp = _update_inputs(dtype=torch.bfloat16, circular=True)
    x2 = inp["x"][..., 0]
    state = inp["conv_state"].clone()
    out = causal_conv1d_update(x2, state, inp["weight"], inp["bias"], None, inp["cache_seqlens"])
    want_out, want_state = causal_conv1d_update_ref(**inp)
    assert out.shape == x2.shape and out.dtype == torch.bfloat16
    _assert_close(out, want_out[..., 0], 2e-2, "out")
    torch.testing.assert_close(state.double(), want_state)


@pytest.mark.parametrize("mode", ["shift", "circular"])
@pytest.mark.parametrize("chunk", [1, 3], ids=["token-by-token", "3-tokens"])
def test_decode_reproduces_full_conv(mode, chunk):
    batch, dim, seqlen, width = 2, 6, 14, 4
    inp = _inputs(batch=batch, dim=dim, seqlen=seqlen, width=width, init=True, seed=9, requires_grad=False)
    full, final = causal_conv1d(inp["x"], inp["weight"], inp["bias"], initial_states=inp["initial_states"],
                                return_final_states=True, activation="silu")
    if mode == "shift":
        state, seqlens = inp["initial_states"].clone(), None
    else:  # circular buffer of 5 entries; the initial window sits just before position start % 5
        state_len, start = 5, torch.tensor([3, 11], dtype=torch.int32)
        state = torch.randn(batch, dim, state_len)
        for j in range(width - 1):
            state[torch.arange(batch), :, (start - (width - 1) + j) % state_len] = inp["initial_states"][:, :, j]
        seqlens = start.clone()
    outs = []
    for t0 in range(0, seqlen, chunk):
        xt = inp["x"][:, :, t0 : t0 + chunk]
        outs.append(causal_conv1d_update(xt, state, inp["weight"], inp["bias"], "silu", seqlens))
        if seqlens is not None:
            seqlens = seqlens + xt.shape[-1]
    torch.testing.assert_close(torch.cat(outs, dim=-1), full)
    if mode == "shift":
        torch.testing.assert_close(state, final)
    else:
        idx = (seqlens[:, None] - (width - 1) + torch.arange(width - 1)) % state.shape[-1]
        torch.testing.assert_close(state.gather(2, idx[:, None, :].expand(-1, dim, -1)), final)


def test_update_is_not_differentiable():
    inp = _update_inputs()
    weight = inp["weight"].requires_grad_()
    out = causal_conv1d_update(inp["x"], inp["conv_state"], weight, inp["bias"])
    with pytest.raises(RuntimeError, match="causal_conv1d_update"):
        out.sum().backward()


def test_autocast_keeps_input_dtype():
    inp = _inputs(requires_grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = causal_conv1d(inp["x"], inp["weight"], inp["bias"], activation="silu")
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, causal_conv1d(inp["x"], inp["weight"], inp["bias"], activation="silu"))


# ----------------------------------------------------------------------------------------------
# Bad inputs: error type, and the message names the argument
# ----------------------------------------------------------------------------------------------
def _bad_conv_calls():
    x, w, b = torch.randn(2, 4, 8), torch.randn(4, 4), torch.randn(4)
    seq = torch.zeros(2, 8, dtype=torch.int32)
    return [
        pytest.param(lambda: causal_conv1d(x[0], w), ValueError, "x", id="x-rank"),
        pytest.param(lambda: causal_conv1d(x.long(), w), TypeError, "x", id="x-dtype"),
        pytest.param(lambda: causal_conv1d(x, torch.randn(4, 1)), ValueError, "width", id="width-1"),
        pytest.param(lambda: causal_conv1d(x, torch.randn(5, 4)), ValueError, "weight", id="weight-dim"),
        pytest.param(lambda: causal_conv1d(x, torch.randn(4, 4, 1)), ValueError, "weight", id="weight-rank"),
        pytest.param(lambda: causal_conv1d(x, w, torch.randn(3)), ValueError, "bias", id="bias-shape"),
        pytest.param(lambda: causal_conv1d(x, w, b, seq.long()), TypeError, "seq_idx", id="seq_idx-dtype"),
        pytest.param(lambda: causal_conv1d(x, w, b, seq[:, :5]), ValueError, "seq_idx", id="seq_idx-shape"),
        pytest.param(lambda: causal_conv1d(x, w, b, seq, torch.randn(2, 4, 3)), ValueError, "seq_idx", id="seq_idx-init"),
        pytest.param(lambda: causal_conv1d(x, w, b, initial_states=torch.randn(2, 4, 4)), ValueError,
                     "initial_states", id="init-shape"),
        pytest.param(lambda: causal_conv1d(x, w, activation="relu"), ValueError, "activation", id="activation"),
        pytest.param(lambda: causal_conv1d(x, w.to("meta")), ValueError, "weight", id="device"),
        pytest.param(lambda: torch.ops.mamba_compile.causal_conv1d_fwd(x, torch.randn(3, 4), None, None, None, False, False),
                     ValueError, "weight", id="op-checks-too"),
    ]


def _bad_update_calls():
    x, w, state = torch.randn(2, 4), torch.randn(4, 4), torch.randn(2, 4, 3)
    return [
        pytest.param(lambda: causal_conv1d_update(x[0], state, w), ValueError, "x", id="x-rank"),
        pytest.param(lambda: causal_conv1d_update(x, state[..., :2], w), ValueError, "conv_state", id="state-short"),
        pytest.param(lambda: causal_conv1d_update(x, torch.randn(3, 4, 3), w), ValueError, "conv_state",
                     id="state-batch"),
        pytest.param(lambda: causal_conv1d_update(x, torch.randn(2, 5, 3), w), ValueError, "conv_state", id="state-dim"),
        pytest.param(lambda: causal_conv1d_update(x, state, w, cache_seqlens=torch.zeros(2)), TypeError,
                     "cache_seqlens", id="seqlens-dtype"),
        pytest.param(lambda: causal_conv1d_update(x, state, w, conv_state_indices=torch.zeros(3, dtype=torch.int32)),
                     ValueError, "conv_state_indices", id="indices-shape"),
        pytest.param(lambda: causal_conv1d_update(x, state, torch.randn(4, 1)), ValueError, "weight", id="width"),
        pytest.param(lambda: causal_conv1d_update(x, state, w, activation="gelu"), ValueError, "activation",
                     id="activation"),
    ]


@pytest.mark.parametrize("call, exc, name", _bad_conv_calls() + _bad_update_calls())
def test_bad_inputs(call, exc, name):
    with pytest.raises(exc, match=name):
        call()


# ----------------------------------------------------------------------------------------------
# Triton kernels, launched directly (interpreter on CPU; compiled on CUDA). Tiny shapes, and blocks
# smaller than the sequence so tiles and their halos cross block boundaries.
# ----------------------------------------------------------------------------------------------
KERNEL_CASES = [
    pytest.param(dict(init=True, final=True, silu=True), id="init-final-silu"),
    pytest.param(dict(seq=True, silu=True, layout="channel_last"), id="seq_idx-channel-last"),
    pytest.param(dict(width=2, bias=False, final=True, seqlen=1), id="width2-seqlen1"),
]


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_triton_kernels_direct(case):
    from mamba_compile.ops import causal_conv1d_triton as kernels

    case = dict(case)
    silu, final = case.pop("silu", False), case.pop("final", False)
    opts = dict(dict(batch=2, dim=5, seqlen=13), **case)
    device = "cuda" if HAS_CUDA else "cpu"
    inp = _inputs(**opts, seed=10, device=device, requires_grad=False)
    args = (inp["x"], inp["weight"], inp["bias"], inp["seq_idx"], inp["initial_states"])
    out, fin = kernels.causal_conv1d_fwd(*args, final, silu, wrap=False, block_d=4, block_l=8)
    cpu = {k: (v.cpu().requires_grad_(v.is_floating_point()) if v is not None else None) for k, v in inp.items()}
    ref_out, ref_fin = causal_conv1d_ref(cpu["x"], cpu["weight"], cpu["bias"], cpu["seq_idx"], cpu["initial_states"],
                                         "silu" if silu else None)
    _assert_close(out.cpu(), ref_out, 1e-5, "out")
    if final:
        _assert_close(fin.cpu(), ref_fin, 1e-6, "final_states")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
    gf = torch.randn(ref_fin.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    dx, dw, db, dinit = kernels.causal_conv1d_bwd(*args, g.to(device, torch.float32),
                                                  gf.to(device, torch.float32) if final else None, silu,
                                                  wrap=False, block_d=4, block_l=8)
    want = _grads(ref_out, ref_fin if final else None, cpu, g, gf)
    got = dict(x=dx, weight=dw, bias=db, initial_states=dinit)
    for name in want:
        _assert_close(got[name].cpu(), want[name], 1e-5, f"d{name}")


ROWS_CASES = [
    pytest.param(dict(silu=True, seqlen=29), id="w4-silu"),
    pytest.param(dict(width=2, bias=False, seqlen=1), id="w2-nobias-seqlen1"),
    pytest.param(dict(width=3, dtype=torch.bfloat16, silu=True, seqlen=16), id="w3-bf16"),
    pytest.param(dict(width=4, dtype=torch.bfloat16, seqlen=7), id="w4-bf16-short"),
]


def _rows_case(case, seed):
    """(silu, device, x, weight, bias, config) for the row kernels' tests: channel-last x (batch 2, 13 channels),
    segments of 8 steps in blocks of 4 rows, 8 channels per program."""
    case = dict(case)
    silu = case.pop("silu", False)
    device = "cuda" if HAS_CUDA else "cpu"
    inp = _inputs(**dict(dict(batch=2, dim=13, layout="channel_last"), **case), seed=seed, device=device,
                  requires_grad=False)
    return silu, device, inp["x"], inp["weight"], inp["bias"], (8, 4, 8, 4, 1)  # BLOCK_D, R, SEG, VEC, num_warps


@pytest.mark.parametrize("case", ROWS_CASES)
def test_triton_rows_backward_direct(case):
    """The row-walking channel-last backward against float64 autograd of the reference, and against the two-kernel
    path: dx the same bits under the interpreter (the same dy, taps in the same order), dweight / dbias summed in
    another order. Segments of 8 steps in blocks of 4 rows, so windows and the recomputed dy past a segment's end
    cross blocks and segments."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    silu, device, x, weight, bias, config = _rows_case(case, seed=40)
    gen = torch.Generator().manual_seed(41)
    # dout with contiguous channels too, as Mamba-2's conv output gradient arrives
    dout = torch.randn(x.shape[0], x.shape[2], x.shape[1], generator=gen).to(device, x.dtype).transpose(1, 2)
    got = kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, silu, wrap=False, rows=True,
                                    rows_config=config)
    assert kernels._rows_apply(weight.shape[1], None, None, x, got[0], dout)  # the row kernel is what ran
    ref = [t.cpu().double().requires_grad_() if t is not None else None for t in (x, weight, bias)]
    ref_out, _ = causal_conv1d_ref(*ref, None, None, "silu" if silu else None)
    want = torch.autograd.grad((ref_out * dout.cpu().double()).sum(), [t for t in ref if t is not None])
    tol = 8e-3 if x.dtype == torch.bfloat16 else 1e-5  # 16-bit gradients: their rounding
    for name, a, b in zip(("dx", "dweight", "dbias"), got, want):
        _assert_close(a.cpu(), b, tol, name)
    two = kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, silu, wrap=False, rows=False)
    if device == "cpu":
        torch.testing.assert_close(got[0], two[0], rtol=0, atol=0)
    else:  # ptxas contracts multiplies and adds into FMAs differently in the two paths
        _assert_close(got[0].cpu(), two[0].cpu(), 8e-3, "dx")
    for name, a, b in zip(("dweight", "dbias"), got[1:3], two[1:3]):
        if b.numel():
            _assert_close(a.cpu(), b.cpu(), 1e-5 if x.dtype == torch.float32 else 8e-3, name)


@pytest.mark.parametrize("case", ROWS_CASES)
def test_triton_rows_forward_direct(case):
    """The row-walking channel-last forward against the float64 reference and the general kernel (the same fp32
    sums in the same order: the same bits under the interpreter)."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    silu, device, x, weight, bias, config = _rows_case(case, seed=42)
    out, _ = kernels.causal_conv1d_fwd(x, weight, bias, None, None, False, silu, wrap=False, rows=True,
                                       rows_config=config)
    assert out.stride() == x.stride() and kernels._rows_apply(weight.shape[1], None, None, x, out)
    ref = [t.cpu().double() if t is not None else None for t in (x, weight, bias)]
    want, _ = causal_conv1d_ref(*ref, None, None, "silu" if silu else None)
    _assert_close(out.cpu(), want, 8e-3 if x.dtype == torch.bfloat16 else 1e-5, "out")
    general, _ = kernels.causal_conv1d_fwd(x, weight, bias, None, None, False, silu, wrap=False, rows=False)
    if device == "cpu":
        torch.testing.assert_close(out, general, rtol=0, atol=0)
    else:
        _assert_close(out.cpu(), general.cpu(), 8e-3, "out")
    if bias is not None:  # a strided bias gives the same result
        strided = torch.stack([bias, -bias], 1)[:, 0]
        again, _ = kernels.causal_conv1d_fwd(x, weight, strided, None, None, False, silu, wrap=False, rows=True,
                                             rows_config=config)
        torch.testing.assert_close(again, out, rtol=0, atol=0)


def test_rows_kernels_apply_only_where_they_can():
    from mamba_compile.ops import causal_conv1d_triton as kernels

    x = torch.randn(2, 12, 4).transpose(1, 2)  # (2, 4, 12), channels contiguous
    tc = x.contiguous()
    seq = torch.zeros(2, 12, dtype=torch.int32)
    assert kernels._rows_apply(4, None, None, x, x, x)
    assert not kernels._rows_apply(4, None, None, tc, tc)  # time-contiguous
    assert not kernels._rows_apply(4, None, None, x, x, tc)  # dout time-contiguous
    assert not kernels._rows_apply(4, seq, None, x, x)
    assert not kernels._rows_apply(4, None, torch.randn(2, 4, 3), x, x)
    assert not kernels._rows_apply(5, None, None, x, x)  # width 5
    w = torch.randn(4, 4)
    with pytest.raises(ValueError, match="R = 2 must be at least width - 1 = 3"):
        kernels.causal_conv1d_bwd(x, w, None, None, None, x, None, True, wrap=False, rows=True,
                                  rows_config=(8, 2, 8, 4, 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("width,seqlen", [(4, 14), (3, 6), (2, 2)], ids=["w4-l14", "w3-l6", "w2-l2"])
def test_triton_pairs_kernel_direct(dtype, width, seqlen):
    """The 16-bit pair forward (int32 loads of x pairs, outputs packed back in pairs) against the float64
    reference; blocks of 4 pairs so tiles and the two-pair halo cross block boundaries."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    device = "cuda" if HAS_CUDA else "cpu"
    g = torch.Generator().manual_seed(20 + width)
    x = torch.randn(2, 6, seqlen, generator=g).to(device, dtype)
    weight, bias = torch.randn(6, width, generator=g).to(device), torch.randn(6, generator=g).to(device)
    out, fin = kernels.causal_conv1d_fwd(x, weight, bias, None, None, True, True, wrap=False, block_d=4, block_l=8,
                                         pairs=True)
    assert kernels._pairs_apply(x, out, None, None)  # the pair kernel is what ran
    ref_out, ref_fin = causal_conv1d_ref(x.cpu().double(), weight.cpu().double(), bias.cpu().double(), None, None,
                                         "silu")
    scale = ref_out.abs().max().item()
    assert (out.cpu().double() - ref_out).abs().max().item() <= 8e-3 * scale  # 16-bit output rounding
    torch.testing.assert_close(fin.cpu().double(), ref_fin, rtol=0, atol=0)  # copies of the inputs
    # the same fp32 sums in the same order as the general kernel: equal bit for bit (compiled graphs with
    # symbolic lengths take the general kernel, eager calls this one)
    general = kernels.causal_conv1d_fwd(x, weight, bias, None, None, True, True, wrap=False, block_d=4, block_l=8,
                                        pairs=False)
    torch.testing.assert_close(out, general[0], rtol=0, atol=0)


def _nan_framed(batch, dim, seqlen, generator, device, dtype):
    """Random (batch, dim, seqlen) values inside a NaN-filled buffer with two NaN steps before and after each row:
    a kernel reading outside the tensor puts NaN into what it computes."""
    buf = torch.full((batch, dim, seqlen + 4), float("nan"), device=device, dtype=dtype)
    x = buf[..., 2:seqlen + 2]
    x.copy_(torch.randn(batch, dim, seqlen, generator=generator).to(device, dtype))
    return x


@pytest.mark.parametrize("kernel,dtype", [("pairs", torch.bfloat16), ("pairs", torch.float16),
                                          ("runs-nv1", torch.bfloat16), ("runs-nv1", torch.float16),
                                          ("runs-nv2", torch.bfloat16)],
                         ids=["pairs-bf16", "pairs-fp16", "runs-nv1-bf16", "runs-nv1-fp16", "runs-nv2-bf16"])
@pytest.mark.parametrize("silu", [True, False], ids=["silu", "none"])
@pytest.mark.parametrize("width,seqlen", [(4, 14), (3, 6), (2, 2), (4, 24)], ids=["w4-l14", "w3-l6", "w2-l2", "w4-l24"])
def test_triton_pairs_backward_direct(dtype, width, seqlen, silu, kernel):
    """The one-kernel 16-bit backwards against float64 autograd of the reference: the pair kernel (dy recomputed at
    the W+1 steps each output pair reads; blocks of 4 pairs) and the run-per-thread kernel (a thread's 4 or 8 pairs
    split into steps, dy once per step; two runs a program), so that tiles, runs and halos cross block boundaries.
    x and dout sit in NaN-framed buffers, so a read outside them shows. dx follows the two-kernel path's arithmetic
    (same dy, same order of taps): under the interpreter the same bits, compiled within a 16-bit rounding step (ptxas
    contracts into FMAs differently); dweight / dbias are summed in another order."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    device = "cuda" if HAS_CUDA else "cpu"
    g = torch.Generator().manual_seed(30 + width + seqlen)
    x = _nan_framed(2, 6, seqlen, g, device, dtype)
    weight, bias = torch.randn(6, width, generator=g).to(device), torch.randn(6, generator=g).to(device)
    dout = _nan_framed(2, 6, seqlen, g, device, dtype)
    chosen = dict(runs=False) if kernel == "pairs" else dict(runs=True, runs_config=(2, 2, int(kernel[-1]), 1))
    got = kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, silu, wrap=False, block_d=4,
                                    block_l=8, pairs=True, **chosen)
    assert kernels._pairs_apply(x, got[0], None, None, dout)  # a one-kernel backward is what ran
    xr, wr, br = (t.cpu().double().requires_grad_() for t in (x, weight, bias))
    ref_out, _ = causal_conv1d_ref(xr, wr, br, None, None, "silu" if silu else None)
    want = torch.autograd.grad((ref_out * dout.cpu().double()).sum(), [xr, wr, br])
    for name, a, b, tol in zip(("dx", "dweight", "dbias"), got[:3], want, (8e-3, 1e-5, 1e-5)):
        _assert_close(a.cpu(), b, tol, name)  # dx: 16-bit output rounding
    two = kernels.causal_conv1d_bwd(x, weight, bias, None, None, dout, None, silu, wrap=False, block_d=4,
                                    block_l=8, pairs=False)
    if device == "cpu":
        torch.testing.assert_close(got[0], two[0], rtol=0, atol=0)
    else:
        _assert_close(got[0].cpu(), two[0].cpu(), 8e-3, "dx")
    for name, a, b in zip(("dweight", "dbias"), got[1:3], two[1:3]):
        _assert_close(a.cpu(), b.cpu(), 1e-6, name)


def test_runs_backward_is_the_default_where_pairs_apply(monkeypatch):
    """A 16-bit backward with contiguous time takes the run-per-thread kernel, fp32 the two-kernel path; its
    blocks hold 128 threads, one run each, at any length."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    launched, launcher = [], kernels.launcher
    monkeypatch.setattr(kernels, "launcher", lambda k, wrap=True: launched.append(k.fn.__name__) or launcher(k, wrap))
    g = torch.Generator().manual_seed(5)
    x, dout, w = (torch.randn(*shape, generator=g).to("cuda" if HAS_CUDA else "cpu")
                  for shape in ((1, 3, 10), (1, 3, 10), (3, 4)))
    kernels.causal_conv1d_bwd(x.bfloat16(), w, None, None, None, dout.bfloat16(), None, True, wrap=False)
    assert launched == ["_causal_conv1d_bwd_runs_kernel"]
    launched.clear()
    kernels.causal_conv1d_bwd(x, w, None, None, None, dout, None, True, wrap=False)
    assert launched == ["_causal_conv1d_bwd_dy_kernel", "_causal_conv1d_bwd_dx_kernel"]
    for seqlen in (2, 6, 64, 2048, 8192):
        block_d, nt, nv, warps = kernels._bwd_runs_blocks(seqlen)
        assert block_d * nt == 32 * warps


def test_bad_input_beyond_32bit_offsets_on_cuda_is_refused():
    """A channel-last x (or dout) whose batch row spans 2**31 elements would overflow the kernels' 32-bit offsets:
    the check (run on meta tensors, as on CUDA ones: it depends only on sizes and strides) refuses it by name."""
    import importlib

    conv_module = importlib.import_module("mamba_compile.ops.causal_conv1d")
    batch, dim, seqlen = 2, 4096, 600_000  # (seqlen - 1) * dim: 2.5e9
    x = torch.empty_strided((batch, dim, seqlen), (seqlen * dim, 1, dim), device="meta", dtype=torch.bfloat16)
    weight = torch.empty(dim, 4, device="meta", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="x with strides"):
        conv_module._check_conv(x, weight, None, None, None, False)
    small = x[:, :, :1000]
    conv_module._check_conv(small, weight, None, None, None, False)  # 4e6 elements: accepted


def test_pairs_kernel_applies_only_where_it_can():
    from mamba_compile.ops import causal_conv1d_triton as kernels

    x = torch.randn(2, 4, 12, dtype=torch.bfloat16)
    seq = torch.zeros(2, 12, dtype=torch.int32)
    assert kernels._pairs_apply(x, x, None, None)
    assert not kernels._pairs_apply(x.float(), x.float(), None, None)  # 32-bit
    assert not kernels._pairs_apply(x[..., :11], x[..., :11], None, None)  # odd length
    assert not kernels._pairs_apply(x[..., 1:11], x[..., 1:11], None, None)  # odd offset: pairs not 4-byte aligned
    cl = x.transpose(1, 2).contiguous().transpose(1, 2)
    assert not kernels._pairs_apply(cl, cl, None, None)  # channel-last
    assert not kernels._pairs_apply(x, x, seq, None)
    assert not kernels._pairs_apply(x, x, None, torch.randn(2, 4, 3))
    assert kernels._pairs_apply(x, x, None, None, x.clone())  # the backward's dout
    assert not kernels._pairs_apply(x, x, None, None, x.half())  # dout of another dtype
    assert not kernels._pairs_apply(x, x, None, None, cl)  # channel-last dout


@pytest.mark.parametrize(
    "case",
    [pytest.param(dict(state_len=5, seqlen=3), id="shift"),
     pytest.param(dict(circular=True, indices=True, state_len=5, seqlen=7), id="circular-indices-wrapping")],
)
def test_triton_update_direct(case):
    from mamba_compile.ops import causal_conv1d_triton as kernels

    device = "cuda" if HAS_CUDA else "cpu"
    inp = _update_inputs(batch=3, dim=5, **case, device=device)
    cpu = {k: v.cpu() if v is not None else None for k, v in inp.items()}
    want_out, want_state = causal_conv1d_update_ref(**cpu, activation="silu")
    state = inp["conv_state"].clone()
    out = kernels.causal_conv1d_update(inp["x"], state, inp["weight"], inp["bias"], True, inp["cache_seqlens"],
                                       inp["conv_state_indices"], wrap=False)
    _assert_close(out.cpu(), want_out, 1e-5, "out")
    torch.testing.assert_close(state.cpu().double(), want_state)


# ----------------------------------------------------------------------------------------------
# GPU: the CUDA path (eager, through the op) against the CPU path on realistic shapes
# ----------------------------------------------------------------------------------------------
GPU_CASES = [
    pytest.param(dict(), id="silu-bias"),
    pytest.param(dict(init=True, final=True), id="init-final"),
    pytest.param(dict(seq=True), id="seq_idx"),
    pytest.param(dict(layout="channel_last", init=True, final=True), id="channel-last"),
    pytest.param(dict(width=3, seqlen=1000), id="width3-ragged"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tol", [pytest.param(torch.bfloat16, 1e-2, id="bf16"),
                                        pytest.param(torch.float32, 1e-5, id="fp32")])
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_matches_cpu(case, dtype, tol):
    case = dict(case)
    final = case.pop("final", False)
    opts = dict(dict(batch=2, dim=768, seqlen=2048, dtype=dtype, wdtype=torch.float32, seed=13), **case)
    gpu = _inputs(**opts, device="cuda")
    cpu = {k: (v.detach().cpu().float().requires_grad_() if v is not None and v.is_floating_point()
               else (v.cpu() if v is not None else None)) for k, v in gpu.items()}

    def run(t):
        res = causal_conv1d(t["x"], t["weight"], t["bias"], t["seq_idx"], t["initial_states"], final, "silu")
        return res if final else (res, None)

    out, fin = run(gpu)
    ref_out, ref_fin = run(cpu)
    assert out.dtype == dtype
    _assert_close(out.cpu(), ref_out, tol, "out")
    if final:
        _assert_close(fin.cpu(), ref_fin, tol, "final_states")
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(14), dtype=torch.float64)
    gf = torch.randn(ref_fin.shape, generator=torch.Generator().manual_seed(15), dtype=torch.float64) if final else None
    names = [k for k in ("x", "weight", "bias", "initial_states") if gpu[k] is not None]
    loss_g = (out * g.to("cuda", dtype)).sum() + ((fin * gf.to("cuda", dtype)).sum() if final else 0)
    got = torch.autograd.grad(loss_g, [gpu[k] for k in names])
    loss_c = (ref_out * g.to(ref_out.dtype)).sum() + ((ref_fin * gf.to(ref_fin.dtype)).sum() if final else 0)
    want = torch.autograd.grad(loss_c, [cpu[k] for k in names])
    for name, a, b in zip(names, got, want):
        # dweight / dbias sum over batch * seqlen terms: looser for bf16 gradients
        _assert_close(a.cpu(), b, tol * (4 if name in ("weight", "bias") else 1), f"d{name}")


@pytest.mark.gpu
def test_gpu_direct_launch_matches_cpu():
    """The kernels launched without wrap_triton: if this passes and test_gpu_matches_cpu fails, the
    fault is in the eager triton_op launch path, not in the kernels."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    gpu = _inputs(batch=2, dim=768, seqlen=2048, dtype=torch.bfloat16, wdtype=torch.float32, init=True,
                  device="cuda", seed=17, requires_grad=False)
    cpu = {k: v.cpu() if v is not None else None for k, v in gpu.items()}
    args = ("x", "weight", "bias", "seq_idx", "initial_states")
    out, fin = kernels.causal_conv1d_fwd(*[gpu[k] for k in args], True, True, wrap=False)
    ref_out, ref_fin = torch.ops.mamba_compile.causal_conv1d_fwd(*[cpu[k] for k in args], True, True)
    _assert_close(out.cpu(), ref_out, 1e-2, "out")
    _assert_close(fin.cpu(), ref_fin, 1e-2, "final_states")
    dout, dfin = torch.randn_like(gpu["x"]), torch.randn_like(fin)
    got = kernels.causal_conv1d_bwd(*[gpu[k] for k in args], dout, dfin, True, wrap=False)
    want = torch.ops.mamba_compile.causal_conv1d_bwd(*[cpu[k] for k in args], dout.cpu(), dfin.cpu(), True)
    for name, a, b in zip(("dx", "dweight", "dbias", "dinitial_states"), got, want):
        _assert_close(a.cpu(), b, 4e-2 if name in ("dweight", "dbias") else 1e-2, name)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
@pytest.mark.parametrize("case", [dict(), dict(circular=True, indices=True, state_len=8, seqlen=2)],
                         ids=["shift", "circular-indices"])
def test_gpu_update_matches_cpu(case, dtype):
    inp = _update_inputs(batch=64, dim=3072, dtype=dtype, device="cuda", **case)
    cpu = {k: v.cpu() if v is not None else None for k, v in inp.items()}
    state_gpu, state_cpu = inp["conv_state"].clone(), cpu["conv_state"].clone()
    out = causal_conv1d_update(inp["x"], state_gpu, inp["weight"], inp["bias"], "silu",
                               inp["cache_seqlens"], inp["conv_state_indices"])
    ref = causal_conv1d_update(cpu["x"], state_cpu, cpu["weight"], cpu["bias"], "silu", cpu["cache_seqlens"],
                               cpu["conv_state_indices"])
    _assert_close(out.cpu(), ref, 1e-2 if dtype == torch.bfloat16 else 1e-5, "out")
    torch.testing.assert_close(state_gpu.cpu(), state_cpu)


@pytest.mark.gpu
def test_gpu_compile_one_frame():
    def f(x, weight, bias):
        return causal_conv1d(x, weight, bias, activation="silu").float().square().sum()

    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, fullgraph=True, dynamic=True, backend=counter)
    for seqlen in (300, 1000, 2048):
        inp = _inputs(batch=2, dim=256, seqlen=seqlen, dtype=torch.bfloat16, wdtype=torch.float32,
                      device="cuda", seed=seqlen)
        args = [inp["x"], inp["weight"], inp["bias"]]
        got = torch.autograd.grad(compiled(*args), args)
        want = torch.autograd.grad(f(*args), args)
        for a, b in zip(got, want):
            # eager takes the pair kernels, the graph with a symbolic length the general ones: the same fp32 sums
            # up to FMA contraction, so dx (bf16) within a rounding step
            _assert_close(a, b, 8e-3, "grad")
    assert counter.frame_count == 1


@pytest.mark.gpu
@pytest.mark.inductor
def test_gpu_rows_kernels_under_inductor(monkeypatch):
    """The row kernels (off by default until timed) inside a graph Inductor compiled with dynamic shapes, on
    channel-last x as Mamba-2 passes it (a slice of a wider row): forward and gradients against eager with the
    general kernels."""
    from mamba_compile.ops import causal_conv1d_triton as kernels

    def f(x, weight, bias):
        return causal_conv1d(x, weight, bias, activation="silu").float().square().sum()

    compiled = torch.compile(f, fullgraph=True, dynamic=True)
    for seqlen in (300, 1000):
        g = torch.Generator(device="cuda").manual_seed(seqlen)
        wide = torch.randn(2, seqlen, 400, device="cuda", dtype=torch.bfloat16, generator=g, requires_grad=True)
        weight = torch.randn(256, 4, device="cuda", generator=g, requires_grad=True)
        bias = torch.randn(256, device="cuda", generator=g, requires_grad=True)
        args = [wide, weight, bias]

        def run(fn, rows):
            monkeypatch.setattr(kernels, "_FWD_ROWS", rows)
            monkeypatch.setattr(kernels, "_BWD_ROWS", rows)
            x = wide[..., 100:356].transpose(1, 2)  # (2, 256, seqlen), channels contiguous
            return torch.autograd.grad(fn(x, weight, bias), args)

        got, want = run(compiled, True), run(f, False)
        for a, b in zip(got, want):
            _assert_close(a, b, 8e-3, "grad")  # 16-bit dx: a rounding step (FMA contraction differs)


@pytest.mark.gpu
@pytest.mark.inductor
def test_gpu_inductor_fwd_bwd():
    def f(x, weight, bias):
        return causal_conv1d(x, weight, bias, activation="silu").float().square().sum()

    compiled = torch.compile(f, fullgraph=True)
    inp = _inputs(batch=2, dim=256, seqlen=1024, dtype=torch.bfloat16, wdtype=torch.float32, device="cuda", seed=16)
    args = [inp["x"], inp["weight"], inp["bias"]]
    got = torch.autograd.grad(compiled(*args), args)
    want = torch.autograd.grad(f(*args), args)
    for a, b in zip(got, want):
        _assert_close(a, b, 1e-4, "grad")


# ----------------------------------------------------------------------------------------------
# The plain-eager CUDA path past the custom ops (_EagerConv)
# ----------------------------------------------------------------------------------------------
def _conv_module():
    import importlib

    return importlib.import_module("mamba_compile.ops.causal_conv1d")  # the package exports the function by name


def _conv_inputs(inp):
    return [inp[k] for k in ("x", "weight", "bias", "seq_idx", "initial_states")]


@pytest.mark.skipif(HAS_CUDA, reason="interpreter test; the gpu test covers the CUDA kernels")
@pytest.mark.parametrize("case", [
    pytest.param(dict(init=True, final=True, silu=True), id="init-final-silu"),
    pytest.param(dict(seq=True, layout="channel_last"), id="seq_idx-channel-last"),
    pytest.param(dict(final=True, bias=False, width=3), id="final-unused-nobias-w3"),
])
def test_eager_conv_function_equals_the_op(case):
    """_EagerConv, the plain-eager CUDA path past the custom ops, run on CPU tensors through the Triton interpreter:
    outputs and gradients match the op's (its CPU path) to fp32 rounding. In the last case final_states is returned
    but its gradient left out (materialised as zeros)."""
    case = dict(case)
    silu, final = case.pop("silu", False), case.pop("final", False)
    used = (0, 1) if final and case.get("bias", True) else (0,)  # out, and final_states where its gradient is used
    inp = _inputs(**dict(dict(batch=2, dim=5, seqlen=13), **case), seed=40, requires_grad=False)
    conv = _conv_module()
    got = fwd_bwd(lambda *a: conv._EagerConv.apply(*a, final, silu), _conv_inputs(inp), used, 41)
    want = fwd_bwd(lambda *a: torch.ops.mamba_compile.causal_conv1d_fwd(*a, final, silu), _conv_inputs(inp), used, 41)
    assert_same_results(got, want)


@pytest.mark.gpu
def test_gpu_eager_conv_skips_the_op_and_equals_it(monkeypatch):
    """Plain eager CUDA calls of causal_conv1d run through _EagerConv, not the custom ops: the same kernels, so the
    same outputs and gradients bit for bit as through the op (forced by making _plain_eager say no); channel-last
    bf16 x, as the Mamba blocks pass it, with initial and final states and with seq_idx."""
    conv = _conv_module()
    for opts, final in ((dict(init=True), True), (dict(seq=True), False)):
        inp = _inputs(batch=2, dim=256, seqlen=300, dtype=torch.bfloat16, layout="channel_last", device="cuda",
                      seed=42, requires_grad=False, **opts)
        nodes = []

        def spy(*a):
            out = causal_conv1d(*a, return_final_states=final, activation="silu")
            out, fin = out if final else (out, None)
            nodes.append(type(out.grad_fn).__name__)
            return out, fin

        monkeypatch.setattr(conv, "_plain_eager", conv.plain_eager)
        got = fwd_bwd(spy, _conv_inputs(inp), (0, 1) if final else (0,), 43)
        monkeypatch.setattr(conv, "_plain_eager", lambda *t: False)
        want = fwd_bwd(spy, _conv_inputs(inp), (0, 1) if final else (0,), 43)
        assert "EagerConv" in nodes[0] and "causal_conv1d_fwd" in nodes[1], nodes
        for a, e in zip(got[0], want[0]):
            assert (a is None and e is None) or torch.equal(a, e)
        for a, e in zip(got[1], want[1]):
            assert torch.equal(a, e)
