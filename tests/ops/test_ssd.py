"""Tests of the Mamba-2 SSD chunked scan against the float64 recurrence in tests/reference/ssd.py."""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from mamba_compile.ops import ssd_chunk_scan
from tests.reference.ssd import ssd_ref

ssd_module = importlib.import_module("mamba_compile.ops.ssd")

GRAD_NAMES = ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states")
ACT_NAMES = ("x", "dt", "B", "C", "z")  # activation dtype; A, D, dt_bias and the state stay fp32


def make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, *, D="h", z=True, dt_bias=True, init=True,
                nseq=0, act_dtype=torch.float32, device="cpu", seed=0):  # fmt: skip
    """Fresh random inputs (never zeros). D: None, "h" (nheads,) or "hp" (nheads, headdim). nseq > 0 packs
    that many sequences (random boundaries) and returns seq_idx and cu_seqlens (batch must be 1)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    t = dict(
        x=rand(batch, seqlen, nheads, headdim),
        dt=rand(batch, seqlen, nheads, scale=0.5),
        A=-(torch.rand(nheads, generator=g) + 0.5),
        B=rand(batch, seqlen, ngroups, dstate, scale=0.5),
        C=rand(batch, seqlen, ngroups, dstate, scale=0.5),
        D=None if D is None else rand(nheads) if D == "h" else rand(nheads, headdim),
        z=rand(batch, seqlen, nheads, headdim) if z else None,
        dt_bias=rand(nheads, scale=0.3) if dt_bias else None,
        initial_states=rand(batch, nheads, headdim, dstate) if init else None,
    )
    t = {k: None if v is None else v.to(device, act_dtype if k in ACT_NAMES else torch.float32) for k, v in t.items()}
    t["seq_idx"] = t["cu_seqlens"] = None
    if nseq:
        cuts = torch.randperm(seqlen - 1, generator=g)[: nseq - 1].sort().values + 1
        cu = torch.cat([torch.zeros(1, dtype=torch.long), cuts, torch.tensor([seqlen])]).to(torch.int32)
        seq_idx = torch.repeat_interleave(torch.arange(nseq), (cu[1:] - cu[:-1]).long()).to(torch.int32)
        t["seq_idx"], t["cu_seqlens"] = seq_idx[None].expand(batch, seqlen).contiguous().to(device), cu.to(device)
    return t


def oracle(inputs, **kw):
    kw = dict(kw)
    kw.pop("chunk_size", None)
    return ssd_ref(**{k: inputs[k] for k in inputs}, **kw)


def out_grads(out, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, generator=g).to(o.device, o.dtype) for o in out]


def run_fwd_bwd(fn, inputs, varlen=False, **kw):
    """Outputs (out, final, [varlen]) and gradients of sum(out*go) + sum(final*gf) [+ sum(varlen*gv)]."""
    leaves = {k: v.detach().clone().requires_grad_() if (v is not None and k in GRAD_NAMES) else v
              for k, v in inputs.items()}
    outs = fn(leaves, varlen=varlen, **kw)
    gos = out_grads(outs)
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    loss = sum((o.double() * go.double()).sum() for o, go in zip(outs, gos))
    grads = torch.autograd.grad(loss, [leaves[k] for k in names])
    return outs, dict(zip(names, grads))


def via_op(inputs, varlen=False, **kw):
    return ssd_chunk_scan(**inputs, return_final_states=True, return_varlen_states=varlen, **kw)


def via_oracle(inputs, varlen=False, **kw):
    kw.pop("chunk_size", None)
    inp = {k: v for k, v in inputs.items() if not (k == "cu_seqlens" and not varlen)}
    out, final, vs = ssd_ref(**inp, **kw)
    return (out, final, vs) if varlen else (out, final)


def assert_close(got, want, tol, name):
    err = (got.double() - want.double()).abs().max().item()
    scale = want.double().abs().max().item()
    assert err <= tol * max(scale, 1.0), f"{name}: max error {err:.3g} vs scale {scale:.3g} (tol {tol})"


def check_against_oracle(fn, inputs, tol, varlen=False, **kw):
    outs, grads = run_fwd_bwd(fn, inputs, varlen=varlen, **kw)
    routs, rgrads = run_fwd_bwd(via_oracle, inputs, varlen=varlen, **kw)
    for name, o, r in zip(("out", "final_states", "varlen_states"), outs, routs):
        assert o.dtype == (inputs["x"].dtype if name == "out" else torch.float32)
        assert_close(o, r, tol, name)
    for k in rgrads:
        assert grads[k].dtype == inputs[k].dtype, k
        assert_close(grads[k], rgrads[k], tol, "d" + k)


SHAPE = dict(batch=2, seqlen=45, nheads=4, headdim=8, ngroups=2, dstate=8)  # 45 = 2 chunks of 16 + 13
ORACLE_CASES = [
    pytest.param(dict(), dict(dt_softplus=True), torch.float32, 1e-4, id="all-softplus-fp32"),
    pytest.param(dict(D="hp", z=False), dict(dt_softplus=True), torch.float32, 1e-4, id="D2d-noz-fp32"),
    pytest.param(dict(D=None, dt_bias=False, init=False), dict(), torch.float32, 1e-4, id="bare-fp32"),
    pytest.param(dict(), dict(dt_softplus=True, dt_limit=(0.3, 1.2)), torch.float32, 1e-4, id="dt_limit-fp32"),
    pytest.param(dict(), dict(dt_softplus=True, dt_limit=(0.3, math.inf)), torch.float32, 1e-4, id="dt_min-only"),
    pytest.param(dict(), dict(dt_limit=(-math.inf, 0.2)), torch.float32, 1e-4, id="dt_max-only-nosoftplus"),
    pytest.param(dict(), dict(dt_softplus=True), torch.bfloat16, 3e-2, id="all-softplus-bf16"),
    pytest.param(dict(), dict(dt_softplus=True, chunk_size=32), torch.float16, 1e-2, id="chunk32-fp16"),
]


@pytest.mark.parametrize("opts, kw, act_dtype, tol", ORACLE_CASES)
def test_cpu_matches_oracle(opts, kw, act_dtype, tol):
    kw = {"chunk_size": 16, **kw}
    check_against_oracle(via_op, make_inputs(**SHAPE, **opts, act_dtype=act_dtype), tol, **kw)


@pytest.mark.parametrize("seqlen", [1, 16, 17, 64], ids=lambda s: f"l{s}")
def test_cpu_chunk_boundaries(seqlen):
    inputs = make_inputs(1, seqlen, 2, 8, 1, 8, seed=seqlen)
    check_against_oracle(via_op, inputs, 1e-4, chunk_size=16, dt_softplus=True)


def _one_output_case(used, device, tol):
    """Only one output in the loss: the backward gets no gradient (None, not zeros) for the other, and still
    matches the oracle's gradients of the same loss (zero for the inputs the final state does not depend on)."""
    inputs = make_inputs(2, 40, 4, 8, 2, 8, seed=21)
    got, want = [], []
    for fn, dst, dev in ((via_op, got, device), (via_oracle, want, "cpu")):
        leaves = {k: v.detach().clone().to(dev).requires_grad_() if (v is not None and k in GRAD_NAMES) else v
                  for k, v in inputs.items()}
        out, final = fn(leaves, chunk_size=16, dt_softplus=True)
        picked = out if used == "out" else final
        loss = (picked.double() * out_grads([picked.cpu()])[0].double().to(dev)).sum()
        names = [k for k in GRAD_NAMES if leaves[k] is not None]
        grads = torch.autograd.grad(loss, [leaves[k] for k in names], allow_unused=True)  # final: no C, D, z
        dst.append({k: torch.zeros_like(leaves[k]) if g is None else g for k, g in zip(names, grads)})
    assert want[0]["x"].abs().max() > 0 and want[0]["dt"].abs().max() > 0
    for k, w in want[0].items():
        assert_close(got[0][k].cpu(), w, tol, "d" + k)


@pytest.mark.parametrize("used", ["out", "final_states"])
def test_gradient_through_one_output(used):
    _one_output_case(used, "cpu", 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("used", ["out", "final_states"])
def test_cuda_gradient_through_one_output(used):
    _one_output_case(used, "cuda", 2e-3)


@pytest.mark.parametrize("batch, nseq", [(1, 4), (2, 3)], ids=["b1-4seqs", "b2-3seqs"])
def test_cpu_seq_idx_resets_state(batch, nseq):
    inputs = make_inputs(batch, 50, 4, 8, 2, 8, nseq=nseq)
    inputs["cu_seqlens"] = None
    check_against_oracle(via_op, inputs, 1e-4, chunk_size=16, dt_softplus=True)
    # The reset matters: without seq_idx the output differs.
    with torch.no_grad():
        packed = ssd_chunk_scan(**inputs, chunk_size=16, dt_softplus=True)
        plain = ssd_chunk_scan(**{**inputs, "seq_idx": None}, chunk_size=16, dt_softplus=True)
    assert (packed - plain).abs().max() > 1e-3


@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_varlen_states_and_their_gradient(seed):
    inputs = make_inputs(1, 70, 4, 8, 2, 8, nseq=5, seed=seed)
    check_against_oracle(via_op, inputs, 1e-4, varlen=True, chunk_size=16, dt_softplus=True)


def test_return_structure_matches_reference():
    inputs = make_inputs(1, 20, 2, 8, 1, 8, nseq=2)
    common = dict(chunk_size=16)
    with torch.no_grad():
        out = ssd_chunk_scan(**{**inputs, "cu_seqlens": None}, **common)
        assert isinstance(out, torch.Tensor)
        out2, final = ssd_chunk_scan(**inputs, return_final_states=True, **common)
        out3, vs = ssd_chunk_scan(**inputs, return_varlen_states=True, **common)
        out4, final4, vs4 = ssd_chunk_scan(**inputs, return_final_states=True, return_varlen_states=True, **common)
    assert final.shape == (1, 2, 8, 8) and vs.shape == (2, 2, 8, 8)
    torch.testing.assert_close(vs[-1], final[0])  # the last sequence ends at the end
    torch.testing.assert_close(out, out4)
    torch.testing.assert_close(vs, vs4)


def test_gradcheck_float64_across_chunks():
    inputs = make_inputs(1, 19, 2, 2, 1, 2, D="hp", nseq=2, act_dtype=torch.float64, seed=3)
    inputs = {k: v.double() if (v is not None and v.is_floating_point()) else v for k, v in inputs.items()}
    names = [k for k in GRAD_NAMES if inputs[k] is not None]

    def f(*tensors):
        kw = dict(inputs, **dict(zip(names, tensors)))
        return ssd_chunk_scan(**kw, chunk_size=16, dt_softplus=True, return_final_states=True,
                              return_varlen_states=True)

    leaves = [inputs[k].clone().requires_grad_() for k in names]
    assert torch.autograd.gradcheck(f, leaves, atol=1e-6, rtol=1e-4, fast_mode=True)


OPCHECK_CASES = [
    pytest.param(dict(D="hp", z=False, init=False), dict(), id="D2d-noz-noinit"),
    pytest.param(dict(nseq=3), dict(dt_softplus=True, dt_max=2.0), id="all-seq_idx-varlen-limit"),
]


@pytest.mark.parametrize("opts, kw", OPCHECK_CASES)
def test_opcheck(opts, kw):
    t = make_inputs(1, 37, 2, 4, 1, 4, **opts)
    for v in t.values():
        if v is not None and v.is_floating_point():
            v.requires_grad_()
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 16, t["D"], t["z"], t["dt_bias"], t["initial_states"],
            t["seq_idx"], t["cu_seqlens"], kw.get("dt_softplus", False), 0.0, kw.get("dt_max", ssd_module._OPEN_BOUND),
            t["z"] is not None)
    torch.library.opcheck(torch.ops.mamba_compile.ssd_chunk_scan_fwd.default, args)


