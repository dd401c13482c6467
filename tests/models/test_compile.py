"""torch.compile(fullgraph=True, dynamic=True) of the whole model: forward, training step, prefill with a
cache and the decode step compile to one frame across sequence lengths; torch.export of the model."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend
from torch._dynamo.utils import counters

from mamba_compile import MambaLM

from ._configs import CONFIGS, VOCAB

LENGTHS = (18, 29, 45)  # all cross the Mamba-2 chunk boundary (16); see _assert_one_graph


def _assert_one_graph(counter, frames_after_first_call):
    """One graph across all lengths: no recompilation after the first call. (frame_count itself can be
    2 for one frame: Dynamo restarts its analysis once when a float argument such as a norm's eps is
    first traced as a symbolic float and then specialised; counters count the graph once.)"""
    assert counter.frame_count == frames_after_first_call
    assert counters["stats"]["unique_graphs"] == 1


@pytest.fixture(autouse=True)
def _clear_counters():
    counters.clear()
    yield


def _model(name):
    """One Mamba layer (compile time grows with the layer count; more layers add nothing here), or the
    two-layer hybrids (a Mamba layer then an attention layer)."""
    torch.manual_seed(0)
    return MambaLM(CONFIGS[name](n_layer=1) if name.startswith("mamba") else CONFIGS[name]())


def _ids(b, l, seed=1):
    return torch.randint(0, VOCAB, (b, l), generator=torch.Generator().manual_seed(seed))


# Tracing the ops is the slow part (about 30 s a Mamba-2 graph on 2 CPU cores), so each case compiles
# one graph: forward alone for the hybrid models, forward + backward (which holds the forward) for the rest.
@pytest.mark.parametrize("name", ["hybrid1"])
def test_forward_one_frame_across_lengths(name):
    model = _model(name).eval()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=counter)
    with torch.no_grad():
        for l in LENGTHS:
            ids = _ids(2, l, seed=l)
            torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
            first = first if l != LENGTHS[0] else counter.frame_count
    _assert_one_graph(counter, first)


@pytest.mark.parametrize(
    "name, accumulate, loss",
    [("mamba1", False, "logits"), ("mamba1", False, "labels"), ("mamba2", False, "logits"), ("mamba2", False, "labels"),
     ("mamba1", True, "logits")],
    ids=["mamba1-logits", "mamba1-labels", "mamba2-logits", "mamba2-labels", "mamba1-accumulated-proj-grads-logits"])
def test_training_step_one_frame_across_lengths(name, accumulate, loss, monkeypatch):
    """Compiled training step, with the loss from the logits or fused (model(ids, labels=ids)), against
    eager cross-entropy of the materialised logits (and Mamba-1 through mixers.ACCUMULATE_*_PROJ_GRADS's autograd
    functions)."""
    from mamba_compile.models import mixers

    monkeypatch.setattr(mixers, "ACCUMULATE_IN_PROJ_GRADS", accumulate)
    monkeypatch.setattr(mixers, "ACCUMULATE_X_PROJ_GRADS", accumulate)
    model = _model(name).train()
    counter = CompileCounterWithBackend("aot_eager")

    def loss_fn(ids):
        logits = model(ids[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    def fused(ids):  # the labels path predicts ids[:, 1:] from ids[:, :-1]: pass the whole sequence
        out = model(ids, labels=ids)
        assert out.logits is None
        return out.loss

    compiled = torch.compile(loss_fn if loss == "logits" else fused, fullgraph=True, dynamic=True, backend=counter)
    for l in LENGTHS:
        ids = _ids(2, l, seed=l)
        model.zero_grad()
        loss = compiled(ids)
        loss.backward()
        got = {k: p.grad.clone() for k, p in model.named_parameters()}
        model.zero_grad()
        want_loss = loss_fn(ids)
        want_loss.backward()
        torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-5)
        for k, p in model.named_parameters():
            torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-5, msg=k)
        first = first if l != LENGTHS[0] else counter.frame_count
    _assert_one_graph(counter, first)


@pytest.mark.parametrize("name", ["hybrid2"])
def test_prefill_and_decode_compile_once(name):
    model = _model(name).eval()
    prefill_counter, step_counter = CompileCounterWithBackend("aot_eager"), CompileCounterWithBackend("aot_eager")
    prefill = torch.compile(model, fullgraph=True, dynamic=True, backend=prefill_counter)
    step = torch.compile(model.decode_step, fullgraph=True, backend=step_counter)
    with torch.no_grad():
        for l in LENGTHS:
            ids = _ids(2, l + 3, seed=l)
            cache, ref_cache = model.allocate_cache(2, 64), model.allocate_cache(2, 64)
            got = [prefill(ids[:, :l], cache=cache).logits[:, -1]]
            want = [model(ids[:, :l], cache=ref_cache).logits[:, -1]]
            for t in range(l, l + 3):
                got.append(step(ids[:, t].contiguous(), cache))  # as generate() passes it
                want.append(model.decode_step(ids[:, t], ref_cache))
            torch.testing.assert_close(torch.stack(got), torch.stack(want), rtol=1e-5, atol=1e-5)
            for a, b in zip(cache.tensors(), ref_cache.tensors()):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
            if l == LENGTHS[0]:
                first = (prefill_counter.frame_count, step_counter.frame_count)
    assert (prefill_counter.frame_count, step_counter.frame_count) == first  # no recompilation
    assert counters["stats"]["unique_graphs"] == 2  # the prefill graph and the decode graph


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_export_forward_and_decode(name):
    model = _model(name).eval()
    ids = _ids(2, 21)
    seq = torch.export.Dim("seqlen", min=2, max=256)
    ep = torch.export.export(model, (ids,), dynamic_shapes=({1: seq},))
    names = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    assert any("mamba_compile" in n for n in names), names
    with torch.no_grad():
        for l in (21, 40):
            x = _ids(2, l, seed=l)
            torch.testing.assert_close(ep.module()(x).logits, model(x).logits, rtol=1e-5, atol=1e-5)

    class Step(torch.nn.Module):  # decode with the cache as an explicit, mutated input
        def __init__(self, lm):
            super().__init__()
            self.lm = lm

        def forward(self, token, cache):
            return self.lm.decode_step(token, cache)

    cache, ref_cache = model.allocate_cache(2, 8), model.allocate_cache(2, 8)
    ep_step = torch.export.export(Step(model), (ids[:, 0], cache))
    with torch.no_grad():
        for t in range(3):
            torch.testing.assert_close(ep_step.module()(ids[:, t], cache), model.decode_step(ids[:, t], ref_cache),
                                       rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cache.ssm_states[0], ref_cache.ssm_states[0], rtol=1e-5, atol=1e-5)
    assert cache.lengths.tolist() == [3, 3]


_LOAD_PACKAGE = """
import sys, torch
import mamba_compile
io = torch.load(sys.argv[2])
package = mamba_compile.load_package(sys.argv[1])  # imports the ops and the LMOutput pytree node itself
for ids, want in zip(io["ids"], io["want"]):
    torch.testing.assert_close(package(ids).logits, want, rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.inductor
@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_aoti_package_runs_in_a_fresh_process(name, tmp_path):
    """The CPU package calls the opaque CPU scan ops by name, with their float arguments stored in JSON:
    Mamba-2's default dt_limit (0, inf) must reach the op as finite floats, or the package fails to load
    ("json.exception.type_error.302")."""
    import subprocess
    import sys

    model = _model(name).eval()
    seq = torch.export.Dim("seqlen", min=2, max=256)
    ep = torch.export.export(model, (_ids(2, 21),), dynamic_shapes=({1: seq},))
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / f"{name}.pt2"))
    ids = [_ids(2, 21), _ids(2, 40, seed=2)]
    with torch.no_grad():
        torch.save({"ids": ids, "want": [model(x).logits for x in ids]}, tmp_path / "io.pt")
    done = subprocess.run([sys.executable, "-c", _LOAD_PACKAGE, path, str(tmp_path / "io.pt")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
