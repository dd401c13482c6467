"""CUDA checks of the model (run by the lead on the GPU machine): the Triton paths against the CPU path,
compiled generation with CUDA graphs against eager, a compiled bf16 training step."""

import logging

import pytest
import torch
import torch.nn.functional as F

from mamba_compile import MambaConfig, MambaLM

pytestmark = pytest.mark.gpu

VOCAB = 1000


def _config(name: str) -> MambaConfig:
    ssm = dict(layer="Mamba2", d_state=64, headdim=32, chunk_size=64) if "2" in name else dict(layer="Mamba1", d_state=16)
    extra = dict(attn_layer_idx=[2], attn_cfg=dict(num_heads=8, num_heads_kv=2, rotary_emb_dim=16),
                 d_intermediate=512) if name.startswith("hybrid") else {}
    return MambaConfig(d_model=256, n_layer=4, vocab_size=VOCAB, ssm_cfg=ssm, **extra)


def _model(name: str) -> MambaLM:
    torch.manual_seed(0)
    return MambaLM(_config(name)).eval()


def _rel(got, want) -> float:
    return ((got.float().cpu() - want.float()).abs().max() / want.float().abs().max()).item()


@pytest.mark.parametrize("name", ["mamba1", "mamba2", "hybrid2"])
# fp32 tolerance allows for TF32 inside the Triton kernels' tl.dot (Mamba-2 chunked scan)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 2e-3), (torch.bfloat16, 5e-2)], ids=["fp32", "bf16"])
def test_cuda_forward_matches_cpu(name, dtype, tol):
    cpu = _model(name)
    ids = torch.randint(0, VOCAB, (2, 333), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = cpu(ids).logits
        cuda = _model(name).to("cuda", dtype)
        got = cuda(ids.cuda()).logits
    assert got.dtype == dtype
    assert _rel(got, want) < tol


@pytest.mark.parametrize("name", ["mamba1", "mamba2", "hybrid2"])
def test_cuda_decode_matches_prefill(name):
    model = _model(name).cuda()
    ids = torch.randint(0, VOCAB, (4, 40), device="cuda")
    with torch.no_grad():
        full = model(ids).logits
        cache = model.allocate_cache(4, 64)
        model(ids[:, :30], cache=cache)
        steps = torch.stack([model.decode_step(ids[:, t], cache) for t in range(30, 40)], dim=1)
    assert _rel(steps, full[:, 30:].cpu()) < 2e-3


@pytest.mark.parametrize("name", ["mamba1", "mamba2", "hybrid2"])
def test_cuda_graph_generation_equals_eager(name):
    model = _model(name).cuda()
    prompts = [torch.randint(0, VOCAB, (n,), device="cuda") for n in (5, 37, 12)]
    eager = model.generate(prompts, 24, compile=False).sequences
    compiled = model.generate(prompts, 24, compile=True).sequences  # mode="reduce-overhead": CUDA graphs
    again = model.generate(prompts, 24, compile=True).sequences  # replays the captured graphs
    assert torch.equal(compiled, eager) and torch.equal(again, eager)


@pytest.mark.parametrize("name, accumulate, fp32_weight_grads",
                         [("mamba1", False, False), ("mamba2", False, False), ("mamba1", True, False),
                          ("mamba1", True, True)],
                         ids=["mamba1", "mamba2", "mamba1-accumulated-proj-grads", "mamba1-fp32-weight-grads"])
def test_compiled_bf16_training_step_matches_eager(name, accumulate, fp32_weight_grads, monkeypatch):
    from mamba_compile.models import mixers

    monkeypatch.setattr(mixers, "ACCUMULATE_IN_PROJ_GRADS", accumulate)
    monkeypatch.setattr(mixers, "ACCUMULATE_X_PROJ_GRADS", accumulate)
    monkeypatch.setattr(mixers, "FP32_WEIGHT_GRADS", fp32_weight_grads)
    model = _model(name).cuda().train()
    ids = torch.randint(0, VOCAB, (2, 257), device="cuda")

    def loss_fn(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits = model(ids[:, :-1]).logits
        return F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten())

    want = loss_fn(ids)
    want.backward()
    want_grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    got = torch.compile(loss_fn, fullgraph=True)(ids)
    got.backward()
    torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)
    for k, p in model.named_parameters():
        assert _rel(p.grad, want_grads[k].cpu()) < 5e-2, k


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_cuda_kernels_pass_torch_mutation_analysis(name):
    """Tracing a compiled training step and a compiled decode step analyses which arguments each Triton kernel
    writes. When that analysis fails (impure inline asm, say), torch assumes every argument is written and the
    compiled graph copies them all: silently slower. No kernel may fall back."""
    model = _model(name).cuda().train()
    ids = torch.randint(0, VOCAB, (2, 96), device="cuda")
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    analysis_log = logging.getLogger("torch._higher_order_ops.triton_kernel_wrap")
    analysis_log.addHandler(handler)

    def train_step(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(ids, labels=ids).loss

    try:
        loss = torch.compile(train_step, fullgraph=True, backend="aot_eager")(ids)
        loss.backward()
        model.eval()
        cache = model.allocate_cache(2, 128)
        with torch.no_grad():
            model(ids, cache=cache)
            torch.compile(model.decode_step, fullgraph=True, backend="aot_eager")(ids[:, -1], cache)
    finally:
        analysis_log.removeHandler(handler)
    fallbacks = [logging.Formatter().format(r)[-3000:] for r in records
                 if "assuming every input is mutated" in r.getMessage()]
    assert not fallbacks, fallbacks


def _allocation_base(node):
    """The node a kernel argument's storage comes from, through views."""
    views = {torch.ops.aten.as_strided.default, torch.ops.aten.permute.default, torch.ops.aten.transpose.int,
             torch.ops.aten.view.default, torch.ops.aten.reshape.default, torch.ops.aten.slice.Tensor,
             torch.ops.aten.select.int, torch.ops.aten.t.default, torch.ops.aten.unsqueeze.default,
             torch.ops.aten.squeeze.dim, torch.ops.aten.expand.default}
    while node.op == "call_function" and node.target in views:
        node = node.args[0]
    return node


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_compiled_block_gives_each_written_kernel_argument_its_own_buffer(name):
    """A Triton kernel's written arguments must come from distinct buffers in the compiled training graph. Where two
    share one (the compiler merged identical allocations, say), Inductor clones it for each further argument: a
    copy of uninitialised memory per layer and step (AOT autograd's CSE merged the scan backward's three
    empty_strided gradients, two 50 MB copies per Mamba-1 layer at the 130M shape)."""
    from torch._higher_order_ops.triton_kernel_wrap import triton_kernel_wrapper_functional

    model = _model(name).cuda().train()
    block = model.backbone.layers[1]
    shared = []

    def check(graph):
        for node in graph.nodes:
            if node.target is not triton_kernel_wrapper_functional:
                continue
            kwargs = node.kwargs["kwargs"]
            bases = [_allocation_base(kwargs[k]) for k in node.kwargs["tensors_to_clone"]]
            if len(set(bases)) < len(bases):
                shared.append((node.kwargs["kernel_idx"], list(node.kwargs["tensors_to_clone"])))

    torch._dynamo.reset()
    with torch._inductor.config.patch(post_grad_custom_post_pass=check):
        compiled = torch.compile(block, fullgraph=True)
        h = torch.randn(2, 256, 256, device="cuda", requires_grad=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = compiled(h)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().sum().backward()
    assert h.grad is not None and torch.isfinite(h.grad).all()
    assert not shared, shared


def _compiled_pair(name):
    """Two copies of a model with their blocks compiled (regional compile), and a loss of each."""
    models = [_model(name).cuda().train() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    for model in models:
        for layer in model.backbone.layers:
            layer.compile(fullgraph=True)
    return models, [lambda ids, m=m: m(ids, labels=ids).loss for m in models]


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_graphed_train_step_equals_eager_steps(name):
    """Six SGD steps (momentum, weight decay) on different batches, fp32: the CUDA-graph replays (after two eager
    warm-up steps) give the losses and parameters of the same compiled code run eagerly. A float hyperparameter
    changed after the capture, or a batch of another shape, raises."""
    from mamba_compile.models import GraphedTrainStep

    models, losses = _compiled_pair(name)
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01) for m in models]
    graphed = GraphedTrainStep(losses[1], opts[1], warmup=2)
    for ids in [torch.randint(0, VOCAB, (2, 128), device="cuda") for _ in range(6)]:
        opts[0].zero_grad(set_to_none=True)
        want = losses[0](ids)
        want.backward()
        opts[0].step()
        torch.testing.assert_close(graphed(ids), want.detach(), rtol=1e-4, atol=1e-5)
    assert graphed.graph is not None
    for (k, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        assert _rel(q, p.detach().cpu()) < 1e-4, k
    with pytest.raises(ValueError, match="input 0 has shape"):
        graphed(ids[:, :64])
    opts[1].param_groups[0]["lr"] = 0.1
    with pytest.raises(ValueError, match="'lr' changed from 0.05 to 0.1"):
        graphed(ids)


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_graphed_train_step_adamw_as_benchmarked(name):
    """Fused capturable AdamW with a tensor lr under bf16 autocast (bench_model's configuration): replays on one
    batch lower its loss, and an lr set to 0 in place reaches the graph (a replay then leaves every parameter
    as it was)."""
    from mamba_compile.models import GraphedTrainStep

    model = _model(name).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(1e-3, device="cuda"), fused=True, capturable=True)

    def loss_fn(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(ids, labels=ids).loss

    step = GraphedTrainStep(loss_fn, opt, warmup=1)
    ids = torch.randint(0, VOCAB, (2, 128), device="cuda")
    losses = [step(ids).item() for _ in range(8)]
    assert step.graph is not None and losses[-1] < losses[0] - 0.1, losses
    opt.param_groups[0]["lr"].fill_(0.0)
    before = [p.detach().clone() for p in model.parameters()]
    step(ids)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))