def _compiled_counts(fn, seqlens, make):
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    for seqlen in seqlens:
        inputs = make(seqlen)
        outs, grads = run_fwd_bwd(lambda i, varlen=False, **kw: compiled(i), inputs)
        routs, rgrads = run_fwd_bwd(lambda i, varlen=False, **kw: fn(i), inputs)
        for o, r in zip(outs, routs):
            torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
        for k in rgrads:
            torch.testing.assert_close(grads[k], rgrads[k], atol=1e-4, rtol=1e-4)
    return counter.frame_count


def test_compile_fullgraph_dynamic_one_frame():
    """Packed sequences, varlen and final states: one frame over three sequence lengths, fwd and bwd.
    dt_limit is passed as a literal: a float read from a function default becomes a symbolic float under
    dynamic=True, and Dynamo then restarts its analysis once (two backend calls for one frame)."""

    def fn(i):
        return ssd_chunk_scan(**i, chunk_size=16, dt_softplus=True, dt_limit=(0.0, float("inf")),
                              return_final_states=True, return_varlen_states=True)

    frames = _compiled_counts(fn, [23, 41, 66], lambda l: make_inputs(1, l, 2, 8, 1, 8, nseq=3, seed=l))
    assert frames == 1


def test_compile_dynamic_chunk_size_from_a_variable():
    """A chunk_size read from a closure (or passed as an argument) reaches the op as a SymInt under dynamic=True;
    the op specialises it (session 36: it raised "chunk_size must be an int, got SymInt"). One frame over three
    lengths for one chunk size, and a second chunk size compiles again (the guard on its value) and is right."""
    make = lambda l: make_inputs(2, l, 2, 8, 1, 8, z=True, seed=l)  # noqa: E731

    def closure(chunk_size):
        def fn(i):
            return ssd_chunk_scan(**i, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)

        return fn

    for chunk_size in (16, 32):
        assert _compiled_counts(closure(chunk_size), [23, 41, 66], make) == 1
    # one compiled function, the chunk size an argument: two chunk sizes, two frames
    from torch._dynamo.testing import CompileCounterWithBackend

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(lambda i, c: ssd_chunk_scan(**i, chunk_size=c, dt_softplus=True), fullgraph=True,
                             dynamic=True, backend=counter)
    for chunk_size, seqlen in ((16, 23), (16, 41), (32, 41)):
        inputs = make(seqlen)
        outs, grads = run_fwd_bwd(lambda i, varlen=False, **kw: (compiled(i, chunk_size),), inputs)
        routs, rgrads = run_fwd_bwd(lambda i, **kw: via_oracle(i, **kw)[:1], inputs, dt_softplus=True)
        assert_close(outs[0], routs[0], 1e-5, "out")
        for k in rgrads:
            assert_close(grads[k], rgrads[k], 1e-4, "d" + k)
    assert counter.frame_count == 2


@pytest.mark.inductor
def test_compile_inductor_cpu():
    inputs = make_inputs(1, 40, 2, 8, 1, 8)

    def fn(i):
        return ssd_chunk_scan(**i, chunk_size=16, dt_softplus=True, return_final_states=True)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True)
    outs, grads = run_fwd_bwd(lambda i, varlen=False, **kw: compiled(i), inputs)
    routs, rgrads = run_fwd_bwd(via_oracle, inputs, chunk_size=16, dt_softplus=True)
    for o, r in zip(outs, routs):
        assert_close(o, r, 1e-4, "out")
    for k in rgrads:
        assert_close(grads[k], rgrads[k], 1e-4, "d" + k)


class _Mixer(torch.nn.Module):
    def __init__(self, nheads, headdim, dstate):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A_log = torch.nn.Parameter(torch.rand(nheads, generator=g))
        self.D = torch.nn.Parameter(torch.randn(nheads, generator=g))
        self.dt_bias = torch.nn.Parameter(torch.randn(nheads, generator=g) * 0.3)

    def forward(self, x, dt, B, C, z):
        return ssd_chunk_scan(x, dt, -torch.exp(self.A_log), B, C, 16, D=self.D, z=z, dt_bias=self.dt_bias,
                              dt_softplus=True)


def test_export_matches_eager():
    t = make_inputs(2, 37, 4, 8, 2, 8)
    m = _Mixer(4, 8, 8)
    args = (t["x"], t["dt"], t["B"], t["C"], t["z"])
    seqlen = torch.export.Dim("seqlen", min=2, max=4096)
    ep = torch.export.export(m, args, dynamic_shapes=({1: seqlen}, {1: seqlen}, {1: seqlen}, {1: seqlen},
                                                      {1: seqlen}))
    assert "ssd_chunk_scan_fwd" in str(ep.graph)
    torch.testing.assert_close(ep.module()(*args), m(*args))
    t2 = make_inputs(2, 50, 4, 8, 2, 8, seed=5)
    args2 = (t2["x"], t2["dt"], t2["B"], t2["C"], t2["z"])
    torch.testing.assert_close(ep.module()(*args2), m(*args2))


_EXPORT_FORWARD = """
import torch
from mamba_compile.ops import ssd


class Forward(torch.nn.Module):  # the CUDA path's pipeline through wrap_triton, as the op's body runs when traced
    def forward(self, x, dt, B, C, z, A, D, dt_bias):
        args = (x, dt, A, B, C, 16, D, z, dt_bias, None, None, None, True, 0.0, 3.0e38)
        return ssd._fwd_triton(*args, wrap=True)[:2]


g = torch.Generator().manual_seed(0)
act = [torch.randn(2, 37, *s, generator=g) for s in ((4, 8), (4,), (2, 8), (2, 8), (4, 8))]
par = [-torch.rand(4, generator=g) - 0.5, torch.randn(4, generator=g), torch.randn(4, generator=g)]
seq = torch.export.Dim("seqlen", min=2, max=4096)
ep = torch.export.export(Forward(), (*act, *par), dynamic_shapes=(*({1: seq} for _ in act), None, None, None))
print("kernels", sum(n.op == "call_function" and "triton_kernel_wrapper" in str(n.target) for n in ep.graph.nodes))
"""


def _run_without_interpreter(script: str) -> str:
    """stdout of ``script`` run in a process without the Triton interpreter (under it, tracing would run the
    kernels on fake tensors)."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_triton_forward_exports_from_one_chunk():
    """The Triton forward's host code traces without guards on the chunk count, so torch.export takes a length
    range that reaches down to one chunk. Session 35: every tensor allocated with a chunk-count dimension guarded
    nchunks != 1 (see ssd_triton._empty_chunked), and a Mamba-2 CUDA export with lengths from 2 failed on it.
    The exported CUDA model runs against eager in tests/models/test_gpu.py."""
    out = _run_without_interpreter(_EXPORT_FORWARD)
    assert int(out.split("kernels")[-1]) == 3, out  # state passing, C B^T, chunk scan


_EXPORT_BACKWARD = """
import torch
from mamba_compile.ops import ssd


class Backward(torch.nn.Module):  # the CUDA forward and backward pipelines through wrap_triton
    def __init__(self, keep):
        super().__init__()
        self.keep = keep

    def forward(self, dout, x, dt, B, C, z, seq_idx, A, D, dt_bias):
        args = (x, dt, A, B, C, 16, D, z, dt_bias, None, seq_idx, None, True, 0.0, 3.0e38)
        out, final, _, pre_gate, *states = ssd._fwd_triton(*args, wrap=True, keep=self.keep)
        kept = dict(pre_gate=pre_gate, states=tuple(states)) if self.keep else {}
        return ssd._bwd_triton(dout, final, None, *args, wrap=True, **kept)


g = torch.Generator().manual_seed(0)
act = [torch.randn(2, 37, *s, generator=g) for s in ((4, 8), (4, 8), (4,), (2, 8), (2, 8), (4, 8))]
act.append(torch.cumsum((torch.rand(2, 37, generator=g) > 0.8).int(), 1).int())
par = [-torch.rand(4, generator=g) - 0.5, torch.randn(4, generator=g), torch.randn(4, generator=g)]
seq = torch.export.Dim("seqlen", min=2, max=4096)
for keep in (True, False):
    ep = torch.export.export(Backward(keep), (*act, *par), dynamic_shapes=(*({1: seq} for _ in act), None, None, None))
    n = sum(node.op == "call_function" and "triton_kernel_wrapper" in str(node.target) for node in ep.graph.nodes)
    print("keep" if keep else "recompute", n)
