"""add_matmul (c + a^T b, small k) against float64: its Triton kernel (the interpreter on CPU, directly launched),
the op on CPU, under compile and through torch.export, and bad input; add_matmul_ (c += a^T b, in place, any k):
against float64, opcheck, and written into its argument's buffer under Inductor; matmul_into_ (c = a^T b written
into c, c perhaps float32 from 16-bit a and b) likewise, into row slices of one buffer."""

import pytest
import torch
import torch._dynamo.testing
from torch._inductor.utils import run_and_get_code

from mamba_compile.ops import add_matmul, add_matmul_, matmul_into_

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(m, n, k, dtype, device="cpu", seed=0, c_transposed=False):
    g = torch.Generator().manual_seed(seed)
    c = torch.randn(n, m, generator=g).T if c_transposed else torch.randn(m, n, generator=g)  # strides (1, m): a view
    a = torch.randn(k, m, generator=g) / k**0.5
    b = torch.randn(k, n, generator=g)
    return [t.to(device, dtype) for t in (c, a, b)]


def _want(c, a, b):
    return c.double() + a.double().T @ b.double()


def _close(got, want, dtype):
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    err = ((got.double().cpu() - want.cpu()).abs().max() / want.abs().max()).item()
    assert err <= tol, f"relative error {err:.2e} > {tol}"


# Tiles that cover the output exactly and partly (masked rows, columns and k), k from 3 to 256, a transposed c.
@pytest.mark.parametrize("m, n, k, c_transposed", [(64, 128, 16, False), (37, 300, 80, False), (5, 7, 3, False),
                                                   (130, 129, 256, True)],
                         ids=["exact", "partial-k80", "tiny", "k256-c-transposed"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_kernel_matches_float64(m, n, k, c_transposed, dtype):
    from mamba_compile.ops import add_matmul_triton

    c, a, b = _inputs(m, n, k, dtype, DEVICE, seed=m + n + k, c_transposed=c_transposed)
    out = add_matmul_triton.add_matmul_fwd(c, a, b, wrap=False, config=(32, 64, 4))
    assert out.dtype == dtype and out.shape == (m, n)
    _close(out, _want(c, a, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_op_matches_float64(dtype):
    c, a, b = _inputs(33, 65, 80, dtype, seed=1)
    _close(add_matmul(c, a, b), _want(c, a, b), dtype)


def test_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(torch.ops.mamba_compile.add_matmul, _inputs(9, 12, 5, dtype, seed=2))


def test_compile_fullgraph_dynamic_one_frame():
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(add_matmul, fullgraph=True, dynamic=True, backend=counter)
    for n in (10, 17, 40):
        c, a, b = _inputs(12, n, 6, torch.float32, seed=n)
        torch.testing.assert_close(compiled(c, a, b), add_matmul(c, a, b))
    assert counter.frame_count == 1


class _AddMatmul(torch.nn.Module):
    def __init__(self, m, k):
        super().__init__()
        self.a = torch.nn.Parameter(torch.randn(k, m, generator=torch.Generator().manual_seed(4)))

    def forward(self, c, b):
        return add_matmul(c, self.a, b)


def test_export_matches_eager():
    mod = _AddMatmul(12, 6)
    c, _, b = _inputs(12, 20, 6, torch.float32, seed=5)
    n = torch.export.Dim("n", min=2, max=4096)
    ep = torch.export.export(mod, (c, b), dynamic_shapes=({1: n}, {1: n}))
    assert any("add_matmul" in str(node.target) for node in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(c, b), mod(c, b))
    c2, _, b2 = _inputs(12, 33, 6, torch.float32, seed=6)  # another width through the same program
    torch.testing.assert_close(ep.module()(c2, b2), mod(c2, b2))


@pytest.mark.parametrize("args, exc, match", [
    (lambda c, a, b: (c[0], a, b), ValueError, "c must have 2 dims"),
    (lambda c, a, b: (c, a[:, :-1], b), ValueError, r"a must have shape \(k, m\)"),
    (lambda c, a, b: (c, a, b[:-1]), ValueError, r"b must have shape \(k, n\)"),
    (lambda c, a, b: (c, a.double(), b), TypeError, "a must have dtype"),
    (lambda c, a, b: (c.int(), a, b), TypeError, "c must have dtype"),
], ids=["c-rank", "a-m", "b-k", "a-dtype", "c-int"])
def test_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        add_matmul(*args(*_inputs(8, 9, 4, torch.float32)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_inplace_matches_float64(dtype):
    c, a, b = _inputs(33, 65, 300, dtype, seed=7)  # k past the out-of-place kernel's 256
    want = _want(c, a, b)
    buf = c.clone()
    assert add_matmul_(buf, a, b) is None
    _close(buf, want, dtype)


def test_inplace_opcheck():
    for dtype in (torch.float32, torch.bfloat16):
        torch.library.opcheck(torch.ops.mamba_compile.add_matmul_, _inputs(9, 12, 5, dtype, seed=8))


def test_inplace_writes_into_the_product_under_inductor():
    # What Mamba-1's in-projection backward does: a first product, then a second added into its buffer. Inductor must
    # pass the first product's buffer itself to the op (reinplaced), not a clone of it.
    def f(a1, b1, a2, b2):
        c = a1.T @ b1
        add_matmul_(c, a2, b2)
        return c

    a1, b1, a2, b2 = (torch.randn(k, n, generator=torch.Generator().manual_seed(k + n))
                      for k, n in ((7, 24), (7, 10), (40, 24), (40, 10)))
    got, (code,) = run_and_get_code(torch.compile(f, fullgraph=True), a1, b1, a2, b2)
    torch.testing.assert_close(got, a1.T @ b1 + a2.T @ b2)
    calls = [line for line in code.splitlines() if "torch.ops.mamba_compile.add_matmul_.default(" in line]
    assert len(calls) == 1, code
    buf = calls[0].split("(")[1].split(",")[0].strip()
    assert "extern_kernels.mm(" in code and f"out={buf})" in code, code  # the op's c is the mm's own output
    assert "clone" not in code and "copy_" not in code, code


def test_inplace_bad_input():
    c, a, b = _inputs(8, 9, 4, torch.float32)
    with pytest.raises(ValueError, match=r"b must have shape \(k, n\)"):
        add_matmul_(c, a, b[:-1])


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "inductor"])
def test_cuda_inplace_matches_float64(compiled):
    fn = torch.compile(add_matmul_, fullgraph=True) if compiled else add_matmul_
    c, a, b = _inputs(4096, 768, 1536, torch.bfloat16, "cuda", seed=9)
    want = _want(c, a, b)
    fn(c, a, b)
    _close(c, want, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "inductor"])
def test_cuda_op_matches_float64(compiled):
    fn = torch.compile(add_matmul, fullgraph=True) if compiled else add_matmul
    c, a, b = _inputs(1536, 4100, 80, torch.bfloat16, "cuda", seed=3)
    _close(fn(c, a, b), _want(c, a, b), torch.bfloat16)


@pytest.mark.parametrize("dtype, c_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.bfloat16),
                                            (torch.bfloat16, torch.float32)], ids=["fp32", "bf16", "bf16-into-fp32"])
def test_into_matches_float64(dtype, c_dtype):
    c, a, b = _inputs(33, 65, 300, dtype, seed=10)
    c = c.to(c_dtype)  # random contents: every element must be overwritten
    assert matmul_into_(c, a, b) is None
    assert c.dtype == c_dtype
    _close(c, a.double().T @ b.double(), dtype)


def test_into_opcheck():
    for dtype, c_dtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32)):
        c, a, b = _inputs(9, 12, 5, dtype, seed=11)
        torch.library.opcheck(torch.ops.mamba_compile.matmul_into_, (c.to(c_dtype), a, b))


