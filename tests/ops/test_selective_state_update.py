"""selective_state_update (one decode token, state updated in place) against the float64 oracle."""

import pytest
import torch
import torch._dynamo.testing

from mamba_compile.ops import selective_state_update
from tests.reference.selective_state_update import selective_state_update_ref

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}


def _inputs(
    layout, batch, *, dim=24, nheads=4, headdim=6, dstate=8, ngroups=2, dtype=torch.float32,
    state_dtype=torch.float32, expanded=True, D=True, z=True, dt_bias=True, nstates=None,
    device="cpu", seed=0,
):
    """Random decode inputs; Mamba-2 dt / dt_bias / A / D are stride-0 expansions when ``expanded``."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    nstates = batch if nstates is None else nstates
    if layout == "mamba1":
        state = rnd(nstates, dim, dstate)
        x, dt_, zz = rnd(batch, dim), 0.5 * rnd(batch, dim), rnd(batch, dim)
        A = -torch.rand(dim, dstate, generator=g) - 0.1
        B, C = rnd(batch, dstate), rnd(batch, dstate)
        DD, dtb = rnd(dim), 0.5 * rnd(dim)
    else:
        state = rnd(nstates, nheads, headdim, dstate)
        x, zz = rnd(batch, nheads, headdim), rnd(batch, nheads, headdim)
        B, C = rnd(batch, ngroups, dstate), rnd(batch, ngroups, dstate)
        if expanded:  # how the Mamba-2 block calls it: one value per head, broadcast with stride 0
            dt_ = (0.5 * rnd(batch, nheads))[:, :, None].expand(batch, nheads, headdim)
            A = (-torch.rand(nheads, generator=g) - 0.1)[:, None, None].expand(nheads, headdim, dstate)
            DD = rnd(nheads)[:, None].expand(nheads, headdim)
            dtb = (0.5 * rnd(nheads))[:, None].expand(nheads, headdim)
        else:
            dt_ = 0.5 * rnd(batch, nheads, headdim)
            A = -torch.rand(nheads, headdim, dstate, generator=g) - 0.1
            DD, dtb = rnd(nheads, headdim), 0.5 * rnd(nheads, headdim)
    act = lambda t: t.to(device, dtype)  # noqa: E731
    return dict(
        state=state.to(device, state_dtype), x=act(x), dt=act(dt_), A=A.to(device), B=act(B), C=act(C),
        D=DD.to(device) if D else None, z=act(zz) if z else None, dt_bias=dtb.to(device) if dt_bias else None,
    )


def _check_against_oracle(inp, dt_softplus, state_batch_indices=None, tol=1e-5):
    state0 = inp["state"].clone()
    out = selective_state_update(**inp, dt_softplus=dt_softplus, state_batch_indices=state_batch_indices)
    ref_in = dict(inp, state=state0)
    idx = None if state_batch_indices is None else state_batch_indices.cpu()
    out_ref, state_ref = selective_state_update_ref(**ref_in, dt_softplus=dt_softplus, state_batch_indices=idx)
    assert out.dtype == inp["x"].dtype and out.shape == inp["x"].shape
    assert inp["state"].dtype == state0.dtype
    scale = max(out_ref.abs().max().item(), 1.0)
    torch.testing.assert_close(out.double().cpu(), out_ref, rtol=0, atol=tol * scale)
    torch.testing.assert_close(inp["state"].double().cpu(), state_ref, rtol=0,
                               atol=tol * max(state_ref.abs().max().item(), 1.0))


LAYOUTS = ["mamba1", "mamba2"]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "dtype,state_dtype",
    [(torch.float32, torch.float32), (torch.bfloat16, torch.float32), (torch.float16, torch.float16)],
    ids=["fp32", "bf16-fp32state", "fp16-fp16state"],
)
@pytest.mark.parametrize(
    "opts",
    [
        dict(D=True, z=True, dt_bias=True, dt_softplus=True),
        dict(D=False, z=False, dt_bias=False, dt_softplus=False),
        dict(D=True, z=False, dt_bias=True, dt_softplus=False),
    ],
    ids=["all", "bare", "D-bias"],
)
def test_matches_oracle(layout, dtype, state_dtype, opts):
    opts = dict(opts)
    softplus = opts.pop("dt_softplus")
    inp = _inputs(layout, 3, dtype=dtype, state_dtype=state_dtype, seed=1, **opts)
    tol = max(TOL[dtype], TOL[state_dtype])
    _check_against_oracle(inp, softplus, tol=tol)


@pytest.mark.parametrize("expanded", [True, False], ids=["stride0", "dense"])
@pytest.mark.parametrize("ngroups", [1, 4])
def test_mamba2_groups_and_expanded_params(expanded, ngroups):
    inp = _inputs("mamba2", 2, nheads=4, ngroups=ngroups, expanded=expanded, seed=2)
    if expanded:
        assert inp["A"].stride() == (1, 0, 0) and inp["dt"].stride()[-1] == 0
    _check_against_oracle(inp, True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_state_batch_indices_with_padding(layout):
    inp = _inputs(layout, 4, nstates=7, seed=3)
    idx = torch.tensor([5, -1, 0, 2], dtype=torch.int32)
    untouched = inp["state"][[1, 3, 4, 6]].clone()
    _check_against_oracle(inp, True, state_batch_indices=idx)
    out = selective_state_update(**_inputs(layout, 4, nstates=7, seed=3), dt_softplus=True, state_batch_indices=idx)
    assert torch.all(out[1] == 0), "a padding row's output is 0"
    assert torch.equal(inp["state"][[1, 3, 4, 6]], untouched), "rows no index points at stay unchanged"


def test_state_batch_indices_out_of_range_raises():
    inp = _inputs("mamba2", 2, nstates=3, seed=4)
    with pytest.raises(ValueError, match="state_batch_indices"):
        selective_state_update(**inp, state_batch_indices=torch.tensor([0, 3], dtype=torch.int32))


def test_state_batch_indices_out_of_range_fails_when_compiled():
    """Traced graphs cannot read the indices at trace time; the out-of-range gather fails at run time."""
    inp = _inputs("mamba2", 2, nstates=3, seed=4)
    compiled = torch.compile(selective_state_update, fullgraph=True, backend="aot_eager")
    with pytest.raises((IndexError, RuntimeError)):
        compiled(**inp, state_batch_indices=torch.tensor([0, 3], dtype=torch.int32))


def test_repeated_steps_accumulate():
    inp = _inputs("mamba2", 2, seed=5)
    state_ref = inp["state"].clone()
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        x = torch.randn(inp["x"].shape, generator=g)
        out = selective_state_update(**dict(inp, x=x), dt_softplus=True)
        out_ref, state_ref = selective_state_update_ref(**dict(inp, x=x, state=state_ref), dt_softplus=True)
        torch.testing.assert_close(out.double(), out_ref, rtol=0, atol=1e-5 * max(out_ref.abs().max().item(), 1))
    torch.testing.assert_close(inp["state"].double(), state_ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    "layout,opts,indices",
    [
        ("mamba1", dict(D=True, z=True, dt_bias=True), False),
        ("mamba2", dict(D=True, z=True, dt_bias=True), True),
        ("mamba2", dict(D=False, z=False, dt_bias=False), False),
    ],
    ids=["m1-all", "m2-all-indices", "m2-bare"],
)
def test_opcheck(layout, opts, indices):
    inp = _inputs(layout, 3, nstates=4 if indices else None, dtype=torch.bfloat16, seed=6, **opts)
    if layout == "mamba2":  # opcheck's schema test wants plain tensors; stride-0 views are covered above
        inp = {k: None if v is None else v.contiguous() for k, v in inp.items()}
    idx = torch.tensor([3, -1, 0], dtype=torch.int32) if indices else None
    args = (inp["state"], inp["x"], inp["dt"], inp["A"], inp["B"], inp["C"], inp["D"], inp["z"],
            inp["dt_bias"], True, idx)
    torch.library.opcheck(torch.ops.mamba_compile.selective_state_update.default, args)


def _decode_step(state, x, dt, A, B, C, D, z, dt_bias):
    return selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus=True)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_compile_fullgraph_dynamic_one_frame(layout):
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(_decode_step, fullgraph=True, dynamic=True, backend=counter)
    for batch in (3, 5, 7):  # no batch equal to another size (duck sizing would tie them)
        inp = _inputs(layout, batch, seed=10 + batch)
        state_eager = inp["state"].clone()
        out = compiled(**inp)
        out_eager = _decode_step(**dict(inp, state=state_eager))
        torch.testing.assert_close(out, out_eager)
        torch.testing.assert_close(inp["state"], state_eager)  # the compiled call updated state in place
    assert counter.frame_count == 1


@pytest.mark.inductor
def test_compile_inductor_updates_state_in_place():
    compiled = torch.compile(_decode_step, fullgraph=True, dynamic=True)
    inp = _inputs("mamba2", 3, seed=15)
    state_eager = inp["state"].clone()
    for _ in range(2):  # the second step reads the state the first one wrote
        out = compiled(**inp)
        out_eager = _decode_step(**dict(inp, state=state_eager))
        torch.testing.assert_close(out, out_eager, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(inp["state"], state_eager, rtol=1e-5, atol=1e-5)


class _Decoder(torch.nn.Module):
    """A Mamba-2 style decode step whose state lives in a buffer (as a decode cache does)."""

    def __init__(self, inp):
        super().__init__()
        self.register_buffer("ssm_state", inp["state"].clone())
        self.A = torch.nn.Parameter(inp["A"].contiguous())
        self.D = torch.nn.Parameter(inp["D"].contiguous())
        self.dt_bias = torch.nn.Parameter(inp["dt_bias"].contiguous())

    def forward(self, x, dt, B, C, z):
        return selective_state_update(self.ssm_state, x, dt, self.A, B, C, self.D, z, self.dt_bias, dt_softplus=True)


def test_export_matches_eager():
    inp = _inputs("mamba2", 2, expanded=False, seed=20)
    mod, mod_ref = _Decoder(inp), _Decoder(inp)
    args = tuple(inp[k] for k in ("x", "dt", "B", "C", "z"))
    ep = torch.export.export(mod, args).run_decompositions()
    assert "ssm_state" in ep.graph_signature.buffers_to_mutate.values()
    exported = ep.module()
    for step in range(2):
        step_args = tuple(a + 0.1 * step for a in args)
        torch.testing.assert_close(exported(*step_args), mod_ref(*step_args))
    torch.testing.assert_close(exported.ssm_state, mod_ref.ssm_state)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_triton_kernel_matches_oracle(layout):
    from mamba_compile.ops import selective_state_update_triton as kernels
    from mamba_compile.ops.selective_state_update import _as_mamba2

    inp = _inputs(layout, 4, nstates=6, dtype=torch.bfloat16, dstate=12, seed=30)
    idx = torch.tensor([4, -1, 0, 6], dtype=torch.int32)  # 6 is out of range: the kernel treats it as padding
    state0 = inp["state"].clone()
    args = _as_mamba2(*(inp[k] for k in ("state", "x", "dt", "A", "B", "C", "D", "z", "dt_bias")))
    out = kernels.selective_state_update_fwd(*args, True, idx, wrap=False).view_as(inp["x"])
    out_ref, state_ref = selective_state_update_ref(
        **dict(inp, state=state0), dt_softplus=True, state_batch_indices=torch.tensor([4, -1, 0, -1])
    )
    torch.testing.assert_close(out.double(), out_ref, rtol=0, atol=2e-2 * max(out_ref.abs().max().item(), 1))
    torch.testing.assert_close(inp["state"].double(), state_ref, rtol=0, atol=1e-5 * state_ref.abs().max().item())
    assert torch.all(out[3] == 0) and torch.all(out[1] == 0)


@pytest.mark.parametrize(
    "change,exc,name",
    [
        (dict(x=torch.randn(2, 4, 5)), ValueError, "x"),
        (dict(A=torch.randn(4, 6)), ValueError, "A"),
        (dict(B=torch.randn(2, 3, 8)), ValueError, "ngroups"),
        (dict(C=torch.randn(2, 2, 7)), ValueError, "C"),
        (dict(D=torch.randn(4)), ValueError, "D"),
        (dict(dt_bias=torch.randn(6)), ValueError, "dt_bias"),
        (dict(z=torch.randn(2, 4, 7)), ValueError, "z"),
        (dict(state=torch.randn(2, 4, 6, 300)), ValueError, "dstate"),
        (dict(state=torch.randn(2, 4)), ValueError, "state"),
        (dict(state=torch.randn(3, 4, 6, 8)), ValueError, "state_batch_indices"),
        (dict(x=torch.randint(0, 3, (2, 4, 6))), TypeError, "x"),
        (dict(B=None), TypeError, "B"),
    ],
    ids=["x-shape", "A-rank", "B-groups", "C-dstate", "D-shape", "dt_bias-shape", "z-shape", "dstate-limit",
         "state-rank", "nstates-no-indices", "x-dtype", "B-none"],
)
def test_bad_inputs(change, exc, name):
    inp = _inputs("mamba2", 2, seed=40)
    inp.update(change)
    with pytest.raises(exc, match=name):
        selective_state_update(**inp)


def test_bad_index_dtype():
    inp = _inputs("mamba1", 2, seed=41)
    with pytest.raises(TypeError, match="state_batch_indices"):
        selective_state_update(**inp, state_batch_indices=torch.tensor([0.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# CUDA path (the lead runs these with -m gpu)
# ---------------------------------------------------------------------------------------------

GPU_SHAPES = [
    pytest.param("mamba1", dict(dim=1536, dstate=16), id="m1-d1536-n16"),
    pytest.param("mamba2", dict(nheads=24, headdim=64, dstate=128, ngroups=1), id="m2-h24-p64-n128-g1"),
    pytest.param("mamba2", dict(nheads=8, headdim=32, dstate=256, ngroups=2, expanded=False), id="m2-n256-g2-dense"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("layout,shape", GPU_SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("batch", [1, 64])
def test_gpu_matches_cpu(layout, shape, dtype, batch):
    inp = _inputs(layout, batch, dtype=dtype, device="cuda", seed=50, **shape)
    cpu = {k: None if v is None else v.cpu().clone() for k, v in inp.items()}
    out = selective_state_update(**inp, dt_softplus=True)
    out_cpu = selective_state_update(**cpu, dt_softplus=True)
    tol = TOL[dtype]
    torch.testing.assert_close(out.cpu().float(), out_cpu.float(), rtol=tol, atol=tol)
    torch.testing.assert_close(inp["state"].cpu(), cpu["state"], rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("layout,shape", GPU_SHAPES[:2])
def test_gpu_state_batch_indices(layout, shape):
    inp = _inputs(layout, 8, nstates=12, dtype=torch.bfloat16, device="cuda", seed=51, **shape)
    idx = torch.tensor([11, -1, 0, 3, 12, 7, 5, 2], dtype=torch.int32, device="cuda")  # 12: out of range
    state0 = inp["state"].clone()
    out = selective_state_update(**inp, dt_softplus=True, state_batch_indices=idx)
    safe = torch.tensor([11, -1, 0, 3, -1, 7, 5, 2], dtype=torch.int32)  # the CUDA path treats 12 as padding
    out_ref, state_ref = selective_state_update_ref(
        **dict({k: None if v is None else v.cpu() for k, v in inp.items()}, state=state0.cpu()),
        dt_softplus=True, state_batch_indices=safe,
    )
    scale = max(out_ref.abs().max().item(), 1.0)
    torch.testing.assert_close(out.cpu().double(), out_ref, rtol=0, atol=2e-2 * scale)
    torch.testing.assert_close(inp["state"].cpu().double(), state_ref, rtol=0, atol=1e-4 * state_ref.abs().max().item())


@pytest.mark.gpu
def test_gpu_cuda_graph_replay():
    """Capturable: no host sync, no allocation besides out (a capture would fail on a sync)."""
    inp = _inputs("mamba2", 4, nheads=24, headdim=64, dstate=128, ngroups=1, dtype=torch.bfloat16,
                  device="cuda", seed=52)
    state_ref = inp["state"].clone()
    idx = torch.arange(4, dtype=torch.int32, device="cuda")
    step = lambda: selective_state_update(**inp, dt_softplus=True, state_batch_indices=idx)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()  # warm-up compiles the kernel
    torch.cuda.current_stream().wait_stream(s)
    inp["state"].copy_(state_ref)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    inp["state"].copy_(state_ref)
    graph.replay()
    graph.replay()
    eager_state = state_ref.clone()
    for _ in range(2):
        out_eager = selective_state_update(**dict(inp, state=eager_state), dt_softplus=True)
    torch.testing.assert_close(out, out_eager)
    torch.testing.assert_close(inp["state"], eager_state)


@pytest.mark.gpu
def test_gpu_compile_fullgraph_dynamic_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(_decode_step, fullgraph=True, dynamic=True, backend=counter)
    for batch in (3, 5, 7):
        inp = _inputs("mamba2", batch, nheads=8, headdim=16, dstate=32, ngroups=2, device="cuda", seed=53 + batch)
        state_eager = inp["state"].clone()
        out = compiled(**inp)
        out_eager = _decode_step(**dict(inp, state=state_eager))
        torch.testing.assert_close(out, out_eager)
        torch.testing.assert_close(inp["state"], state_eager)
    assert counter.frame_count == 1