"""


def test_triton_backward_exports_from_one_chunk():
    """The Triton backward traces without guards on the chunk count too, with packed sequences, final-state
    gradients and the gate, from the forward's kept states and recomputing them. Session 36: dB/dC's split of a
    group's heads over programs guarded on the chunk count (now chosen from the traced example's size, see
    ssd_triton._hint), and so did making the recomputed chunk states contiguous (ssd_triton._contiguous_chunked)."""
    out = _run_without_interpreter(_EXPORT_BACKWARD)
    counts = dict(line.split() for line in out.splitlines() if line.startswith(("keep", "recompute")))
    # the forward's three, then gate, reverse pass, dcb, dx, dB and dC with their parts' sums, dt, head sums;
    # recomputing, the state passing again and dz with y instead of the gate's kernel
    assert counts == {"keep": "13", "recompute": "14"}, out


def _strided(inputs):
    """The same values, with x, z, B, C, dt laid out as column slices of one wider tensor."""
    names = ("x", "z", "B", "C", "dt")
    b, l = inputs["x"].shape[:2]
    flat = [inputs[k].reshape(b, l, -1) for k in names]
    big = torch.cat(flat, -1)
    out, start = dict(inputs), 0
    for k, f in zip(names, flat):
        out[k] = big[..., start:start + f.shape[-1]].view(inputs[k].shape)
        start += f.shape[-1]
    assert not out["x"].is_contiguous()
    return out


def test_non_contiguous_inputs_cpu():
    inputs = make_inputs(2, 40, 4, 8, 2, 8, seed=8)
    outs, grads = run_fwd_bwd(lambda i, **kw: via_op(_strided(i), **kw), inputs, chunk_size=16, dt_softplus=True)
    routs, rgrads = run_fwd_bwd(via_oracle, inputs, chunk_size=16, dt_softplus=True)
    for name, o, r in zip(("out", "final_states"), outs, routs):
        assert_close(o, r, 1e-4, name)
    for k in rgrads:
        assert_close(grads[k], rgrads[k], 1e-4, "d" + k)


def test_autocast_bf16_cpu():
    t = make_inputs(1, 30, 2, 8, 1, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ssd_chunk_scan(t["x"].bfloat16(), t["dt"], t["A"], t["B"].bfloat16(), t["C"], 16, D=t["D"],
                             dt_softplus=True)
    assert out.dtype == torch.bfloat16
    ref = ssd_ref(t["x"].bfloat16(), t["dt"], t["A"], t["B"].bfloat16(), t["C"], D=t["D"], dt_softplus=True)[0]
    assert_close(out, ref, 2e-2, "out")


# ---------------------------------------------------------------------------------------------------
# Triton kernels launched directly under the interpreter (tiny shapes: the interpreter is slow)
# ---------------------------------------------------------------------------------------------------


def _triton_fn(inputs, varlen=False, chunk_size=16, dt_softplus=False, dt_limit=(0.0, math.inf), keep=True):
    """The Triton forward and backward pipelines through _EagerScan, the op's eager CUDA path. With ``keep`` the
    backward takes what the forward kept: with z, dz from the pre-gate output, and with ssd.KEEP_STATES the chunk
    states; without, it recomputes them (and y for dz)."""
    t = inputs
    cu = t["cu_seqlens"] if varlen else None
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size, t["D"], t["z"], t["dt_bias"], t["initial_states"],
            t["seq_idx"], cu, dt_softplus, *ssd_module._dt_limit_args(dt_limit), keep)
    out, final, vs, pre_gate, dtp, dA_cs, states = ssd_module._EagerScan.apply(*args)
    assert (pre_gate.numel() > 0) == (keep and t["z"] is not None)
    nchunks = -(-t["x"].shape[1] // chunk_size)
    assert states.shape == ((t["x"].shape[0], nchunks, *t["x"].shape[2:], t["B"].shape[-1])
                            if keep and ssd_module.KEEP_STATES else (0,))
    assert dtp.shape == dA_cs.shape == ((t["x"].shape[0], t["x"].shape[2], nchunks, chunk_size)
                                        if keep and ssd_module.KEEP_STATES else (0,))
    return (out, final, vs) if varlen else (out, final)


needs_triton = pytest.mark.skipif(not importlib.util.find_spec("triton"), reason="needs triton")


def _interpreter_chunks(*shape, **kw):
    """For the kernel-level interpreter tests: the kernels' module, make_inputs(*shape, **kw) and the chunked dt
    (chunk 32, softplus, no limit); skipped where CUDA is present (the CUDA tests cover the compiled kernels)."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    kt = importlib.import_module("mamba_compile.ops.ssd_triton")
    t = make_inputs(*shape, **kw)
    dtp, dA_cs = kt.chunk_cumsum_fwd(t["dt"], t["A"], t["dt_bias"], 32, True, 0.0, ssd_module._OPEN_BOUND, False,
                                     wrap=False)
    return kt, t, dtp, dA_cs


KERNEL_CASES = [
    pytest.param(dict(), dict(dt_softplus=True), False, id="all-softplus"),
    pytest.param(dict(D="hp", z=False, init=False, dt_bias=False), dict(dt_limit=(0.0, 0.8)), False,
                 id="D2d-noz-limit"),
    pytest.param(dict(nseq=3), dict(dt_softplus=True), True, id="packed-varlen"),
    pytest.param(dict(strided=True), dict(dt_softplus=True), False, id="strided"),
    pytest.param(dict(), dict(dt_softplus=True, keep=False), False, id="z-y-recomputed"),
    # the backward recomputing the chunk states, y kept (the other cases take the kept states)
    pytest.param(dict(keep_states=False), dict(dt_softplus=True), False, id="states-recomputed"),
    pytest.param(dict(keep_states=False, D="hp", z=False, nseq=3), dict(dt_softplus=True), True,
                 id="states-recomputed-noz-varlen"),
    pytest.param(dict(nosplit=True, init=False), dict(dt_softplus=True), False, id="dB-dC-heads-unsplit"),
    pytest.param(dict(batch=2, nheads=4, ngroups=2, nseq=3), dict(dt_softplus=True), False, id="seq_idx-b2-g2"),
    # chunk_scan's and dx's chunk-major grids (the defaults are tile-major)
    pytest.param(dict(batch=2, nheads=4, ngroups=2, tile_major=False), dict(dt_softplus=True), False,
                 id="chunk-major"),
    # 16-bit: the forward keeps the chunk states in C's dtype (fp16: the interpreter's bf16 dots are unreliable)
    pytest.param(dict(act_dtype=torch.float16), dict(dt_softplus=True), False, id="fp16-states"),
]


