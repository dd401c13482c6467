"""linear_cross_entropy against F.cross_entropy of the materialised logits (float64), block by block."""

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounterWithBackend

import mamba_compile.ops.cross_entropy as ce
from mamba_compile.ops import linear_cross_entropy


def _inputs(rows, d, vocab, dtype=torch.float64, seed=0, ignored=(3, 5)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(rows, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(vocab, d, generator=g, dtype=torch.float64)).to(dtype).requires_grad_()
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[[i for i in ignored if i < rows]] = -100
    return h, w, labels


@pytest.mark.parametrize("block_rows", [1, 7, 64], ids=["rows1", "rows7", "one-block"])
def test_matches_materialised_logits(monkeypatch, block_rows):
    vocab = 50
    monkeypatch.setattr(ce, "_BLOCK_ELEMENTS", block_rows * vocab)
    h, w, labels = _inputs(37, 16, vocab)
    loss = linear_cross_entropy(h, w, labels)
    want = F.cross_entropy(h @ w.T, labels)
    torch.testing.assert_close(loss, want, rtol=1e-12, atol=1e-12)
    got = torch.autograd.grad(2.5 * loss, (h, w))
    ref = torch.autograd.grad(2.5 * want, (h, w))
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_no_rows_gives_zero_gradients():
    # the weight gradient is written by the first block's matmul; with no block at all it must still be zeros
    h, w, labels = _inputs(0, 4, 9)
    loss = linear_cross_entropy(h, w, labels)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(h @ w.T, labels))
    dh, dw = torch.autograd.grad(loss, (h, w))
    assert dh.shape == (0, 4) and torch.equal(dw, torch.zeros_like(w))


def test_gradcheck():
    h, w, labels = _inputs(6, 4, 9, ignored=(2,))
    torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, labels), (h, w))


def test_no_grad_gives_the_loss_only():
    h, w, labels = _inputs(20, 8, 30)
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, labels)
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.T, labels).detach())


def test_every_label_ignored_is_nan_like_torch():
    h, w, _ = _inputs(5, 4, 7)
    labels = torch.full((5,), -100)
    assert torch.isnan(linear_cross_entropy(h, w, labels)) and torch.isnan(F.cross_entropy(h @ w.T, labels))


