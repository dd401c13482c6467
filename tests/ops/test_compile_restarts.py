"""One backend call per compiled frame for every op with a float argument (norms' eps, the SSD's dt_limit).

Under torch.compile(dynamic=True) Dynamo traces a Python float that has a source (a function's __defaults__,
a global, an argument of the compiled function, a module attribute) as a symbolic float. A symbolic float
cannot reach a custom op's ``float`` argument, so AOTAutograd's tensorify pass marks it for specialisation and
Dynamo restarts the analysis of the whole frame: the backend runs twice (CompileCounter reads 2 for one
graph) and the compile takes about twice as long. The public wrappers therefore keep their float defaults as
literals in their bodies (``eps=None``, ``dt_limit=None``), which Dynamo traces as constants.

A float that the caller passes from a source of its own still restarts once (Dynamo's design; no code inside
the traced wrapper can prevent it, since the float is already symbolic when the wrapper sees it): callers pass
literals, or compile with ``torch._dynamo.config.patch(specialize_float=True)``, as the last test checks.
"""

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from mamba_compile.ops import layer_norm, rms_norm, rms_norm_gated, ssd_chunk_scan

LENGTHS = (3, 7, 12)


def _norm_inputs(seqlen):
    g = torch.Generator().manual_seed(seqlen)
    x, z = (torch.randn(2, seqlen, 32, generator=g).requires_grad_() for _ in range(2))
    w = (1 + 0.3 * torch.randn(32, generator=g)).requires_grad_()
    return x, w, z


def _ssd_inputs(seqlen):
    g = torch.Generator().manual_seed(seqlen)
    x = torch.randn(1, seqlen, 2, 8, generator=g).requires_grad_()
    dt = (0.5 * torch.randn(1, seqlen, 2, generator=g)).requires_grad_()
    A = (-torch.rand(2, generator=g) - 0.5).requires_grad_()
    B, C = (torch.randn(1, seqlen, 1, 8, generator=g).requires_grad_() for _ in range(2))
    return x, dt, A, B, C


def _frames(fn, make, *extra):
    """Backend calls for fn compiled once (fullgraph, dynamic, aot_eager) and run fwd + bwd over LENGTHS,
    checked against eager; also asserts that Dynamo produced a single graph."""
    torch._dynamo.reset()
    counters.clear()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend=counter)
    for seqlen in LENGTHS:
        inputs = make(seqlen)
        out, want = compiled(*inputs, *extra), fn(*inputs, *extra)
        torch.testing.assert_close(out, want)
        leaves = [t for t in inputs if t.requires_grad]
        grads = torch.autograd.grad(out.square().sum(), leaves)
        grads_want = torch.autograd.grad(want.square().sum(), leaves)
        for got, exp in zip(grads, grads_want):
            torch.testing.assert_close(got, exp, rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] == 1
    return counter.frame_count


def _norms_wrapper_defaults(x, w, z):
    return rms_norm_gated(layer_norm(rms_norm(x, w), w), w, z, group_size=16)


def _norms_literal_eps(x, w, z):
    y = layer_norm(rms_norm(x, w, eps=1e-5), w, eps=1e-5)
    return rms_norm_gated(y, w, z, eps=1e-5, group_size=16, norm_before_gate=False)


def _ssd_default_dt_limit(x, dt, A, B, C):
    return ssd_chunk_scan(x, dt, A, B, C, 16, dt_softplus=True)


def _ssd_literal_dt_limit(x, dt, A, B, C):
    return ssd_chunk_scan(x, dt, A, B, C, 16, dt_softplus=True, dt_limit=(0.05, float("inf")))


@pytest.mark.parametrize(
    "fn, make",
    [
        pytest.param(_norms_wrapper_defaults, _norm_inputs, id="norms-wrapper-default-eps"),
        pytest.param(_norms_literal_eps, _norm_inputs, id="norms-literal-eps"),
        pytest.param(_ssd_default_dt_limit, _ssd_inputs, id="ssd-wrapper-default-dt_limit"),
        pytest.param(_ssd_literal_dt_limit, _ssd_inputs, id="ssd-literal-dt_limit"),
    ],
)
def test_float_defaults_and_literals_compile_without_restart(fn, make):
    assert _frames(fn, make) == 1


def _norms_caller_eps(x, w, z, eps=1e-5):
    return rms_norm_gated(rms_norm(x, w, eps=eps), w, z, eps=eps, group_size=16)


def _ssd_caller_dt_limit(x, dt, A, B, C, dt_limit=(0.0, float("inf"))):
    return ssd_chunk_scan(x, dt, A, B, C, 16, dt_softplus=True, dt_limit=dt_limit)


@pytest.mark.parametrize(
    "fn, make, extra",
    [
        pytest.param(_norms_caller_eps, _norm_inputs, (), id="norms-eps-from-compiled-fn-default"),
        pytest.param(_norms_caller_eps, _norm_inputs, (1e-4,), id="norms-eps-as-float-argument"),
        pytest.param(_ssd_caller_dt_limit, _ssd_inputs, (), id="ssd-dt_limit-from-compiled-fn-default"),
        pytest.param(_ssd_caller_dt_limit, _ssd_inputs, ((0.05, 0.9),), id="ssd-dt_limit-as-float-arguments"),
    ],
)
def test_caller_floats_compile_without_restart_when_floats_are_specialised(fn, make, extra):
    """The remedy for floats from the caller's own sources: specialise floats while compiling."""
    with torch._dynamo.config.patch(specialize_float=True):
        assert _frames(fn, make, *extra) == 1