@needs_triton
@pytest.mark.parametrize("opts, kw, varlen", KERNEL_CASES)
def test_triton_kernels_match_oracle(opts, kw, varlen, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    # 35 = 2 chunks of 16 + 3; 3 heads in 1 group; headdim 8 / dstate 12 exercise the masks of 16-wide tiles.
    opts, kw = dict(opts), dict(kw)
    keep = kw.pop("keep", True)
    fn = (lambda i, **k: _triton_fn(_strided(i), **k, keep=keep)) if opts.pop("strided", False) else (
        lambda i, **k: _triton_fn(i, **k, keep=keep))
    kt = importlib.import_module("mamba_compile.ops.ssd_triton")
    monkeypatch.setattr(ssd_module, "KEEP_STATES", opts.pop("keep_states", True))
    if opts.pop("nosplit", False):  # dB and dC written by one program per group (the large-batch layout)
        monkeypatch.setattr(kt, "_TARGET_PROGRAMS", 1)
    if "tile_major" in opts:
        monkeypatch.setitem(kt.SCAN_FWD_CONFIG, "tile_major", opts["tile_major"])
        monkeypatch.setattr(kt, "DX_TILE_MAJOR", opts.pop("tile_major"))
    batch, nheads, ngroups = opts.pop("batch", 1), opts.pop("nheads", 3), opts.pop("ngroups", 1)
    inputs = make_inputs(batch, 35, nheads, 8, ngroups, 12, **opts, seed=7)
    if batch > 1:
        inputs["cu_seqlens"] = None
    if inputs["dt_bias"] is None and "dt_softplus" not in kw:
        inputs["dt"] = inputs["dt"].abs() * 0.5 + 0.05  # keep dt positive without softplus
    tol = 1e-4 if inputs["x"].dtype == torch.float32 else 1e-2
    check_against_oracle(fn, inputs, tol, varlen=varlen, chunk_size=16, **kw)


@needs_triton
@pytest.mark.parametrize("nseq, z, tile_major", [(0, True, True), (4, False, True), (0, True, False)],
                         ids=["one-sequence-z", "seq_idx-noz", "chunk-major"])
def test_triton_kernels_match_oracle_several_tiles_per_chunk(nseq, z, tile_major, monkeypatch):
    """16-wide row tiles in 32-long chunks: C B^T and its gradient span several tiles per chunk, so the tiles
    below the diagonal, read transposed by dx and dB, and the triangle of tiles each row walks, are exercised
    (the other interpreter tests have one tile per chunk); also with chunk_scan's and dx's chunk-major grids."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    kt = importlib.import_module("mamba_compile.ops.ssd_triton")
    monkeypatch.setattr(kt, "BLOCK_T_MAX", 16)
    monkeypatch.setitem(kt.SCAN_FWD_CONFIG, "tile_major", tile_major)
    monkeypatch.setattr(kt, "DX_TILE_MAJOR", tile_major)
    # 75 = 2 chunks of 32 + 11 (a partial last tile); 4 heads in 2 groups.
    inputs = make_inputs(1, 75, 4, 8, 2, 12, nseq=nseq, z=z, seed=13)
    inputs["cu_seqlens"] = None
    check_against_oracle(_triton_fn, inputs, 1e-4, chunk_size=32, dt_softplus=True)


@needs_triton
def test_triton_gate_backward_flat_equals_per_head():
    """gate_bwd over flat arrays (contiguous inputs, a length that leaves the last block partial) gives the per-head
    kernel's dy and dz bit for bit, both match dout silu(z) and dout pre silu'(z), and a pre-gate output that is
    not contiguous takes the per-head kernel."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    kt = importlib.import_module("mamba_compile.ops.ssd_triton")
    g = torch.Generator().manual_seed(43)
    shape = (2, 37, 3, 24)  # 5328 values: two blocks of 2048 and a partial third
    dout, z, pre = (torch.randn(*shape, generator=g).to(torch.bfloat16) for _ in range(3))
    flat = kt.gate_bwd(dout, z, pre, flat=True, wrap=False)
    per_head = kt.gate_bwd(dout, z, pre, flat=False, wrap=False)
    for a, b in zip(flat, per_head):
        assert torch.equal(a, b)
    z64 = z.double()
    sig = torch.sigmoid(z64)
    torch.testing.assert_close(flat[0].double(), dout.double() * z64 * sig, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(flat[1].double(), dout.double() * pre.double() * sig * (1 + z64 * (1 - sig)),
                               rtol=1e-2, atol=1e-2)
    pre_t = pre.transpose(1, 2).contiguous().transpose(1, 2)  # same values, not contiguous
    launches = kt.record_launches(kt.gate_bwd, dout, z, pre_t, flat=True, wrap=False)
    assert [job[0].fn.__name__ for job in launches] == ["_gate_bwd_kernel"]
    for a, b in zip(kt.gate_bwd(dout, z, pre_t, flat=True, wrap=False), per_head):
        assert torch.equal(a, b)


@needs_triton
@pytest.mark.parametrize("D, bias", [("h", True), ("hp", False), (None, True)])
def test_triton_head_grads_sum_every_partial_row(D, bias):
    """head_grads: each head's dA, dt_bias and D gradients are the sums of all their partial rows (more rows than
    one block of the loop, a headdim below its block), stored in the parameters' dtypes and shapes."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    kt = importlib.import_module("mamba_compile.ops.ssd_triton")
    g = torch.Generator().manual_seed(41)
    batch, nchunks, nheads, rows_d, headdim = 3, 45, 5, 130, 12  # 135 and 130 rows: loops of 64 with a remainder
    da = torch.randn(batch, nchunks, nheads, generator=g)
    dbias = torch.randn(batch, nchunks, nheads, generator=g) if bias else None
    dd = torch.randn(rows_d, nheads, headdim, generator=g) if D else None
    A = torch.randn(nheads, generator=g)
    dt_bias = torch.randn(nheads, generator=g, dtype=torch.float64).to(torch.bfloat16) if bias else None
    Dp = None if D is None else torch.randn(nheads, generator=g) if D == "h" else torch.randn(nheads, headdim,
                                                                                             generator=g).half()
    dA, ddt_bias, dD = kt.head_grads(da, dbias, dd, A, dt_bias, Dp, wrap=False)
    torch.testing.assert_close(dA, da.double().sum((0, 1)).float(), rtol=1e-6, atol=1e-5)
    assert dA.dtype == A.dtype
    if bias:
        assert ddt_bias.dtype == torch.bfloat16
        torch.testing.assert_close(ddt_bias, dbias.double().sum((0, 1)).to(torch.bfloat16))
    else:
        assert ddt_bias is None
    if D is None:
        assert dD is None
    else:
        want = dd.double().sum(0) if D == "hp" else dd.double().sum((0, 2))
        assert dD.shape == Dp.shape and dD.dtype == Dp.dtype
        torch.testing.assert_close(dD, want.to(Dp.dtype), rtol=1e-3 if D == "hp" else 1e-6, atol=1e-3)


@needs_triton
def test_triton_whole_tiles_skip_the_bounds_checks(monkeypatch):
    """Every chunk whole and headdim, dstate equal to their blocks: chunk_scan_fwd and dx run without bounds checks
    (DX_EVEN, SCAN_EVEN). The pipeline then matches the oracle, and each kernel gives exactly what its checked build
    gives (dx's row sums compared where they are written: row tile k's from position k * 16)."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    kt = importlib.import_module("mamba_compile.ops.ssd_triton")
    monkeypatch.setattr(kt, "BLOCK_T_MAX", 16)
    assert kt.DX_EVEN and kt.SCAN_EVEN and kt._even(64, 32, 16, 16, 16, 16) and not kt._even(75, 32, 16, 16, 16, 16)
    inputs = make_inputs(1, 64, 4, 16, 2, 16, seed=17)  # 2 chunks of 32, 2 row tiles each
    inputs["cu_seqlens"] = None
    check_against_oracle(_triton_fn, inputs, 1e-4, chunk_size=32, dt_softplus=True)
    t = inputs
    dtp, dA_cs = kt.chunk_cumsum_fwd(t["dt"], t["A"], t["dt_bias"], 32, True, 0.0, ssd_module._OPEN_BOUND, False,
                                     wrap=False)
    prev, _ = kt.chunk_state_passing_fwd(t["x"], t["B"], dtp, dA_cs, None, None, wrap=False)
    out = [kt.chunk_scan_fwd(t["x"], t["B"], t["C"], dtp, dA_cs, prev, t["D"], t["z"], None, config=dict(even=e),
                             wrap=False) for e in (True, False)]
    assert torch.equal(*out)
    dy = torch.randn_like(t["x"])
    dend, _, _ = kt.chunk_state_passing_bwd(dy, t["C"], dA_cs, prev, None, None, False, wrap=False)
    even, checked = (kt.chunk_scan_bwd_dx(t["x"], t["B"], t["C"], dtp, dA_cs, dy, dend, t["D"], None, even=e,
                                          wrap=False) for e in (True, False))
    for i, (a, b) in enumerate(zip(even, checked)):
        if i == 4:  # row: (batch, nheads, nchunks, row tiles, chunk)
            a, b = [torch.cat([r[:, :, :, k, k * 16:] for k in range(r.shape[3])], -1) for r in (a, b)]
        assert torch.equal(a, b), i


@needs_triton
def test_first_call_finds_the_pipelines_launches(monkeypatch):
    """The first eager CUDA call compiles ahead the kernels _recorded_launches finds by running the pipelines on
    meta tensors: the forward's four, and with the backward its kernels too, nothing launched."""
    t = make_inputs(1, 70, 4, 16, 2, 16)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 32, t["D"], t["z"], t["dt_bias"], t["initial_states"], None,
            None, True, 0.0, ssd_module._OPEN_BOUND, True)
    fwd, bwd = ssd_module._recorded_launches(args, with_backward=True)
    names = lambda jobs: [job[0].fn.__name__ for job in jobs]  # noqa: E731
    assert names(fwd) == ["_chunk_state_passing_fwd_kernel", "_bmm_cb_kernel", "_chunk_scan_fwd_kernel"]
    assert "_chunk_scan_bwd_dx_kernel" in names(bwd) and "_dt_bwd_kernel" in names(bwd)
    # the kept pre-gate output: dz from the elementwise kernel; without it, y is recomputed
    assert "_gate_bwd_flat_kernel" in names(bwd) and "_chunk_scan_bwd_dz_kernel" not in names(bwd)
    # the kept chunk states: the backward does not pass the states again
    assert "_chunk_state_passing_fwd_kernel" not in names(bwd)
    recompute = ssd_module._recorded_launches(args[:-1] + (False,), with_backward=True)[1]
    assert "_chunk_scan_bwd_dz_kernel" in names(recompute) and "_gate_bwd_flat_kernel" not in names(recompute)
    assert "_chunk_state_passing_fwd_kernel" in names(recompute)
    monkeypatch.setattr(ssd_module, "KEEP_STATES", False)
    states_recomputed = ssd_module._recorded_launches(args, with_backward=True)[1]
    assert "_chunk_state_passing_fwd_kernel" in names(states_recomputed)
    assert "_gate_bwd_flat_kernel" in names(states_recomputed)
    assert all(a.device.type == "meta" for job in fwd + bwd for a in job[2] if isinstance(a, torch.Tensor))
    assert ssd_module._recorded_launches(args, with_backward=False)[1] == []


@needs_triton
def test_compile_ahead_builds_the_launchers_in_the_pool(monkeypatch):
    """compile_async's jobs compile each distinct launch once and then load it and build its launcher
    (_init_handles) on a pool thread, which the first launch would otherwise do one kernel after another on the
    caller's; a compile that builds nothing (None) is left alone, and a failing one is left to the launch."""
    import contextlib
    import threading

    from mamba_compile.ops import ssd_triton as kt

    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())  # no GPU needed here
    log = []

    class Compiled:
        def __init__(self, name):
            self.name = name

        def _init_handles(self):
            log.append(("init", self.name, threading.current_thread().name))

    class Kernel:
        def __init__(self, name, result="compiled"):
            self.name, self.result = name, result

        def warmup(self, *args, grid, **kwargs):
            log.append(("warmup", self.name, threading.current_thread().name))
            if self.result == "raise":
                raise RuntimeError("compile failed")
            return Compiled(self.name) if self.result == "compiled" else None

    a, none, bad = Kernel("a"), Kernel("none", result=None), Kernel("bad", result="raise")
    jobs = [(a, (4,), (2, 3), {}), (a, (8,), (5, 7), {}), (none, (1,), (), {}), (bad, (1,), (), {})]
    futures = kt.compile_async(jobs, torch.device("cuda"), set())
    assert len(futures) == 3  # the second launch of a specialises as the first
    kt.wait(futures)  # the failure is swallowed: the launch compiles again and raises there
    assert sorted((kind, name) for kind, name, _ in log) == [("init", "a"), ("warmup", "a"), ("warmup", "bad"),
                                                            ("warmup", "none")]
    assert all(thread.startswith("ssd-compile") for _, _, thread in log)
    assert [e[0] for e in log if e[1] == "a"] == ["warmup", "init"]