def test_into_writes_rows_of_one_buffer_under_inductor():
    # What Mamba-1's in-projection backward does with its weight gradient: each half's product written into its rows
    # of one fresh buffer. Inductor must pass slices of that buffer to the op, not clones, and concatenate nothing.
    def f(a1, a2, b):
        out = b.new_empty(a1.shape[1] + a2.shape[1], b.shape[1])
        matmul_into_(out[: a1.shape[1]], a1, b)
        matmul_into_(out[a1.shape[1] :], a2, b)
        return out

    a1, a2, b = (torch.randn(40, n, generator=torch.Generator().manual_seed(n)) for n in (7, 9, 12))
    got, (code,) = run_and_get_code(torch.compile(f, fullgraph=True), a1, a2, b)
    torch.testing.assert_close(got, torch.cat([a1.T @ b, a2.T @ b]))
    calls = [line for line in code.splitlines() if "torch.ops.mamba_compile.matmul_into_.default(" in line]
    assert len(calls) == 2 and all("(reinterpret_tensor(buf" in line for line in calls), code  # views of one buffer
    assert "clone" not in code and "copy_" not in code and "cat" not in code, code


@pytest.mark.parametrize("args, exc, match", [
    (lambda c, a, b: (c.bfloat16(), a, b), TypeError, "a must have dtype"),  # a wider than c
    (lambda c, a, b: (c, a.bfloat16(), b), TypeError, "b must have dtype"),  # a and b differ
    (lambda c, a, b: (c, a, b[:, :-1]), ValueError, r"b must have shape \(k, n\)"),
], ids=["c-narrower", "a-b-dtypes", "b-n"])
def test_into_bad_input(args, exc, match):
    with pytest.raises(exc, match=match):
        matmul_into_(*args(*_inputs(8, 9, 4, torch.float32)))


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "inductor"])
def test_cuda_into_fp32_from_bf16(compiled):
    # cuBLAS writes fp32 from bf16 operands: far closer to float64 than a bf16 product cast (relative 4e-3).
    fn = torch.compile(matmul_into_, fullgraph=True) if compiled else matmul_into_
    _, a, b = _inputs(1536, 768, 16384, torch.bfloat16, "cuda", seed=12)
    c = torch.randn(1536, 768, device="cuda")
    fn(c, a, b)
    want = a.double().T @ b.double()
    err = ((c.double() - want).abs().max() / want.abs().max()).item()
    assert err <= 1e-5, f"relative error {err:.2e}"