def test_autocast_bf16_close_to_fp32():
    h, w, labels = _inputs(64, 32, 100, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = linear_cross_entropy(h, w, labels)
        want = F.cross_entropy(F.linear(h, w).float(), labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, want, rtol=2e-3, atol=2e-3)
    dw = torch.autograd.grad(loss, w)[0]
    assert dw.dtype == torch.float32  # accumulated in fp32, returned in the parameter's dtype
    torch.testing.assert_close(dw, torch.autograd.grad(want, w)[0], rtol=3e-2, atol=3e-3)


def test_opcheck():
    h, w, labels = _inputs(11, 8, 13)
    torch.library.opcheck(torch.ops.mamba_compile.linear_cross_entropy, (h, w, labels, -100, None, True))
    # without gradients the op has no backward: its inputs must not require grad
    torch.library.opcheck(torch.ops.mamba_compile.linear_cross_entropy,
                          (h.detach(), w.detach(), labels, -100, torch.bfloat16, False))


def test_compile_fullgraph_dynamic_one_frame():
    counter = CompileCounterWithBackend("aot_eager")
    fn = torch.compile(linear_cross_entropy, fullgraph=True, dynamic=True, backend=counter)
    for rows in (9, 17, 30):
        h, w, labels = _inputs(rows, 8, 21, seed=rows)
        loss = fn(h, w, labels)
        want = F.cross_entropy(h @ w.T, labels)
        torch.testing.assert_close(loss, want)
        for a, b in zip(torch.autograd.grad(loss, (h, w)), torch.autograd.grad(want, (h, w))):
            torch.testing.assert_close(a, b)
    assert counter.frame_count == 1


@pytest.mark.parametrize("args, exc, name", [
    (lambda h, w, l: (h, w, l.int()), TypeError, "labels"),
    (lambda h, w, l: (h, w, l[:-1]), ValueError, "labels"),
    (lambda h, w, l: (h, w[:, :-1], l), ValueError, "weight"),
    (lambda h, w, l: (h[None], w, l), ValueError, "hidden"),
    (lambda h, w, l: (h, w, torch.where(l == 0, 99, l).index_fill(0, torch.tensor([0]), 99)), ValueError, "labels"),
], ids=["labels-dtype", "labels-rows", "weight-d", "hidden-rank", "label-out-of-range"])
def test_bad_input(args, exc, name):
    h, w, labels = _inputs(8, 4, 10)
    with pytest.raises(exc, match=name):
        linear_cross_entropy(*args(h, w, labels))


def _check_ce_rows(vocab, dtype, compute_grad, offset=0, **kwargs):
    """ce_rows on 6 random rows (one label ignored, one the last column; labels with a stride), starting
    ``offset`` elements into their storage, against float64 torch; returns the vector width it chose."""
    from mamba_compile.ops import cross_entropy_triton as k

    device = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator().manual_seed(vocab)
    rows = 6
    logits = (3 * torch.randn(rows, vocab, generator=g, dtype=torch.float64)).to(dtype)
    labels = torch.randint(0, vocab, (rows,), generator=g)
    labels[2] = -100
    labels[4] = vocab - 1  # the last column, in the last (partial) tile
    labels[5] = 0
    ok = labels != -100
    count = ok.sum()
    x = logits.double()
    lse = x.logsumexp(-1)
    want_loss = torch.where(ok, lse - x.gather(1, labels.clamp(min=0)[:, None]).squeeze(1), 0.0)
    want_grad = (x - lse[:, None]).exp()
    want_grad[ok.nonzero().squeeze(1), labels[ok]] -= 1.0
    want_grad *= (ok / count)[:, None]
    storage = torch.full((offset + rows * vocab,), float("nan"), dtype=dtype, device=device)
    work = storage[offset:].view(rows, vocab)
    work.copy_(logits)
    inv_count = torch.tensor([1.0 / count.item()], device=device)
    strided_labels = torch.stack([labels, labels], dim=1).to(device)[:, 0]  # stride 2
    loss = k.ce_rows(work, strided_labels, inv_count, -100, compute_grad, **kwargs)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    torch.testing.assert_close(loss.cpu().double(), want_loss, rtol=1e-5, atol=1e-5)
    if compute_grad:
        torch.testing.assert_close(work.cpu().double(), want_grad, **tol)
        assert (work[2] == 0).all()  # the ignored row
    else:
        assert torch.equal(work.cpu(), logits)  # untouched
    assert storage[:offset].isnan().all()  # nothing written before the rows
    return k._vector_width(work)


# The CUDA path's kernel (cross_entropy_triton.ce_rows; the Triton interpreter on CPU): per-row losses and the
# gradient written over the logits, against float64 torch. Vocabularies below, at and above one 4096-wide tile;
# rows whose loads go 1, 4 or 8 elements at a time (v1000-bf16: 8; v4096: 4).
@pytest.mark.parametrize("vocab, dtype", [(37, torch.float32), (4096, torch.float32), (5003, torch.float32),
                                          (777, torch.bfloat16), (1000, torch.bfloat16)],
                         ids=["v37", "v4096", "v5003-two-tiles", "v777-bf16", "v1000-bf16"])
@pytest.mark.parametrize("compute_grad", [True, False], ids=["grad", "loss-only"])
@pytest.mark.parametrize("separate_max", [False, True], ids=["running-max", "separate-max"])
def test_ce_rows_kernel_matches_float64(vocab, dtype, compute_grad, separate_max):
    _check_ce_rows(vocab, dtype, compute_grad, separate_max=separate_max)


# Loads and stores VEC elements wide only where the rows' length, stride and start allow: rows starting 2 or 1
# elements past an aligned address, in bf16 and fp32.
@pytest.mark.parametrize("vocab, dtype, offset, vec", [
    (1000, torch.bfloat16, 0, 8), (1000, torch.bfloat16, 2, 2), (1000, torch.bfloat16, 1, 1),
    (1000, torch.float32, 2, 2), (1002, torch.bfloat16, 0, 2), (777, torch.bfloat16, 0, 1)],
    ids=["bf16-aligned", "bf16-off2", "bf16-off1", "fp32-off2", "bf16-v1002", "bf16-odd"])
def test_ce_rows_kernel_vector_width(vocab, dtype, offset, vec):
    assert _check_ce_rows(vocab, dtype, True, offset=offset) == vec


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_ce_rows_kernel_out_of_range_label_gives_nan_not_a_stray_read(dtype):
    """What only an unchecked call (a replayed CUDA graph) can pass: a label outside the vocabulary makes its row's
    loss and gradient NaN; the other rows are untouched by it."""
    from mamba_compile.ops.cross_entropy_triton import ce_rows

    device = "cuda" if torch.cuda.is_available() else "cpu"
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    want = ce_rows(logits.clone(), torch.tensor([1, 2, 3, 4], device=device), torch.tensor([0.25], device=device),
                   -100, True)
    work = logits.clone()
    loss = ce_rows(work, torch.tensor([1, 50, 3, -7], device=device), torch.tensor([0.25], device=device), -100, True)
    assert loss[[1, 3]].isnan().all() and work[[1, 3]].isnan().all()
    torch.testing.assert_close(loss[[0, 2]], want[[0, 2]])


@pytest.mark.gpu
@pytest.mark.parametrize("out_dtype", [True, False], ids=["fp32-out", "cast-and-add"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_cuda_matches_materialised_logits(monkeypatch, autocast, out_dtype):
    """The CUDA path (Triton kernel per block of rows, several blocks; gradient matmuls accumulating into fp32 in
    cuBLAS, or their bf16 products cast and added) against F.cross_entropy in float64."""
    vocab = 5003
    monkeypatch.setattr(ce, "_CUDA_BLOCK_BYTES", 13 * vocab * 2)  # blocks of 13 bf16 / 6 fp32 rows
    monkeypatch.setattr(ce, "_CUDA_OUT_DTYPE", out_dtype)
    h, w, labels = _inputs(40, 32, vocab, dtype=torch.float32)
    hc, wc = (t.detach().cuda().requires_grad_() for t in (h, w))
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        loss = linear_cross_entropy(hc, wc, labels.cuda())
    dh, dw = torch.autograd.grad(loss, (hc, wc))
    h64, w64 = (t.detach().double().requires_grad_() for t in (h, w))
    if autocast:  # the reference sees the bf16-rounded operands the matmuls see
        h64, w64 = (t.detach().bfloat16().double().requires_grad_() for t in (h, w))
    want = F.cross_entropy(h64 @ w64.T, labels)
    rh, rw = torch.autograd.grad(want, (h64, w64))
    tol = dict(rtol=2e-2, atol=2e-3) if autocast else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss.double().cpu(), want.detach(), **tol)
    torch.testing.assert_close(dh.double().cpu(), rh, **tol)
    torch.testing.assert_close(dw.double().cpu(), rw, **tol)