@needs_triton
def test_triton_eager_forward_without_a_backward_skips_the_function(monkeypatch):
    """A plain eager call with no backward to come runs the pipeline without _EagerScan (no autograd graph to
    build): the same outputs, bit for bit, as through it; with a backward to come, _EagerScan records the graph."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    t = make_inputs(1, 40, 3, 8, 1, 12, seed=5)
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], 16, t["D"], t["z"], t["dt_bias"], t["initial_states"], None,
            None, True, 0.0, ssd_module._OPEN_BOUND)
    through_function = ssd_module._EagerScan.apply(*args, False)
    leaves = [a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
              for a in args]
    kept = ssd_module._eager_forward((*leaves, True))
    assert type(kept[0].grad_fn).__name__ == "_EagerScanBackward" and kept[3].numel() > 0  # the pre-gate kept
    monkeypatch.setattr(ssd_module._EagerScan, "apply", lambda *a: pytest.fail("_EagerScan without a backward"))
    plain = ssd_module._eager_forward((*args, False))
    assert plain[0].grad_fn is None
    for a, b in zip(plain, through_function):
        assert torch.equal(a, b)
    assert torch.equal(kept[0].detach(), plain[0])


def _eager_step(t, chunk_size=16, keep=True, dt_limit=(0.0, math.inf), varlen=False):
    """One eager forward+backward through _EagerScan on fresh leaves of ``t``, with run_fwd_bwd's output gradients:
    the forward's outputs, what it kept for the backward, and the input gradients (all detached)."""
    leaves = {k: v.detach().clone().requires_grad_() if (v is not None and k in GRAD_NAMES) else v
              for k, v in t.items()}
    cu = leaves["cu_seqlens"] if varlen else None
    args = (leaves["x"], leaves["dt"], leaves["A"], leaves["B"], leaves["C"], chunk_size, leaves["D"], leaves["z"],
            leaves["dt_bias"], leaves["initial_states"], leaves["seq_idx"], cu, True,
            *ssd_module._dt_limit_args(dt_limit), keep)
    out, final, vs, *kept = ssd_module._EagerScan.apply(*args)
    outs = [out, final] + ([vs] if varlen else [])
    torch.autograd.backward(outs, out_grads(outs))
    return [o.detach() for o in (out, final, vs, *kept)] + [leaves[k].grad for k in GRAD_NAMES if leaves[k] is not None]


@needs_triton
@pytest.mark.parametrize("case", [
    dict(),
    dict(keep=False),
    dict(z=False, D="hp", init=False),
    dict(keep_states=False),
    dict(nseq=3, dt_limit=(0.01, 1.0)),
    dict(nseq=3, varlen=True),
], ids=["default", "no-keep", "noz-Dhp-noinit", "recompute-states", "seq_idx-limit", "varlen"])
def test_triton_eager_plans_replay_the_pipelines(case, monkeypatch):
    """Launch plans (ssd.EAGER_PLANS, _plans): a key's third eager call and after replay the recorded launches,
    giving bit for bit the forward outputs and gradients that the pipelines give for the same fresh inputs, without
    running them; a call whose pipeline computes with torch between its launches (the packed sequences' final
    states) is never planned and says why; the plans hold no tensor."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    case = dict(case)
    monkeypatch.setattr(ssd_module, "KEEP_STATES", case.pop("keep_states", True))
    step_kw = {k: case.pop(k) for k in ("keep", "dt_limit", "varlen") if k in case}
    cache = ssd_module._plans.PlanCache()
    monkeypatch.setattr(ssd_module, "_PLANS", cache)
    for seed in range(4):
        t = make_inputs(1, 40, 3, 8, 1, 12, seed=100 + seed, **case)
        with monkeypatch.context() as m:
            m.setattr(ssd_module, "EAGER_PLANS", True)
            if seed == 3 and not step_kw.get("varlen"):  # replays only: the pipelines must not run
                for name in ("_fwd_triton", "_bwd_triton"):
                    m.setattr(ssd_module, name, lambda *a, name=name, **k: pytest.fail(f"{name} ran"))
            planned = _eager_step(t, **step_kw)
        with monkeypatch.context() as m:
            m.setattr(ssd_module, "EAGER_PLANS", False)
            plain = _eager_step(t, **step_kw)
        assert len(planned) == len(plain)
        for i, (a, b) in enumerate(zip(planned, plain)):
            assert a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b), (seed, i)
    kinds = {key[0][0]: plan for key, plan in cache.plans.items()}
    assert set(kinds) == {"fwd", "bwd"}
    if step_kw.get("varlen"):  # the packed sequences' states: torch ops in both pipelines
        assert all(type(p) is ssd_module._plans.NoPlan and p.reason.startswith("torch op") for p in kinds.values())
        return
    for plan in kinds.values():
        assert type(plan) is ssd_module._plans.Plan
        held = [plan.__dict__, *plan.steps]
        while held:
            obj = held.pop()
            assert not isinstance(obj, torch.Tensor)
            held.extend(obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ())


@needs_triton
def test_triton_eager_plans_key_on_shapes_and_settings(monkeypatch):
    """A plan replays only for the key it was recorded for: another length, another chunk size or another setting
    of the pipelines (here KEEP_STATES) is a new key, whose calls run the pipelines until their own plan exists."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    monkeypatch.setattr(ssd_module, "_PLANS", ssd_module._plans.PlanCache())
    monkeypatch.setattr(ssd_module, "EAGER_PLANS", True)
    ran = []
    real = ssd_module._fwd_triton
    monkeypatch.setattr(ssd_module, "_fwd_triton", lambda *a, **k: ran.append(a[0].shape[1]) or real(*a, **k))

    def fwd(seqlen, chunk_size=16, seed=0):
        t = make_inputs(1, seqlen, 3, 8, 1, 12, seed=seed)
        args = (t["x"], t["dt"], t["A"], t["B"], t["C"], chunk_size, t["D"], t["z"], t["dt_bias"],
                t["initial_states"], None, None, True, 0.0, ssd_module._OPEN_BOUND, False)
        return ssd_module._eager_forward(args)[0]

    for seed in range(3):
        fwd(40, seed=seed)
    assert ran == [40, 40]  # the first call runs, the second records, the third replays
    fwd(41)
    fwd(40, chunk_size=32)
    monkeypatch.setattr(ssd_module, "KEEP_STATES", False)
    fwd(40)
    assert ran == [40, 40, 41, 40, 40]
    monkeypatch.setattr(ssd_module, "KEEP_STATES", True)
    replayed = fwd(40, seed=7)
    monkeypatch.setattr(ssd_module, "EAGER_PLANS", False)
    assert len(ran) == 5 and torch.equal(replayed, fwd(40, seed=7)) and len(ran) == 6


@needs_triton
@pytest.mark.parametrize("z", [True, False], ids=["z", "noz"])
def test_triton_backward_from_kept_states_equals_recompute(z, monkeypatch):
    """The backward from the forward's kept chunk states (ssd.KEEP_STATES) gives the gradients of the backward that
    recomputes them, bit for bit (the same kernel made them from the same inputs), with initial states and a
    partial last chunk; and it keeps them only when a backward is to come."""
    if torch.cuda.is_available():
        pytest.skip("interpreter test; the CUDA tests cover the compiled kernels")
    inputs = make_inputs(1, 40, 3, 8, 1, 12, z=z, seed=11)
    leaves = [k for k in ("x", "dt", "A", "B", "C", "D", "z", "dt_bias", "initial_states") if inputs[k] is not None]
    dout = torch.randn_like(inputs["x"])
    grads = {}
    for keep_states in (True, False):
        monkeypatch.setattr(ssd_module, "KEEP_STATES", keep_states)
        t = {k: v.detach().clone().requires_grad_(k in leaves) if isinstance(v, torch.Tensor) else v
             for k, v in inputs.items()}
        out, final = _triton_fn(t, dt_softplus=True)
        torch.autograd.backward([out, final], [dout, torch.ones_like(final)])
        grads[keep_states] = [t[k].grad for k in leaves]
    for name, kept, recomputed in zip(leaves, grads[True], grads[False]):
        assert torch.equal(kept, recomputed), name
    monkeypatch.setattr(ssd_module, "KEEP_STATES", True)
    with torch.no_grad():  # _triton_fn asserts what is kept: nothing without keep, the states with it
        plain, keeping = (_triton_fn(inputs, dt_softplus=True, keep=k)[0] for k in (False, True))
    assert torch.equal(plain, keeping)  # keeping them leaves the output as it is