_LOAD_CUDA_PACKAGE = """
import sys, torch
import mamba_compile
import mamba_compile.models  # the LMOutput pytree node
io = torch.load(sys.argv[2])
package = mamba_compile.load_package(sys.argv[1])
for ids, want in zip(io["ids"], io["want"]):
    got = package(ids.cuda()).logits.float().cpu()
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < 1e-3, (tuple(ids.shape), err)
print("ok")
"""


@pytest.mark.parametrize("name", ["mamba2", "mamba1"])
def test_cuda_aoti_package_runs_in_a_fresh_process(name, tmp_path):
    """A CUDA AOTInductor package of the model (dynamic length; Mamba-2's lengths end in a partial chunk and in
    whole ones) loads with mamba_compile.load_package in a fresh process and matches the eager model. torch's own
    loader crashes on the GPU machine for every package (see mamba_compile/lowering/package.py)."""
    import dataclasses
    import subprocess
    import sys

    torch.manual_seed(0)
    model = MambaLM(dataclasses.replace(_config(name), n_layer=2)).cuda().eval()
    gen = torch.Generator().manual_seed(3)
    ids = [torch.randint(0, VOCAB, (2, n), generator=gen) for n in (100, 128, 257)]
    seq = torch.export.Dim("seqlen", min=2, max=1024)
    with torch.no_grad():
        ep = torch.export.export(model, (ids[0].cuda(),), dynamic_shapes=({1: seq},))
        want = [model(x.cuda()).logits.float().cpu() for x in ids]
    path = torch._inductor.aoti_compile_and_package(ep, package_path=str(tmp_path / f"{name}.pt2"))
    torch.save({"ids": ids, "want": want}, tmp_path / "io.pt")
    done = subprocess.run([sys.executable, "-c", _LOAD_CUDA_PACKAGE, path, str(tmp_path / "io.pt")],
                          capture_output=True, text=True, timeout=400)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-2000:])
