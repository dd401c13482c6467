"""A model and the ops on cuda:1 while the current device is cuda:0 (a model moved with ``.to("cuda:1")``, no
``torch.cuda.set_device``; lm-eval's ``--device cuda:1`` is such a case): every result must equal the one computed
with cuda:1 current. Triton launches on the current device whatever the tensors' device, and streams and CUDA
graphs are made on the current device, so without the launches' device guard (``_triton.device_run``) and the
guards in ``generate`` and ``GraphedTrainStep`` these runs fail or read another GPU's memory unordered. Needs two
GPUs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mamba_compile import MambaConfig, MambaLM

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                 reason="needs two CUDA devices")]

VOCAB = 500
OTHER = torch.device("cuda:1")


@pytest.fixture(autouse=True)
def _current_device_0():
    """cuda:0 current, as in a process that never called set_device, before and after each test."""
    previous = torch.cuda.current_device()
    torch.cuda.set_device(0)
    yield
    assert torch.cuda.current_device() == 0  # nothing may leave another device current
    torch.cuda.set_device(previous)


def _model(name: str) -> MambaLM:
    ssm = dict(layer="Mamba2", d_state=32, headdim=32, chunk_size=32) if "2" in name else dict(layer="Mamba1",
                                                                                                d_state=16)
    extra = dict(attn_layer_idx=[1], attn_cfg=dict(num_heads=4, num_heads_kv=2, rotary_emb_dim=16),
                 d_intermediate=256) if name.startswith("hybrid") else {}
    torch.manual_seed(0)
    return MambaLM(MambaConfig(d_model=128, n_layer=3, vocab_size=VOCAB, ssm_cfg=ssm, **extra)).to(OTHER)


def _both(fn):
    """fn() with cuda:0 current (what is tested), then with cuda:1 current (the answer)."""
    got = fn()
    torch.cuda.synchronize(OTHER)
    with torch.cuda.device(OTHER):
        want = fn()
    return got, want


def _assert_same(got, want):
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["mamba1", "mamba2", "hybrid2"])
def test_forward_backward_on_the_tensors_device(name):
    model = _model(name).train()
    ids = torch.randint(0, VOCAB, (2, 200), device=OTHER)

    def step():
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    (got_loss, got_grads), (want_loss, want_grads) = _both(step)
    assert got_loss.device == OTHER
    _assert_same(got_loss, want_loss)
    for g, w in zip(got_grads, want_grads):
        _assert_same(g, w)


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_decode_and_generate_on_the_tensors_device(name):
    model = _model(name).eval()
    ids = torch.randint(0, VOCAB, (3, 40), device=OTHER)

    def decode():
        cache = model.allocate_cache(3, 64)
        with torch.no_grad():
            model(ids[:, :30], cache=cache)
            return torch.stack([model.decode_step(ids[:, t], cache) for t in range(30, 40)], 1)

    _assert_same(*_both(decode))
    prompts = [ids[0, :7], ids[1, :19], ids[2, :3]]
    got, want = _both(lambda: model.generate(prompts, 16, compile=False).sequences)
    assert got.device == OTHER and torch.equal(got, want)


def test_graphed_generation_on_the_tensors_device():
    """Greedy generation with the compiled decode step captured in CUDA graphs (the default on CUDA)."""
    model = _model("mamba2").eval()
    prompts = [torch.randint(0, VOCAB, (n,), device=OTHER) for n in (5, 23)]
    eager = model.generate(prompts, 20, compile=False).sequences
    graphed = model.generate(prompts, 20).sequences
    again = model.generate(prompts, 20).sequences  # replays
    assert torch.equal(graphed, eager) and torch.equal(again, eager)


def test_ops_through_the_custom_ops_and_the_second_stream(monkeypatch):
    """The SSD through its custom ops (a compiled function with the aot_eager backend runs them eagerly, where
    torch's triton_op launches the kernels) and through the eager shortcut with the backward's second stream
    forced on (the fork to a non-current device)."""
    from mamba_compile.ops import ssd, ssd_chunk_scan

    monkeypatch.setattr(ssd, "SIDE_STREAM", True)
    g = torch.Generator(device=OTHER).manual_seed(0)
    b, l, h, p, n = 2, 300, 4, 32, 32

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, device=OTHER) * scale).requires_grad_()

    x, z, dt = rnd(b, l, h, p), rnd(b, l, h, p), rnd(b, l, h, scale=0.5)
    A, B, C, D = -torch.rand(h, device=OTHER) - 0.5, rnd(b, l, 1, n, scale=0.5), rnd(b, l, 1, n, scale=0.5), rnd(h)
    leaves = [x, z, dt, B, C, D]
    dout = torch.randn(b, l, h, p, generator=g, device=OTHER)

    def run(fn):
        for t in leaves:
            t.grad = None
        out = fn(x, dt, A, B, C, 64, D=D, z=z, dt_softplus=True)
        out.backward(dout)
        return [out.detach()] + [t.grad for t in leaves]

    for fn in (ssd_chunk_scan, torch.compile(ssd_chunk_scan, backend="aot_eager", fullgraph=True)):
        got, want = _both(lambda: run(fn))
        for a, w in zip(got, want):
            _assert_same(a, w)


def test_graphed_train_step_on_the_tensors_device():
    from mamba_compile.models import GraphedTrainStep

    models = [_model("mamba2").train() for _ in range(2)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9) for m in models]
    batches = [torch.randint(0, VOCAB, (2, 96), device=OTHER) for _ in range(4)]

    def loss_of(model):
        return lambda ids: F.cross_entropy(model(ids[:, :-1]).logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    step = GraphedTrainStep(loss_of(models[0]), opts[0], warmup=2)
    losses = [step(ids).clone() for ids in batches]
    assert step.graph is not None
    with torch.cuda.device(OTHER):
        want = GraphedTrainStep(loss_of(models[1]), opts[1], warmup=2)
        want_losses = [want(ids).clone() for ids in batches]
    for a, w in zip(losses, want_losses):
        _assert_same(a, w)
    with pytest.raises(ValueError, match="on one device"):
        step(batches[0], batches[0].to("cuda:0"))