@needs_triton
@pytest.mark.parametrize("nseq", [0, 3], ids=["one-seq", "seq_idx"])
def test_triton_state_passing_steps_inside_chunks(nseq):
    """chunk_state_passing_fwd walks tiles smaller than a chunk: the states entering each chunk and the final
    state do not depend on the tile size and match the oracle's final state."""
    kt, t, dtp, dA_cs = _interpreter_chunks(1, 70, 3, 8, 1, 12, nseq=nseq, seed=5)
    run = lambda bk: kt.chunk_state_passing_fwd(t["x"], t["B"], dtp, dA_cs, t["initial_states"], t["seq_idx"],  # noqa: E731
                                                block_k=bk, block_n=16, wrap=False)
    prev16, final16 = run(16)
    prev32, final32 = run(32)
    torch.testing.assert_close(prev16, prev32, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(final16, final32, rtol=1e-5, atol=1e-5)
    want = oracle(t, dt_softplus=True)[1]
    assert_close(final16, want, 1e-4, "final_states")


@needs_triton
@pytest.mark.parametrize("nseq, limit, bias", [(0, None, True), (3, (0.2, 0.9), False)],
                         ids=["bias-softplus", "seq_idx-limit-nobias"])
def test_triton_cumsum_in_state_passing_matches_two_kernels(nseq, limit, bias):
    """chunk_cumsum_state_passing_fwd (dt_proc and its cumsum computed inside the passing kernel, stored by the
    first state block's programs) gives chunk_cumsum_fwd followed by chunk_state_passing_fwd, with several
    (headdim, dstate) blocks and a partial last chunk."""
    kt, t, _, _ = _interpreter_chunks(2 if not nseq else 1, 70, 3, 12, 1, 24, nseq=nseq, seed=17)
    dt_bias = t["dt_bias"] if bias else None
    lo, hi = ssd_module._dt_limit_args(limit or (0.0, math.inf))
    has_limit = ssd_module._has_dt_limit(lo, hi)
    dtp, dA_cs = kt.chunk_cumsum_fwd(t["dt"], t["A"], dt_bias, 32, True, lo, hi, has_limit, wrap=False)
    want = (dtp, dA_cs, *kt.chunk_state_passing_fwd(t["x"], t["B"], dtp, dA_cs, t["initial_states"], t["seq_idx"],
                                                    wrap=False))
    got = kt.chunk_cumsum_state_passing_fwd(t["x"], t["B"], t["dt"], t["A"], dt_bias, 32, True, lo, hi, has_limit,
                                            t["initial_states"], t["seq_idx"], block_p=8, block_n=16, wrap=False)
    for name, g, w in zip(("dtp", "dA_cs", "prev", "final"), got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5, msg=name)


@needs_triton
@pytest.mark.parametrize("nseq, dfinal, init, config", [
    (0, True, True, dict(block_p=16, block_n=16, block_k=16)),  # several (p, n) blocks, steps within chunks
    (3, False, True, dict(block_k=32)),  # seq_idx: the reset between sequences in both directions
    (0, True, False, dict(block_p=8, block_n=32, block_k=16))], ids=["blocks16", "seq_idx", "p8-n32"])
def test_triton_state_passing_bwd_matches_two_kernels(nseq, dfinal, init, config):
    """chunk_state_passing_bwd (dprev formed inside the reverse pass) gives chunk_state_fwd(from_start) followed by
    state_passing_bwd: dend, dinit and the per-chunk log-decay sums."""
    kt, t, dtp, dA_cs = _interpreter_chunks(2 if not nseq else 1, 70, 4, 12, 2, 24, nseq=nseq, seed=9)
    prev, final = kt.chunk_state_passing_fwd(t["x"], t["B"], dtp, dA_cs, t["initial_states"], t["seq_idx"],
                                             wrap=False)
    g = torch.Generator().manual_seed(3)
    dy = torch.randn(t["x"].shape, generator=g)
    df = torch.randn(final.shape, generator=g) if dfinal else None
    dprev = kt.chunk_state_fwd(dy, t["C"], dtp, dA_cs, t["seq_idx"], from_start=True, wrap=False)
    want = kt.state_passing_bwd(dprev, dA_cs, prev, df, t["seq_idx"], 70, init, wrap=False)
    got = kt.chunk_state_passing_bwd(dy, t["C"], dA_cs, prev, df, t["seq_idx"], init, config=config, wrap=False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)  # dend
    if init:
        torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)  # dinit
    torch.testing.assert_close(got[2].sum(-1), want[2].sum(-1), rtol=1e-4, atol=1e-4)  # dchunk, summed parts


@needs_triton
@pytest.mark.parametrize("nseq", [0, 3], ids=["plain", "seq_idx"])
def test_triton_db_dstate_blocks_match_head_split(nseq, monkeypatch):
    """dB with its programs splitting dstate's columns (no partial sums) equals dB with them splitting the heads
    (partial sums added afterwards); dstate 40 leaves the second column block partly masked."""
    kt, t, dtp, dA_cs = _interpreter_chunks(1, 70, 8, 12, 2, 40, nseq=nseq, seed=13)
    g = torch.Generator().manual_seed(5)
    dy = torch.randn(t["x"].shape, generator=g)
    dend = torch.randn(1, dtp.shape[2], 8, 12, 40, generator=g)
    dcb = kt.chunk_scan_bwd_dcb(t["x"], dtp, dA_cs, dy, 2, t["seq_idx"], wrap=False)
    args = (t["x"], t["B"], t["C"], dcb, dtp, dA_cs, dy, dend, t["seq_idx"])
    launches = kt.record_launches(kt.chunk_scan_bwd_dB, *args, wrap=False)
    # this shape takes the dstate split (and still two head parts, summed by _sum_parts_kernel)
    assert [job[3]["N_BLOCKS"] for job in launches if job[0] is kt._chunk_scan_bwd_dbc_kernel] == [2]
    got = kt.chunk_scan_bwd_dB(*args, wrap=False)
    monkeypatch.setattr(kt, "DB_SPLITS_DSTATE", False)
    want = kt.chunk_scan_bwd_dB(*args, wrap=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@needs_triton
@pytest.mark.parametrize("nseq", [0, 3], ids=["plain", "seq_idx"])
def test_triton_dcb_head_parts_give_the_same_dB_dC(nseq):
    """dL/d(C B^T) as parts over a group's heads (chunk_scan_bwd_dcb's hsplit; dB and dC add them as they read): the
    parts sum to the unsplit dcb on the tiles dB and dC read, and dB, dC and the log-decay term are unchanged, with
    four heads a group split 2 and 3 ways (uneven: 2 + 1 + 1)."""
    kt, t, dtp, dA_cs = _interpreter_chunks(1, 70, 8, 12, 2, 24, nseq=nseq, seed=29)
    g = torch.Generator().manual_seed(7)
    dy = torch.randn(t["x"].shape, generator=g)
    dend = torch.randn(1, dtp.shape[2], 8, 12, 24, generator=g)
    prev = torch.randn(1, dtp.shape[2], 8, 12, 24, generator=g)
    x, B, C, q = t["x"], t["B"], t["C"], t["seq_idx"]
    one = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, 2, q, hsplit=1, wrap=False)
    lower = torch.ones(32, 32).tril().bool()  # 32-row tiles at chunk 32: the diagonal tile holds the pairs s <= t
    want = (kt.chunk_scan_bwd_dB(x, B, C, one, dtp, dA_cs, dy, dend, q, wrap=False),
            *kt.chunk_scan_bwd_dC(x, B, C, one, dtp, dA_cs, dy, prev, q, wrap=False))
    for hsplit in (2, 3):
        parts = kt.chunk_scan_bwd_dcb(x, dtp, dA_cs, dy, 2, q, hsplit=hsplit, wrap=False)
        assert parts.shape[0] == hsplit
        torch.testing.assert_close(parts.sum(0)[0, :2, :, lower], one[0][0, :2, :, lower], rtol=1e-5, atol=1e-5)
        got = (kt.chunk_scan_bwd_dB(x, B, C, parts, dtp, dA_cs, dy, dend, q, wrap=False),
               *kt.chunk_scan_bwd_dC(x, B, C, parts, dtp, dA_cs, dy, prev, q, wrap=False))
        for name, a, b in zip(("dB", "dC", "da"), got, want):
            if name == "da":  # (batch, nheads, nchunks, chunk), written before the sequence end only
                a, b = a.flatten(2)[..., :70], b.flatten(2)[..., :70]
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"{name}, hsplit {hsplit}")


# ---------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------

BAD_CASES = [
    ("chunk_size", lambda t: {"chunk_size": 24}, ValueError),
    ("chunk_size", lambda t: {"chunk_size": 8}, ValueError),
    ("x", lambda t: {"x": t["x"][0]}, ValueError),
    ("dt", lambda t: {"dt": t["dt"][:, :, :1]}, ValueError),
    ("A", lambda t: {"A": t["A"][:1]}, ValueError),
    ("B", lambda t: {"B": t["B"][:, :3]}, ValueError),
    ("B", lambda t: {"B": torch.randn(1, 20, 3, 8)}, ValueError),  # 4 heads in 3 groups
    ("C", lambda t: {"C": t["C"][..., :4]}, ValueError),
    ("D", lambda t: {"D": t["D"][:3]}, ValueError),
    ("z", lambda t: {"z": t["z"][..., :4]}, ValueError),
    ("dt_bias", lambda t: {"dt_bias": t["dt_bias"][:2]}, ValueError),
    ("initial_states", lambda t: {"initial_states": t["initial_states"][..., :3]}, ValueError),
    ("seq_idx", lambda t: {"seq_idx": t["seq_idx"].float()}, TypeError),
    ("x", lambda t: {"x": t["x"].int()}, TypeError),
    ("cu_seqlens", lambda t: {"return_varlen_states": True, "cu_seqlens": None}, ValueError),
    ("cu_seqlens", lambda t: {"return_varlen_states": True, **_batch2(t)}, ValueError),
    ("dt_limit", lambda t: {"dt_limit": 1.0}, TypeError),
    ("dt_limit", lambda t: {"dt_limit": (0.0, math.nan)}, ValueError),
    ("dstate", lambda t: {"B": torch.randn(1, 20, 2, 300), "C": torch.randn(1, 20, 2, 300)}, ValueError),
]


def _batch2(t):
    names = ("x", "dt", "B", "C", "z", "initial_states", "seq_idx")
    return {k: t[k].expand(2, *t[k].shape[1:]) for k in names}


@pytest.mark.parametrize("name, change, err", BAD_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(BAD_CASES)])
def test_bad_inputs_name_the_argument(name, change, err):
    t = make_inputs(1, 20, 4, 8, 2, 8, nseq=2)
    kw = dict(t, chunk_size=16)
    kw.update(change(t))
    with pytest.raises(err, match=name):
        ssd_chunk_scan(**kw)


def test_direct_op_call_is_checked():
    t = make_inputs(1, 20, 4, 8, 2, 8)
    with pytest.raises(ValueError, match="dt"):
        torch.ops.mamba_compile.ssd_chunk_scan_fwd(t["x"], t["dt"][:, :5], t["A"], t["B"], t["C"], 16, None, None,
                                                   None, None, None, None, False, 0.0, ssd_module._OPEN_BOUND)


def test_backward_op_checks_the_kept_states():
    """The backward op's kept chunk states come three together, in the shapes and dtypes the CUDA forward keeps:
    (batch, nheads, nchunks, chunk) float32 for dt_proc and dA_cumsum, (batch, nchunks, nheads, headdim, dstate) for
    the states, at the CUDA chunk (at most ssd.CUDA_CHUNK_MAX)."""
    t = make_inputs(1, 300, 4, 8, 2, 8)  # 3 chunks of 128 at chunk_size 256
    args = (torch.randn_like(t["x"]), None, None, t["x"], t["dt"], t["A"], t["B"], t["C"], 256, None, None, None,
            None, None, None, False, 0.0, ssd_module._OPEN_BOUND, None)
    dtp = torch.randn(1, 4, 3, 128)
    states = torch.randn(1, 3, 4, 8, 8)
    with pytest.raises(ValueError, match="given together or not at all; got only dt_proc and chunk_states"):
        torch.ops.mamba_compile.ssd_chunk_scan_bwd(*args, dtp, None, states)
    with pytest.raises(ValueError, match=r"dt_proc must be the forward's, of shape \(1, 4, 3, 128\)"):
        torch.ops.mamba_compile.ssd_chunk_scan_bwd(*args, torch.randn(1, 4, 2, 256), dtp, states)
    with pytest.raises(ValueError, match="chunk_states must be the forward's.*float32"):
        torch.ops.mamba_compile.ssd_chunk_scan_bwd(*args, dtp, dtp, states.double())
    # well-formed: the CPU backward recomputes, so the gradients are those without
    got = torch.ops.mamba_compile.ssd_chunk_scan_bwd(*args, dtp, dtp.clone(), states)
    want = torch.ops.mamba_compile.ssd_chunk_scan_bwd(*args)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("bounds", [(0.0, math.inf), (-math.inf, 1.0), (0.0, math.nan)], ids=str)
def test_direct_op_call_rejects_non_finite_dt_bounds(bounds):
    """An inf in the op's schema would reach a CPU AOTInductor package's JSON, which cannot load it."""
    t = make_inputs(1, 20, 4, 8, 2, 8)
    with pytest.raises(ValueError, match="dt_m.. must be finite"):
        torch.ops.mamba_compile.ssd_chunk_scan_fwd(t["x"], t["dt"], t["A"], t["B"], t["C"], 16, None, None,
                                                   None, None, None, None, False, *bounds)


def test_default_dt_limit_reaches_the_op_finite():
    """ssd_chunk_scan's default dt_limit (0, inf) reaches the exported graph as finite floats, and means no clamp."""
    t = make_inputs(1, 20, 2, 4, 1, 4)
    m = _Mixer(2, 4, 4)
    ep = torch.export.export(m, (t["x"], t["dt"], t["B"], t["C"], t["z"]))
    floats = [a for n in ep.graph.nodes if "ssd_chunk_scan_fwd" in str(n.target) for a in n.args
              if isinstance(a, float)]
    assert floats == [0.0, ssd_module._OPEN_BOUND]
    assert not ssd_module._has_dt_limit(*floats)


class _Sub(torch.Tensor):
    pass


class _CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_plain_eager_only_without_interception():
    """The eager CUDA shortcut past the custom op (_EagerScan) is taken only for plain tensors with nothing that
    intercepts operators: compile tracing, fake tensors, subclasses, dispatch and torch-function modes and
    functorch transforms keep the op."""
    x, p = torch.randn(3), torch.nn.Parameter(torch.randn(3))
    plain = ssd_module._plain_eager
    assert plain(x, p, None)
    assert not plain(x, x.as_subclass(_Sub))
    with torch._subclasses.FakeTensorMode() as mode:
        assert not plain(mode.from_tensor(x))
    with _CountOps():
        assert not plain(x)
    with torch.overrides.TorchFunctionMode():
        assert not plain(x)
    assert torch.equal(torch.vmap(lambda v: v + plain(v))(x), x)
    compiled = torch.compile(lambda v: v + plain(v), backend="eager", fullgraph=True)
    assert torch.equal(compiled(x), x)
    assert plain(x)  # and nothing left behind


# ---------------------------------------------------------------------------------------------------
# GPU: the CUDA path against the float64 oracle (realistic shapes) and the CPU path
# ---------------------------------------------------------------------------------------------------


def _to(inputs, device):
    return {k: None if v is None else v.to(device) for k, v in inputs.items()}


GPU_CASES = [
    pytest.param(dict(batch=2, seqlen=520, nheads=8, headdim=64, ngroups=2, dstate=128), {}, torch.float32, 2e-3,
                 256, id="fp32-l520-chunk256"),
    pytest.param(dict(batch=2, seqlen=700, nheads=8, headdim=64, ngroups=1, dstate=128), {}, torch.bfloat16,
                 3e-2, 256, id="bf16-l700-chunk256"),
    pytest.param(dict(batch=1, seqlen=777, nheads=4, headdim=32, ngroups=2, dstate=64), dict(D="hp", z=False),
                 torch.bfloat16, 3e-2, 64, id="bf16-D2d-noz-chunk64"),
    pytest.param(dict(batch=2, seqlen=600, nheads=8, headdim=64, ngroups=2, dstate=128), dict(z=False),
                 torch.bfloat16, 3e-2, 256, id="bf16-noz-chunk256"),  # as a Mamba-2 block calls it
    pytest.param(dict(batch=1, seqlen=600, nheads=4, headdim=64, ngroups=1, dstate=64), dict(nseq=7),
                 torch.bfloat16, 3e-2, 128, id="bf16-packed-varlen"),
    pytest.param(dict(batch=1, seqlen=600, nheads=4, headdim=64, ngroups=1, dstate=64), dict(nseq=7),
                 torch.float32, 2e-3, 128, id="fp32-packed-varlen"),
    # whole chunks: chunk_scan's and dx's builds without bounds checks (ssd_triton.SCAN_EVEN, DX_EVEN), the first at
    # the shape where Triton 3.6 miscompiles a one-stage dx
    pytest.param(dict(batch=1, seqlen=768, nheads=4, headdim=32, ngroups=2, dstate=64), dict(D="hp", z=False),
                 torch.bfloat16, 3e-2, 64, id="bf16-D2d-noz-whole-chunk64"),
    pytest.param(dict(batch=2, seqlen=512, nheads=8, headdim=64, ngroups=2, dstate=128), {}, torch.bfloat16,
                 3e-2, 256, id="bf16-whole-chunk256"),
    pytest.param(dict(batch=2, seqlen=512, nheads=8, headdim=64, ngroups=2, dstate=128), {}, torch.float32, 2e-3,
                 128, id="fp32-whole-chunk128"),
    pytest.param(dict(batch=1, seqlen=640, nheads=4, headdim=64, ngroups=1, dstate=64), dict(nseq=7),
                 torch.bfloat16, 3e-2, 128, id="bf16-packed-varlen-whole"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("shape, opts, act_dtype, tol, chunk_size", GPU_CASES)
def test_cuda_matches_oracle(shape, opts, act_dtype, tol, chunk_size):

    inputs = make_inputs(**shape, **opts, act_dtype=act_dtype, seed=11)
    varlen = bool(opts.get("nseq"))
    kw = dict(chunk_size=chunk_size, dt_softplus=True)
    outs, grads = run_fwd_bwd(via_op, _to(inputs, "cuda"), varlen=varlen, **kw)
    routs, rgrads = run_fwd_bwd(via_oracle, inputs, varlen=varlen, **kw)
    for name, o, r in zip(("out", "final_states", "varlen_states"), outs, routs):
        assert_close(o.cpu(), r, tol, name)
    for k in rgrads:
        assert grads[k].dtype == inputs[k].dtype
        assert_close(grads[k].cpu(), rgrads[k], tol, "d" + k)


@pytest.mark.gpu
@pytest.mark.parametrize("opts, varlen", [(dict(), False), (dict(nseq=5, z=False), True)], ids=["all", "packed"])
def test_cuda_eager_shortcut_equals_the_op(opts, varlen, monkeypatch):
    """Plain eager CUDA calls run the pipeline through _EagerScan, not the custom ops: same kernels, so the same
    outputs and gradients, bit for bit, as through the op (forced by making _plain_eager say no), the eager
    backward's second stream forced on (the op's backward keeps one)."""
    monkeypatch.setattr(ssd_module, "SIDE_STREAM", True)
    inputs = _to(make_inputs(1 if varlen else 2, 600, 8, 64, 2, 64, **opts, act_dtype=torch.bfloat16, seed=21),
                 "cuda")
    kw = dict(chunk_size=256, dt_softplus=True, varlen=varlen)
    grad_fns = []

    def spy(i, **k):
        outs = via_op(i, **k)
        grad_fns.append(type(outs[0].grad_fn).__name__)
        return outs

    outs, grads = run_fwd_bwd(spy, inputs, **kw)
    monkeypatch.setattr(ssd_module, "_plain_eager", lambda *t: False)
    op_outs, op_grads = run_fwd_bwd(spy, inputs, **kw)
    assert "EagerScan" in grad_fns[0] and "ssd_chunk_scan_fwd" in grad_fns[1], grad_fns
    for o, r in zip(outs, op_outs):
        assert torch.equal(o, r)
    assert grads.keys() == op_grads.keys()
    for k in grads:
        assert torch.equal(grads[k], op_grads[k]), k


@pytest.mark.gpu
@pytest.mark.parametrize("side_stream", [True, False, "auto"], ids=["side-stream", "one-stream", "auto"])
def test_cuda_graph_of_eager_calls_equals_eager(side_stream, monkeypatch):
    """An eager forward+backward captured into a CUDA graph (as the benchmarks and GraphedTrainStep capture it),
    replayed on new inputs copied in place, gives the eager call's outputs and gradients bit for bit; with
    ssd.SIDE_STREAM the backward forks a second stream, which the capture must follow and join."""
    monkeypatch.setattr(ssd_module, "SIDE_STREAM", side_stream)
    first = _to(make_inputs(2, 600, 8, 64, 1, 64, init=False, act_dtype=torch.bfloat16, seed=31), "cuda")
    static = {k: v.clone().requires_grad_() if v is not None and v.is_floating_point() else v
              for k, v in first.items()}
    dout = torch.randn(2, 600, 8, 64, device="cuda").to(torch.bfloat16)

    def step():
        for v in static.values():
            if v is not None and v.requires_grad:
                v.grad = None
        out = ssd_chunk_scan(static["x"], static["dt"], static["A"], static["B"], static["C"], 64, D=static["D"],
                             z=static["z"], dt_bias=static["dt_bias"], dt_softplus=True)
        out.backward(dout)
        return out

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    fresh = _to(make_inputs(2, 600, 8, 64, 1, 64, init=False, act_dtype=torch.bfloat16, seed=32), "cuda")
    with torch.no_grad():
        for k, v in fresh.items():
            if v is not None:
                static[k].copy_(v)
    graph.replay()
    got = [out.clone()] + [static[k].grad.clone() for k in GRAD_NAMES if static.get(k) is not None]
    want = [step().detach()] + [static[k].grad for k in GRAD_NAMES if static.get(k) is not None]
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_cuda_eager_plans_replay_bit_for_bit(dtype, monkeypatch):
    """Launch plans on the GPU: from a key's third eager call the forward and the backward replay their compiled
    launches (the pipelines do not run), with the GPU idle or still busy as the call starts (the buffers freed while
    kernels that use them are queued), and give the outputs and gradients of the pipelines bit for bit."""
    monkeypatch.setattr(ssd_module, "SIDE_STREAM", "auto")
    cache = ssd_module._plans.PlanCache()
    monkeypatch.setattr(ssd_module, "_PLANS", cache)
    for seed in range(5):
        t = {k: v.requires_grad_() if v is not None and v.is_floating_point() else v
             for k, v in _to(make_inputs(2, 300, 4, 32, 1, 32, act_dtype=dtype, seed=60 + seed), "cuda").items()}
        dout = torch.randn_like(t["x"])
        results = []
        for plans in (True, False):
            with monkeypatch.context() as m:
                m.setattr(ssd_module, "EAGER_PLANS", plans)
                if plans and seed >= 2:
                    for name in ("_fwd_triton", "_bwd_triton"):
                        m.setattr(ssd_module, name, lambda *a, name=name, **k: pytest.fail(f"{name} ran"))
                for v in t.values():
                    if v is not None and v.requires_grad:
                        v.grad = None
                out, final = ssd_chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, D=t["D"], z=t["z"],
                                            dt_bias=t["dt_bias"], initial_states=t["initial_states"],
                                            dt_softplus=True, return_final_states=True)
                if seed % 2:
                    torch.cuda._sleep(200_000_000)  # work queued as the backward starts
                torch.autograd.backward([out, final], [dout, torch.ones_like(final)])
                results.append([out.detach(), final.detach()] + [t[k].grad.clone() for k in GRAD_NAMES
                                                                 if t.get(k) is not None])
        for i, (a, b) in enumerate(zip(*results)):
            assert torch.equal(a, b), (seed, i)
    assert sorted(type(p).__name__ for p in cache.plans.values()) == ["Plan", "Plan"], cache.plans


@pytest.mark.gpu
def test_cuda_eager_plan_recorded_beside_a_compile_ahead(monkeypatch):
    """A forward key first called under no_grad with inputs that require grad, then with plain inputs: the record
    (the second call) also runs the compile-ahead of the plain configuration, whose pipeline on meta tensors the
    plan leaves out; the replay (the third) gives the pipeline's outputs bit for bit."""
    monkeypatch.setattr(ssd_module, "_PLANS", ssd_module._plans.PlanCache())
    monkeypatch.setattr(ssd_module, "_warm_configs", set())
    t = _to(make_inputs(2, 333, 4, 32, 1, 32, act_dtype=torch.bfloat16, seed=71), "cuda")
    needs_grad = {k: v.clone().requires_grad_() if v is not None and v.is_floating_point() else v
                  for k, v in t.items()}

    def fwd(i):
        return ssd_chunk_scan(i["x"], i["dt"], i["A"], i["B"], i["C"], 64, D=i["D"], z=i["z"], dt_bias=i["dt_bias"],
                              initial_states=i["initial_states"], dt_softplus=True)

    with torch.no_grad():
        fwd(needs_grad)
    fwd(t)
    assert [type(p).__name__ for p in ssd_module._PLANS.plans.values()] == ["Plan"]
    replayed = fwd(t)
    monkeypatch.setattr(ssd_module, "EAGER_PLANS", False)
    assert torch.equal(replayed, fwd(t))


@pytest.mark.gpu
def test_cuda_second_stream_only_where_the_gpu_is_the_bound(monkeypatch):
    """SIDE_STREAM "auto", for backwards without a launch plan: an eager backward forks its second stream while a
    CUDA graph is captured or when the current stream still has work queued as it starts, and not when the stream
    is idle (the host is the bound there); True and False force it either way. With plans, a busy backward replays
    its one-stream plan."""
    monkeypatch.setattr(ssd_module, "EAGER_PLANS", False)
    forks = []

    class Spy(ssd_module._Fork):
        def __init__(self, x, on):
            forks.append(on)
            super().__init__(x, on)

    monkeypatch.setattr(ssd_module, "_Fork", Spy)
    monkeypatch.setattr(ssd_module, "SIDE_STREAM", "auto")
    t = {k: v.requires_grad_() if v is not None and v.is_floating_point() else v
         for k, v in _to(make_inputs(1, 300, 4, 32, 1, 32, init=False, act_dtype=torch.bfloat16, seed=41),
                         "cuda").items()}
    dout = torch.randn_like(t["x"])

    def step(idle):
        out = ssd_chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, D=t["D"], z=t["z"], dt_bias=t["dt_bias"],
                             dt_softplus=True)
        if idle:
            torch.cuda.synchronize()
        else:
            torch.cuda._sleep(500_000_000)  # a fraction of a second of queued work
        out.backward(dout)

    step(True)  # compiles the kernels
    forks.clear()
    step(True)
    assert forks and not any(forks), forks
    forks.clear()
    step(False)
    assert forks and all(forks), forks
    monkeypatch.setattr(ssd_module, "EAGER_PLANS", True)
    monkeypatch.setattr(ssd_module, "_PLANS", ssd_module._plans.PlanCache())
    for _ in range(2):  # the key's first call, then its record (on one stream)
        step(True)
    forks.clear()
    step(False)
    assert not forks, forks
    torch.cuda.synchronize()
    x = t["x"].detach()
    for forced in (True, False):
        monkeypatch.setattr(ssd_module, "SIDE_STREAM", forced)
        assert ssd_module._second_stream(x) is forced
    monkeypatch.setattr(ssd_module, "SIDE_STREAM", "auto")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = ssd_module._second_stream(x)
        y = x * 2
    graph.replay()
    torch.cuda.synchronize()
    assert captured and torch.equal(y, x * 2)


@pytest.mark.gpu
def test_cuda_training_shape_matches_cpu_path():
    """The benchmark shape (bf16, D, z, dt_bias, softplus, chunk 256) against the CPU path in float32."""
    inputs = make_inputs(2, 2048, 24, 64, 1, 128, act_dtype=torch.bfloat16, init=False, seed=12)
    kw = dict(chunk_size=256, dt_softplus=True)
    outs, grads = run_fwd_bwd(via_op, _to(inputs, "cuda"), **kw)
    f32 = {k: v.float() if (v is not None and v.is_floating_point()) else v for k, v in inputs.items()}
    routs, rgrads = run_fwd_bwd(via_op, f32, **kw)
    for name, o, r in zip(("out", "final_states"), outs, routs):
        assert_close(o.cpu(), r, 3e-2, name)
    for k in rgrads:
        assert_close(grads[k].cpu(), rgrads[k], 3e-2, "d" + k)


@pytest.mark.gpu
def test_cuda_compile_fullgraph_dynamic_one_frame():
    def fn(i):
        return ssd_chunk_scan(**i, chunk_size=64, dt_softplus=True, dt_limit=(0.0, float("inf")),
                              return_final_states=True, return_varlen_states=True)

    make = lambda l: _to(make_inputs(1, l, 4, 64, 1, 64, nseq=3, seed=l), "cuda")  # noqa: E731
    assert _compiled_counts(fn, [100, 256, 517], make) == 1


@pytest.mark.gpu
def test_cuda_compile_dynamic_backward_across_head_splits():
    """dB/dC split a group's heads over programs by the chunk count (24 parts at 2 chunks here, 8 at 16, none at
    140), chosen from the traced length without a guard since session 36: one frame over lengths whose own choices
    differ, each matching the eager op (which chooses afresh)."""

    def fn(i):
        return ssd_chunk_scan(**i, chunk_size=64, dt_softplus=True, return_final_states=True)

    make = lambda l: _to(make_inputs(4, l, 24, 32, 1, 32, seed=l), "cuda")  # noqa: E731
    assert _compiled_counts(fn, [100, 1024, 8960], make) == 1


@pytest.mark.gpu
def test_cuda_non_contiguous_inputs():
    """x, z, B, C, dt as column slices of one projection (as Mamba-2 splits zxbcdt): strides, no copies."""
    inputs = make_inputs(2, 300, 4, 32, 2, 32, seed=6)
    outs, grads = run_fwd_bwd(lambda i, **kw: via_op(_strided(i), **kw), _to(inputs, "cuda"), chunk_size=64,
                              dt_softplus=True)
    routs, rgrads = run_fwd_bwd(via_oracle, inputs, chunk_size=64, dt_softplus=True)
    for name, o, r in zip(("out", "final_states"), outs, routs):
        assert_close(o.cpu(), r, 2e-3, name)
    for k in rgrads:
        assert_close(grads[k].cpu(), rgrads[k], 2e-3, "d" + k)


@pytest.mark.gpu
@pytest.mark.inductor
@pytest.mark.parametrize("seqlen, chunk_size, dynamic, seed", [(300, 64, True, 4), (512, 128, False, 8)],
                         ids=["dynamic-l300", "static-whole-chunks"])
def test_cuda_compile_inductor(seqlen, chunk_size, dynamic, seed):
    """Inductor's code matches the eager op, forward and gradients: dynamic with a partial last chunk, and at a
    static shape of whole chunks (the builds without bounds checks, specialised on the sequence length)."""
    inputs = _to(make_inputs(2, seqlen, 4, 64, 1, 64, act_dtype=torch.bfloat16, seed=seed), "cuda")

    def fn(i):
        return ssd_chunk_scan(**i, chunk_size=chunk_size, dt_softplus=True, return_final_states=True)

    compiled = torch.compile(fn, fullgraph=True, dynamic=dynamic)
    outs, grads = run_fwd_bwd(lambda i, varlen=False, **kw: compiled(i), inputs)
    routs, rgrads = run_fwd_bwd(lambda i, varlen=False, **kw: fn(i), inputs)
    for o, r in zip(outs, routs):
        assert_close(o, r, 1e-2, "out")
    for k in rgrads:
        assert_close(grads[k], rgrads[k], 1e-2, "d" + k)
