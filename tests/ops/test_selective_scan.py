"""Tests of the Mamba-1 selective scan against the float64 recurrence in tests/reference/selective_scan.py."""

from __future__ import annotations

import importlib

import pytest
import torch
import torch._dynamo.testing


from mamba_compile.ops import selective_scan
from tests.ops._eager_paths import assert_same_results, fwd_bwd
from tests.reference.selective_scan import selective_scan_ref

ss_module = importlib.import_module("mamba_compile.ops.selective_scan")  # the package attribute is the function

GRAD_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")
ACT_NAMES = ("u", "delta", "z", "B", "C")  # take the activation dtype; the rest stay fp32 (weights, state)


def make_inputs(batch, dim, seqlen, dstate, *, B_kind="bnl", C_kind="bnl", ngroups=2, act_dtype=torch.float32,
                weight_dtype=torch.float32, D=True, z=True, delta_bias=True, initial_state=True, softplus=True,
                device="cpu", seed=0):  # fmt: skip
    """Fresh random inputs (never zeros) as a dict of selective_scan's tensor arguments.
    B_kind / C_kind: "dn" time-invariant, "bnl" input-dependent, "bgnl" grouped with ngroups."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g) * scale + shift).to(device)

    def bc(kind):
        return {"dn": lambda: rand(dim, dstate), "bnl": lambda: rand(batch, dstate, seqlen),
                "bgnl": lambda: rand(batch, ngroups, dstate, seqlen)}[kind]()  # fmt: skip

    # Without softplus, dt = delta + bias must stay positive or the recurrence grows without bound.
    delta = rand(batch, dim, seqlen, scale=0.5) if softplus else torch.rand(batch, dim, seqlen, generator=g).to(device) * 0.3 + 0.05
    t = dict(
        u=rand(batch, dim, seqlen),
        delta=delta,
        A=-(torch.rand(dim, dstate, generator=g) + 0.5).to(device),
        B=bc(B_kind),
        C=bc(C_kind),
        D=rand(dim) if D else None,
        z=rand(batch, dim, seqlen) if z else None,
        delta_bias=(rand(dim, scale=0.5) if softplus else torch.rand(dim, generator=g).to(device) * 0.1) if delta_bias else None,
        initial_state=rand(batch, dim, dstate) if initial_state else None,
    )
    return {k: None if v is None else v.to(act_dtype if k in ACT_NAMES else weight_dtype) for k, v in t.items()}


def run_fwd_bwd(fn, inputs, softplus, seed=1):
    """out, last_state and the gradients of sum(out * go) + sum(last_state * gl) w.r.t. every input."""
    leaves = {k: None if v is None else v.detach().clone().requires_grad_() for k, v in inputs.items()}
    out, last = fn(**leaves, delta_softplus=softplus)
    g = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
    gl = torch.randn(last.shape, generator=g).to(last.device, last.dtype)
    names = [k for k in GRAD_NAMES if leaves[k] is not None]
    grads = torch.autograd.grad((out.float() * go.float()).sum() + (last.float() * gl.float()).sum(), [leaves[k] for k in names])
    return out, last, dict(zip(names, grads))


def ours(**kw):
    return selective_scan(**kw, return_last_state=True)


def assert_rel(actual, expected, tol, name):
    """Max abs error relative to the largest expected magnitude: robust for bf16 and for sums."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = expected.double().abs().max().item() + 1e-12
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol} x max |expected| {scale:.3g}"


def check_against_oracle(fn, inputs, softplus, tol):
    out, last, grads = run_fwd_bwd(fn, inputs, softplus)
    r_out, r_last, r_grads = run_fwd_bwd(selective_scan_ref, inputs, softplus)
    assert out.dtype == inputs["u"].dtype and last.dtype == torch.float32
    assert_rel(out, r_out, tol, "out")
    assert_rel(last, r_last, tol, "last_state")
    assert grads.keys() == r_grads.keys()
    for k in grads:
        assert grads[k].dtype == inputs[k].dtype, k
        assert_rel(grads[k], r_grads[k], tol, f"d{k}")


# ---------------------------------------------------------------------------------------------
# CPU path against the oracle

ORACLE_CASES = [
    pytest.param(dict(B_kind="bnl", C_kind="bnl"), True, torch.float32, 1e-5, id="bnl-all-softplus-fp32"),
    pytest.param(dict(B_kind="dn", C_kind="bgnl"), False, torch.float32, 1e-5, id="dn-bgnl-fp32"),
    pytest.param(dict(B_kind="bgnl", C_kind="dn", ngroups=4), True, torch.float32, 1e-5, id="bgnl4-dn-fp32"),
    pytest.param(dict(B_kind="bnl", C_kind="bgnl", D=False, z=False, delta_bias=False, initial_state=False), True,
                 torch.float32, 1e-5, id="bare-softplus-fp32"),  # fmt: skip
    pytest.param(dict(B_kind="bnl", C_kind="bnl"), True, torch.bfloat16, 2e-2, id="bnl-all-bf16-acts"),
    pytest.param(dict(B_kind="bgnl", C_kind="bgnl"), True, torch.float16, 5e-3, id="bgnl-all-fp16-acts"),
]


@pytest.mark.parametrize("opts, softplus, act_dtype, tol", ORACLE_CASES)
def test_cpu_matches_oracle(opts, softplus, act_dtype, tol):
    # seqlen 150 crosses two CPU chunk boundaries and ends in a partial chunk.
    inputs = make_inputs(2, 8, 150, 5, act_dtype=act_dtype, softplus=softplus, **opts)
    check_against_oracle(ours, inputs, softplus, tol)


def test_cpu_no_grad_skips_chunk_states_and_backward_recomputes_them():
    inputs = make_inputs(1, 4, 70, 3)
    op_args = list(inputs.values())
    with torch.no_grad():
        _, _, states = torch.ops.mamba_compile.selective_scan_fwd(*op_args[:8], True, op_args[8], False)
    assert states.numel() == 0
    out, last, saved = torch.ops.mamba_compile.selective_scan_fwd(*op_args[:8], True, op_args[8], True)
    assert saved.shape == (1, 3, 4, 3)  # two chunks of 64, then the last state
    torch.testing.assert_close(saved[:, -1], last)
    go, gl = torch.randn_like(out), torch.randn_like(last)
    with_saved = torch.ops.mamba_compile.selective_scan_bwd(go, gl, *op_args[:8], True, op_args[8], saved)
    recomputed = torch.ops.mamba_compile.selective_scan_bwd(go, gl, *op_args[:8], True, op_args[8], states)
    for a, b, name in zip(with_saved, recomputed, GRAD_NAMES):
        torch.testing.assert_close(a, b, msg=name)


def test_bwd_without_last_state_gradient_equals_zero_gradient():
    """dlast_state None (the last state unused) is a zero gradient into it, without a zero-filled tensor."""
    inputs = make_inputs(2, 4, 70, 3)
    op_args = list(inputs.values())
    out, last, states = torch.ops.mamba_compile.selective_scan_fwd(*op_args[:8], True, op_args[8], True)
    go = torch.randn_like(out)
    got = torch.ops.mamba_compile.selective_scan_bwd(go, None, *op_args[:8], True, op_args[8], states)
    want = torch.ops.mamba_compile.selective_scan_bwd(go, torch.zeros_like(last), *op_args[:8], True, op_args[8], states)
    for a, b, name in zip(got, want, GRAD_NAMES):
        torch.testing.assert_close(a, b, msg=name)


def test_gradcheck_float64_across_chunks(monkeypatch):
    monkeypatch.setattr(ss_module, "CPU_CHUNK", 4)  # seqlen 10: three chunks, the last partial
    inputs = make_inputs(1, 4, 10, 3, B_kind="bgnl", C_kind="bnl", act_dtype=torch.float64, weight_dtype=torch.float64)
    names = [k for k in GRAD_NAMES if inputs[k] is not None]

    def fn(*args):
        out, last = selective_scan(**dict(zip(names, args)), delta_softplus=True, return_last_state=True)
        return out, last

    args = [inputs[k].requires_grad_() for k in names]
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-6)


def test_gradcheck_float64_time_invariant_bc(monkeypatch):
    monkeypatch.setattr(ss_module, "CPU_CHUNK", 4)
    inputs = make_inputs(2, 2, 6, 2, B_kind="dn", C_kind="dn", act_dtype=torch.float64, weight_dtype=torch.float64,
                         softplus=False, z=False)  # fmt: skip
    names = [k for k in GRAD_NAMES if inputs[k] is not None]
    args = [inputs[k].requires_grad_() for k in names]
    assert torch.autograd.gradcheck(lambda *a: selective_scan(**dict(zip(names, a)), return_last_state=True), args)


# ---------------------------------------------------------------------------------------------
# Registration: opcheck, compile, export

OPCHECK_CASES = [
    pytest.param(dict(B_kind="bnl", C_kind="bnl"), True, id="bnl-all-softplus"),
    pytest.param(dict(B_kind="dn", C_kind="bgnl", z=False, initial_state=False), False, id="dn-bgnl-noz-noh0"),
    pytest.param(dict(B_kind="bgnl", C_kind="dn", D=False, delta_bias=False), True, id="bgnl-dn-noD-nobias"),
]


@pytest.mark.parametrize("opts, softplus", OPCHECK_CASES)
def test_opcheck(opts, softplus):
    inputs = make_inputs(2, 4, 70, 3, **opts, softplus=softplus)
    args = [None if v is None else v.requires_grad_() for v in inputs.values()]
    torch.library.opcheck(torch.ops.mamba_compile.selective_scan_fwd, (*args[:8], softplus, args[8], True))
    out, last, states = torch.ops.mamba_compile.selective_scan_fwd(*args[:8], softplus, args[8], True)
    bwd_args = (torch.randn_like(out), torch.randn_like(last), *[None if a is None else a.detach() for a in args[:8]],
                softplus, None if args[8] is None else args[8].detach(), states.detach())  # fmt: skip
    torch.library.opcheck(torch.ops.mamba_compile.selective_scan_bwd, bwd_args)
    torch.library.opcheck(torch.ops.mamba_compile.selective_scan_bwd, (bwd_args[0], None, *bwd_args[2:]))


def _compiled_matches_eager(backend, seqlens, device="cpu", tol=1e-5):
    cnt = torch._dynamo.testing.CompileCounterWithBackend(backend)
    compiled = torch.compile(ours, fullgraph=True, dynamic=True, backend=cnt)
    for i, seqlen in enumerate(seqlens):
        inputs = make_inputs(2, 4, seqlen, 3, device=device, seed=i)
        c_out, c_last, c_grads = run_fwd_bwd(compiled, inputs, True)
        e_out, e_last, e_grads = run_fwd_bwd(ours, inputs, True)
        assert_rel(c_out, e_out, tol, "out")
        assert_rel(c_last, e_last, tol, "last_state")
        for k in e_grads:
            assert_rel(c_grads[k], e_grads[k], tol, f"d{k}")
    return cnt.frame_count


def test_compile_fullgraph_dynamic_one_frame():
    assert _compiled_matches_eager("aot_eager", (17, 70, 135)) == 1


@pytest.mark.inductor
def test_compile_inductor_cpu():
    assert _compiled_matches_eager("inductor", (33, 130, 71)) == 1


class _ScanModule(torch.nn.Module):
    def __init__(self, dim, dstate):
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.A_log = torch.nn.Parameter(torch.rand(dim, dstate, generator=g))
        self.D = torch.nn.Parameter(torch.randn(dim, generator=g))
        self.dt_bias = torch.nn.Parameter(torch.randn(dim, generator=g) * 0.5)

    def forward(self, u, delta, B, C, z):
        return selective_scan(u, delta, -torch.exp(self.A_log), B, C, self.D, z, self.dt_bias, delta_softplus=True)


def test_export_matches_eager():
    mod = _ScanModule(4, 3)
    t = make_inputs(2, 4, 70, 3)
    args = (t["u"], t["delta"], t["B"], t["C"], t["z"])
    seqlen = torch.export.Dim("seqlen", min=2, max=4096)
    dyn = ({2: seqlen}, {2: seqlen}, {2: seqlen}, {2: seqlen}, {2: seqlen})
    ep = torch.export.export(mod, args, dynamic_shapes=dyn)
    assert any("selective_scan_fwd" in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(*args), mod(*args))
    t2 = make_inputs(2, 4, 133, 3, seed=5)  # another length through the same program
    args2 = (t2["u"], t2["delta"], t2["B"], t2["C"], t2["z"])
    torch.testing.assert_close(ep.module()(*args2), mod(*args2))


def test_autocast_bf16_inputs_cpu():
    inputs = make_inputs(1, 4, 20, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = inputs["u"] @ torch.eye(20)  # a bf16 activation, as a projection under autocast would give
        kw = {**inputs, "u": u}
        out, last = selective_scan(**kw, delta_softplus=True, return_last_state=True)
    assert u.dtype == torch.bfloat16 and out.dtype == torch.bfloat16 and last.dtype == torch.float32
    r_out, _ = selective_scan_ref(**kw, delta_softplus=True)
    assert_rel(out, r_out, 2e-2, "out")


# ---------------------------------------------------------------------------------------------
# Triton kernels, launched directly (the interpreter on CPU): tiny shapes, several chunks

KERNEL_CASES = [
    pytest.param(dict(B_kind="bnl", C_kind="bnl"), True, id="bnl-all-softplus"),
    pytest.param(dict(B_kind="dn", C_kind="bgnl", ngroups=3, D=False, delta_bias=False), False, id="dn-bgnl3-noD"),
    pytest.param(dict(B_kind="bgnl", C_kind="dn", ngroups=3, z=False, initial_state=False), True, id="bgnl3-dn-noz"),
]


@pytest.mark.parametrize("opts, softplus", KERNEL_CASES)
def test_triton_kernels_match_oracle(opts, softplus):
    _check_kernels(opts, softplus)


def _check_kernels(opts, softplus, *, shape=(2, 6, 11, 5), fwd_config=(2, 2, 1), bwd_config=(2, 4, 1), gather_flip=None,
                   bc_copies=None):
    from mamba_compile.ops import selective_scan_triton as kern

    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = make_inputs(*shape, softplus=softplus, device=device, **opts)
    args = list(inputs.values())
    # By default BLOCK_D 2 (three channel blocks), BLOCK_L 2 in the forward, states saved every 4 steps
    # (three backward blocks, the last partial); dstate 5 pads to BLOCK_N 8.
    batch, dim, seqlen, dstate = shape
    with torch.no_grad():
        out, last, states = kern.selective_scan_fwd(
            *args[:8], softplus, args[8], True, wrap=False, config=fwd_config, state_chunk=bwd_config[1]
        )
    assert states.shape == (batch, -(-seqlen // bwd_config[1]) + 1, dim, dstate)
    torch.testing.assert_close(states[:, -1], last)
    r_out, r_last, r_grads = run_fwd_bwd(selective_scan_ref, inputs, softplus)
    assert_rel(out, r_out, 1e-5, "out")
    assert_rel(last, r_last, 1e-5, "last_state")
    g = torch.Generator().manual_seed(1)  # the cotangents run_fwd_bwd used
    go, gl = torch.randn(out.shape, generator=g).to(device), torch.randn(last.shape, generator=g).to(device)
    with torch.no_grad():
        grads = kern.selective_scan_bwd(
            go, gl, *args[:8], softplus, args[8], states, wrap=False, config=bwd_config, gather_flip=gather_flip,
            bc_copies=bc_copies,
        )
    for name, grad in zip(GRAD_NAMES, grads):
        if inputs[name] is None:
            assert grad.numel() == 0, name
        else:
            assert grad.dtype == inputs[name].dtype, name
            assert_rel(grad, r_grads[name], 1e-5, f"d{name}")
    return go, args, states


def test_triton_bwd_without_last_state_gradient():
    """The kernel with no dlast_state (HAS_DLAST off) gives what a zero dlast_state gives."""
    from mamba_compile.ops import selective_scan_triton as kern

    softplus = True
    go, args, states = _check_kernels(dict(B_kind="bnl", C_kind="bgnl", ngroups=2), softplus, shape=(1, 4, 45, 3),
                                      fwd_config=(2, 8, 1), bwd_config=(2, 16, 1))  # fmt: skip
    zeros = torch.zeros(args[0].shape[0], args[0].shape[1], args[2].shape[1], device=go.device)
    with torch.no_grad():
        got = kern.selective_scan_bwd(go, None, *args[:8], softplus, args[8], states, wrap=False, config=(2, 16, 1))
        want = kern.selective_scan_bwd(go, zeros, *args[:8], softplus, args[8], states, wrap=False, config=(2, 16, 1))
    for a, b, name in zip(got, want, GRAD_NAMES):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)  # dB/dC: atomics on CUDA


# The backward at block shapes where a thread holds 8 steps of a part (NPART = BLOCK_L / 8 per-lane
# partial sums, dB/dC atomics viewed as [NPART, 2, 4]): several tiles, the last partial, carried g and
# partial sums across tiles, time-invariant and grouped B/C, with and without D, z, bias, softplus, and
# its reverse scan both ways (gathers around a forward scan, or Triton's reverse scan).
PART_CASES = [
    pytest.param(dict(B_kind="bnl", C_kind="bgnl", ngroups=2), True, (1, 4, 45, 3), (2, 16, 1), True,
                 id="bnl-bgnl2-L16-l45-gather"),  # fmt: skip
    pytest.param(dict(B_kind="bnl", C_kind="bgnl", ngroups=2), True, (1, 4, 45, 3), (2, 16, 1), False,
                 id="bnl-bgnl2-L16-l45-reverse-scan"),  # fmt: skip
    pytest.param(dict(B_kind="dn", C_kind="dn", z=False, delta_bias=False), False, (2, 2, 70, 4), (1, 32, 1), True,
                 id="dn-dn-noz-nobias-L32-l70-gather"),  # fmt: skip
    pytest.param(dict(B_kind="bgnl", C_kind="dn", ngroups=2, D=False, initial_state=False), True, (1, 4, 33, 2),
                 (2, 16, 1), False, id="bgnl2-dn-noD-noh0-L16-l33-reverse-scan"),  # fmt: skip
]


@pytest.mark.parametrize("opts, softplus, shape, bwd_config, gather_flip", PART_CASES)
def test_triton_bwd_parts_match_oracle(opts, softplus, shape, bwd_config, gather_flip):
    _check_kernels(opts, softplus, shape=shape, fwd_config=(2, 8, 1), bwd_config=bwd_config, gather_flip=gather_flip)


@pytest.mark.parametrize("opts, shape, bwd_config, copies", [
    (dict(B_kind="bnl", C_kind="bnl"), (2, 6, 11, 5), (2, 4, 1), 3),  # three channel blocks, one per copy
    (dict(B_kind="bnl", C_kind="bgnl", ngroups=2), (1, 8, 45, 3), (2, 16, 1), 2),  # four blocks over two copies
    (dict(B_kind="bgnl", C_kind="dn", ngroups=2), (2, 4, 33, 2), (2, 16, 1), 5),  # more copies than blocks
    (dict(B_kind="bnl", C_kind="bnl"), (1, 24, 11, 2), (2, 4, 1), 11),  # an odd number of copies, more than 8
], ids=["bnl-3copies", "bgnl2-2copies", "bgnl2-dn-5copies", "bnl-11copies"])
@pytest.mark.parametrize("pad", [0, 7], ids=["packed", "pad7"])
def test_triton_bwd_dbc_copies_match_oracle(opts, shape, bwd_config, copies, pad, monkeypatch):
    """Input-dependent dB/dC with the programs' atomic adds spread over several copies of the buffers, summed after;
    the copies back to back or ``pad`` elements apart."""
    from mamba_compile.ops import selective_scan_triton as kern

    monkeypatch.setattr(kern, "_BWD_BC_COPY_PAD", pad)
    _check_kernels(opts, True, shape=shape, fwd_config=(2, 8, 1), bwd_config=bwd_config, bc_copies=copies)


def test_triton_default_state_interval_follows_bwd_config(monkeypatch):
    """Without a state_chunk or backward config, the forward saves states at _BWD_CONFIG's BLOCK_L and the
    backward reads them there."""
    from mamba_compile.ops import selective_scan_triton as kern

    monkeypatch.setattr(kern, "_BWD_CONFIG", (2, 8, 1))
    assert kern.bwd_block_sizes(4, 3, None) == (2, 8, 1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = make_inputs(1, 4, 19, 3, device=device)
    args = list(inputs.values())
    r_out, r_last, r_grads = run_fwd_bwd(selective_scan_ref, inputs, True)
    g = torch.Generator().manual_seed(1)
    go, gl = torch.randn(r_out.shape, generator=g).to(device), torch.randn(r_last.shape, generator=g).to(device)
    with torch.no_grad():
        _, _, states = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=(2, 4, 1))
        assert states.shape[1] == 3 + 1  # saved every 8 steps
        grads = kern.selective_scan_bwd(go.float(), gl.float(), *args[:8], True, args[8], states, wrap=False)
    for name, grad in zip(GRAD_NAMES, grads):
        assert_rel(grad, r_grads[name], 1e-5, f"d{name}")


@pytest.mark.parametrize("rows_ahead", [4, 8])
def test_triton_fwd_time_segments_match_oracle(rows_ahead):
    """The forward cut into time segments (end states from zero, then each segment from its true start):
    segments of 8 steps over 27 steps, the last partial, with B/C rows loaded 4 or 8 steps ahead."""
    from mamba_compile.ops import selective_scan_triton as kern

    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = make_inputs(2, 6, 27, 5, B_kind="bnl", C_kind="bgnl", ngroups=3, device=device)
    args = list(inputs.values())
    r_out, r_last = selective_scan_ref(**inputs, delta_softplus=True)
    with torch.no_grad():
        whole = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=(2, 4, 1), state_chunk=4, seg=0)
        for seg in (8, 12):  # 12 rounds up to whole saved-state chunks
            out, last, states = kern.selective_scan_fwd(
                *args[:8], True, args[8], True, wrap=False, config=(2, 4, 1), state_chunk=4, rows_ahead=rows_ahead, seg=seg
            )
            assert_rel(out, r_out, 1e-5, "out")
            assert_rel(last, r_last, 1e-5, "last_state")
            assert_rel(states, whole[2], 1e-5, "chunk_states")


def test_triton_bwd_recomputes_missing_states():
    from mamba_compile.ops import selective_scan_triton as kern

    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = make_inputs(1, 2, 9, 3, device=device)
    args = list(inputs.values())
    r_out, r_last, r_grads = run_fwd_bwd(selective_scan_ref, inputs, True)
    g = torch.Generator().manual_seed(1)
    go = torch.randn(r_out.shape, generator=g).to(device)
    gl = torch.randn(r_last.shape, generator=g).to(device, torch.float32)
    with torch.no_grad():
        grads = kern.selective_scan_bwd(
            go, gl, *args[:8], True, args[8], args[0].new_empty(0), wrap=False, config=(2, 4, 1)
        )
    for name, grad in zip(GRAD_NAMES, grads):
        assert_rel(grad, r_grads[name], 1e-5, f"d{name}")


def test_block_sizes_respect_groups():
    from mamba_compile.ops import selective_scan_triton as kern

    for dim, dpg in ((1536, 1536), (1536, 768), (96, 12), (10, 5), (64, None)):
        for sizes in (kern.fwd_block_sizes(dim, 16, dpg), kern.bwd_block_sizes(dim, 16, dpg)):
            block_d, block_l, _ = sizes
            assert block_d >= 1 and (dpg is None or dpg % block_d == 0)
    assert kern.bwd_block_sizes(64, 16, None)[1] % kern.fwd_block_sizes(64, 16, None)[1] == 0
    assert kern.fwd_block_sizes(64, 256, None)[1] <= kern.bwd_block_sizes(64, 256, None)[1]


def _fake_ptxas(tmp_path, release: str) -> str:
    """An executable that answers --version the way ptxas does, with ``release`` (e.g. "13.0")."""
    path = tmp_path / f"ptxas-{release}"
    path.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    path.chmod(0o755)
    return str(path)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_ptxas_major_follows_the_compiler_that_builds_the_launch(tmp_path, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mamba_compile.ops import _triton

    with FakeTensorMode():
        traced = torch.empty(4, device="cuda")
    eager_cpu = torch.empty(4)
    inductor, user = _fake_ptxas(tmp_path, "13.0"), _fake_ptxas(tmp_path, "12.8")
    monkeypatch.setattr(_triton, "_inductor_ptxas", lambda: inductor)
    monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    assert _triton.ptxas_major(traced) == 13  # traced: Inductor's ptxas
    assert _triton.ptxas_major(eager_cpu) is None  # no CUDA, no kernel to build
    monkeypatch.setenv("TRITON_PTXAS_PATH", user)
    assert _triton.ptxas_major(traced) == 12  # the user's choice wins for Inductor as for Triton's JIT
    monkeypatch.setenv("TRITON_PTXAS_PATH", str(tmp_path / "missing"))
    monkeypatch.setattr(_triton, "_inductor_ptxas", lambda: None)
    bundled = _triton._ptxas_major_at(None)  # a path that does not run falls back to Triton's own, as Triton does
    assert _triton.ptxas_major(traced) == bundled


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
def test_inductor_ptxas_is_found_without_setting_anything(monkeypatch):
    import os

    from mamba_compile.ops import _triton

    monkeypatch.delenv("TRITON_PTXAS_PATH", raising=False)
    path = _triton._inductor_ptxas.__wrapped__()
    assert "TRITON_PTXAS_PATH" not in os.environ
    assert path is None or os.access(path, os.X_OK)


def test_forward_prefetch_by_ptxas():
    from mamba_compile.ops import selective_scan_triton as kern

    # at 16 states: only when saving states for the backward and built by a CUDA 13 or later ptxas
    assert [kern.fwd_prefetch(16, save, lambda v=v: v) for save in (True, False) for v in (None, 12, 13, 14)] == [
        False, False, True, True, False, False, False, False]
    assert all(kern.fwd_prefetch(64, save, lambda v=v: v) for save in (True, False) for v in (None, 12, 13))
    assert kern.fwd_block_sizes(1536, 16, 1536) == (16, 16, 1)


# ---------------------------------------------------------------------------------------------
# Bad inputs: the error type and the argument's name in the message


def _bad(name, value_fn, err):
    return pytest.param(name, value_fn, err, id=f"{name}-{err.__name__}")


BAD_CASES = [
    _bad("u", lambda t: t["u"][0], ValueError),
    _bad("u", lambda t: t["u"].int(), TypeError),
    _bad("u", lambda t: t["u"][..., :0], ValueError),
    _bad("delta", lambda t: t["delta"][..., :-1], ValueError),
    _bad("A", lambda t: torch.randn(4, 300), ValueError),
    _bad("A", lambda t: t["A"].to(torch.complex64), TypeError),
    _bad("A", lambda t: t["A"][:-1], ValueError),
    _bad("B", lambda t: t["B"][..., :-1], ValueError),
    _bad("B", lambda t: t["B"][0], ValueError),
    _bad("C", lambda t: torch.randn(2, 3, 3, 12), ValueError),  # ngroups 3 does not divide dim 4
    _bad("C", lambda t: torch.randn(2, 1, 1, 3, 12), ValueError),
    _bad("D", lambda t: torch.randn(5), ValueError),
    _bad("z", lambda t: t["z"].transpose(1, 2), ValueError),
    _bad("delta_bias", lambda t: torch.randn(4, 1), ValueError),
    _bad("initial_state", lambda t: torch.randn(2, 4, 4), ValueError),
    _bad("initial_state", lambda t: [0.0], TypeError),
]


@pytest.mark.parametrize("name, value_fn, err", BAD_CASES)
def test_bad_inputs_name_the_argument(name, value_fn, err):
    inputs = make_inputs(2, 4, 12, 3)
    inputs[name] = value_fn(inputs)
    with pytest.raises(err, match=name):
        selective_scan(**inputs, delta_softplus=True)
    if not isinstance(inputs[name], torch.Tensor):
        return  # the dispatcher rejects a non-tensor before the op body runs
    # The op checks too, for a direct call.
    with pytest.raises(err, match=name):
        args = list(inputs.values())
        torch.ops.mamba_compile.selective_scan_fwd(*args[:8], True, args[8], False)


def test_mixed_devices_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs a second device")
    inputs = make_inputs(2, 4, 12, 3)
    inputs["D"] = inputs["D"].cuda()
    with pytest.raises(ValueError, match="D"):
        selective_scan(**inputs)


# ---------------------------------------------------------------------------------------------
# CUDA: the Triton path against the oracle at realistic shapes, eager and compiled

GPU_CASES = [
    pytest.param(dict(B_kind="bnl", C_kind="bnl"), 2, 256, 1000, 16, torch.bfloat16, 2e-2, id="bnl-bf16-b2d256l1000n16"),
    pytest.param(dict(B_kind="bnl", C_kind="bnl"), 2, 256, 1000, 16, torch.float32, 2e-4, id="bnl-fp32-b2d256l1000n16"),
    pytest.param(dict(B_kind="bgnl", C_kind="bgnl", ngroups=4), 2, 192, 777, 16, torch.bfloat16, 2e-2, id="bgnl4-bf16-l777"),
    pytest.param(dict(B_kind="dn", C_kind="bnl"), 1, 96, 300, 64, torch.float32, 2e-4, id="dn-bnl-fp32-n64"),
    pytest.param(dict(B_kind="bnl", C_kind="bnl", z=False, initial_state=False), 1, 64, 513, 256, torch.float32, 2e-4,
                 id="bnl-fp32-n256"),  # fmt: skip
]


@pytest.mark.gpu
@pytest.mark.parametrize("opts, batch, dim, seqlen, dstate, act_dtype, tol", GPU_CASES)
def test_cuda_matches_oracle(opts, batch, dim, seqlen, dstate, act_dtype, tol):
    inputs = make_inputs(batch, dim, seqlen, dstate, act_dtype=act_dtype, device="cuda", **opts)
    check_against_oracle(ours, inputs, True, tol)


@pytest.mark.gpu
@pytest.mark.parametrize("act_dtype, tol", [(torch.bfloat16, 2e-2), (torch.float32, 2e-4)], ids=["bf16", "fp32"])
@pytest.mark.parametrize(
    "fwd_config, bwd_config", [(None, None), ((8, 8, 1), (1, 512, 1))], ids=["default-blocks", "bd8-l512"]
)
def test_cuda_kernel_configs_match_oracle(act_dtype, tol, fwd_config, bwd_config):
    """Other block sizes, launched directly (the forward saves states at the backward's BLOCK_L)."""
    from mamba_compile.ops import selective_scan_triton as kern

    inputs = make_inputs(2, 256, 1000, 16, act_dtype=act_dtype, device="cuda")
    args = list(inputs.values())
    r_out, r_last, r_grads = run_fwd_bwd(selective_scan_ref, inputs, True)
    chunk = kern.bwd_block_sizes(256, 16, 256)[1] if bwd_config is None else bwd_config[1]
    with torch.no_grad():
        out, last, states = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=fwd_config, state_chunk=chunk)
        g = torch.Generator().manual_seed(1)  # the cotangents run_fwd_bwd used
        go = torch.randn(out.shape, generator=g).to("cuda", out.dtype)
        gl = torch.randn(last.shape, generator=g).to("cuda")
        grads = kern.selective_scan_bwd(go, gl, *args[:8], True, args[8], states, wrap=False, config=bwd_config)
    assert_rel(out, r_out, tol, "out")
    assert_rel(last, r_last, tol, "last_state")
    for name, grad in zip(GRAD_NAMES, grads):
        assert_rel(grad, r_grads[name], tol, f"d{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("seg, rows_ahead", [(512, 4), (256, 8)], ids=["seg512", "seg256-ahead8"])
def test_cuda_fwd_time_segments_match_whole(seg, rows_ahead):
    """The forward cut into time segments gives the unsegmented forward's outputs and saved states."""
    from mamba_compile.ops import selective_scan_triton as kern

    inputs = make_inputs(2, 256, 2000, 16, act_dtype=torch.bfloat16, device="cuda")
    args = list(inputs.values())
    with torch.no_grad():
        whole = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, seg=0)
        split = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, seg=seg, rows_ahead=rows_ahead)
    assert_rel(split[0], whole[0], 1e-2, "out")  # bf16 outputs: rounding of nearly equal fp32 values
    assert_rel(split[1], whole[1], 1e-5, "last_state")
    assert_rel(split[2], whole[2], 1e-5, "chunk_states")


@pytest.mark.gpu
@pytest.mark.parametrize("B_kind, seqlen, config", [("bnl", 1000, None), ("bgnl", 37, (16, 16, 1)), ("bnl", 3001, (32, 8, 2))],
                         ids=["default-l1000", "grouped-l37", "l8-l3001"])  # fmt: skip
def test_cuda_fwd_prefetch_changes_nothing(B_kind, seqlen, config):
    """The forward's L1 prefetch of B/C rows moves no data into registers: outputs and saved states are bit for bit
    those without it, including lengths where the prefetched rows run past the end (clamped)."""
    from mamba_compile.ops import selective_scan_triton as kern

    inputs = make_inputs(2, 128, seqlen, 16, B_kind=B_kind, C_kind=B_kind, act_dtype=torch.bfloat16, device="cuda")
    args = list(inputs.values())
    with torch.no_grad():
        on = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=config, prefetch=True)
        off = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=config, prefetch=False)
    for name, a, b in zip(("out", "last_state", "chunk_states"), on, off):
        assert torch.equal(a, b), name


LANE_CASES = [
    pytest.param((8, 16, 1), dict(), 1000, False, torch.bfloat16, id="b8-l1000"),
    pytest.param((8, 16, 1), dict(B_kind="bgnl", C_kind="bgnl", ngroups=4), 37, False, torch.bfloat16, id="grouped-l37"),
    pytest.param((8, 16, 1), dict(B_kind="dn", z=False, D=False, initial_state=False), 515, False, torch.float32,
                 id="dn-noz-fp32"),
    pytest.param((8, 16, 1), dict(delta_bias=False, softplus=False), 2048, True, torch.bfloat16,
                 id="channel-major-nosoftplus"),
    pytest.param((32, 16, 4), dict(), 1000, True, torch.bfloat16, id="w4-channel-major"),
    pytest.param((16, 16, 2), dict(C_kind="dn"), 300, False, torch.float16, id="w2-fp16"),
]


@pytest.mark.gpu
@pytest.mark.parametrize("lane_y", [True, False], ids=["y-scatter", "y-sums"])
@pytest.mark.parametrize("config, opts, seqlen, channel_major, act_dtype", LANE_CASES)
def test_cuda_fwd_lane_columns_match_column_sums(config, opts, seqlen, channel_major, act_dtype, lane_y):
    """The forward's step columns taken by one lane shuffle, and y summed across lanes once a block (inline PTX that
    assumes Triton's register layout), give what the generic column and state sums give: the same values go into the
    same fp32 math, summed in another order."""
    from mamba_compile.ops import selective_scan_triton as kern

    softplus = opts.get("softplus", True)
    inputs = make_inputs(2, 96, seqlen, 16, act_dtype=act_dtype, device="cuda", **opts)
    if channel_major:  # the Mamba-1 mixer's layout, strides (l, b l, 1)
        for k in ("u", "delta", "z"):
            if inputs[k] is not None:
                inputs[k] = inputs[k].transpose(0, 1).contiguous().transpose(0, 1)
    args = list(inputs.values())
    assert kern.lane_layout_fits(args[0], args[1], args[6]) and kern._lanes_in_blocks(*config[:2], 16, config[2])
    with torch.no_grad():
        on = kern.selective_scan_fwd(*args[:8], softplus, args[8], True, wrap=False, config=config, lanes=True,
                                     lane_y=lane_y)
        off = kern.selective_scan_fwd(*args[:8], softplus, args[8], True, wrap=False, config=config, lanes=False)
    tol = 1e-2 if act_dtype != torch.float32 else 1e-5  # 16-bit outputs: rounding of nearly equal fp32 values
    assert_rel(on[0], off[0], tol, "out")
    assert_rel(on[1], off[1], 1e-5, "last_state")
    assert_rel(on[2], off[2], 1e-5, "chunk_states")


@pytest.mark.gpu
def test_cuda_fwd_lanes_dropped_below_their_tile():
    """A saved-state interval of 8 steps shortens the forward's blocks below the 16 steps the lane shuffles assume:
    the launch then takes the generic sums, so its outputs equal the lanes-off launch's bit for bit."""
    from mamba_compile.ops import selective_scan_triton as kern

    args = list(make_inputs(2, 96, 300, 16, act_dtype=torch.bfloat16, device="cuda").values())
    with torch.no_grad():
        on = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=(8, 16, 1), state_chunk=8,
                                     lanes=True)
        off = kern.selective_scan_fwd(*args[:8], True, args[8], True, wrap=False, config=(8, 16, 1), state_chunk=8,
                                      lanes=False)
    for name, a, b in zip(("out", "last_state", "chunk_states"), on, off):
        assert torch.equal(a, b), name


def test_lane_columns_where_their_layout_holds():
    from mamba_compile.ops import selective_scan_triton as kern

    u = torch.randn(2, 16, 64)
    assert not kern.lane_layout_fits(u, u, u)  # CPU: no inline PTX
    # 8 channels a warp, 16 steps, 16 states
    assert [kern._lanes_in_blocks(*c) for c in ((8, 16, 16, 1), (32, 16, 16, 4), (16, 16, 16, 1), (8, 8, 16, 1),
                                                 (8, 16, 32, 1))] == [True, True, False, False, False]
    # the blocks the lanes want, where the groups allow them; the generic ones otherwise
    assert kern.fwd_block_sizes(1536, 16, 1536, lanes=True) == (32, 16, 4)
    assert kern.fwd_block_sizes(1536, 16, 16, lanes=True) == (16, 16, 2)
    assert kern.fwd_block_sizes(4, 16, None, lanes=True) == (8, 16, 1)
    assert kern.fwd_block_sizes(1536, 16, 12, lanes=True) == kern.fwd_block_sizes(1536, 16, 12) == (4, 16, 1)
    for dim, dpg in ((1536, 1536), (1536, 768), (96, 24), (64, None), (8, 8)):
        block_d, block_l, num_warps = kern.fwd_block_sizes(dim, 16, dpg, lanes=True)
        assert kern._lanes_in_blocks(block_d, block_l, 16, num_warps)
    assert kern.fwd_block_sizes(1536, 64, 1536, lanes=True) == kern.fwd_block_sizes(1536, 64, 1536)
    assert all(kern.fwd_prefetch(16, save, lambda v=v: v, lanes=True) for save in (True, False) for v in (None, 12, 13))


@pytest.mark.gpu
def test_cuda_training_shape_matches_cpu_path():
    inputs = make_inputs(8, 1536, 2048, 16, act_dtype=torch.bfloat16, device="cuda")
    out, last, grads = run_fwd_bwd(ours, inputs, True)
    # The CPU path on the first batch row and 64 channels (B, C are shared by all channels).
    small = {k: v[:1, :64].cpu() for k, v in inputs.items() if k in ("u", "delta", "z", "initial_state")}
    small.update({k: inputs[k][:64].cpu() for k in ("A", "D", "delta_bias")})
    small.update({k: inputs[k][:1].cpu() for k in ("B", "C")})
    with torch.no_grad():
        r_out, r_last = ours(**small, delta_softplus=True)
    assert_rel(out[:1, :64].cpu(), r_out, 2e-2, "out")
    assert_rel(last[:1, :64].cpu(), r_last, 1e-3, "last_state")
    assert all(torch.isfinite(g.float()).all() for g in grads.values())


@pytest.mark.gpu
def test_cuda_compile_fullgraph_dynamic_one_frame():
    # Lengths divisible by 16 share one Triton specialization: three lengths, one kernel compile each.
    assert _compiled_matches_eager("aot_eager", (320, 1024, 2048), device="cuda", tol=1e-4) == 1


@pytest.mark.gpu
@pytest.mark.inductor
def test_cuda_compile_inductor():
    assert _compiled_matches_eager("inductor", (320, 1024, 2048), device="cuda", tol=1e-4) == 1


def test_bad_input_beyond_32bit_offsets_on_cuda_is_refused():
    """A channel-major u whose batch row spans 2**31 elements would overflow the kernels' 32-bit offsets: the
    check (run on meta tensors, as on CUDA ones: it depends only on sizes and strides) refuses it by name."""
    batch, dim, seqlen = 4096, 1024, 1024  # (dim - 1) * batch * seqlen: 4.3e9
    u = torch.empty_strided((batch, dim, seqlen), (seqlen, batch * seqlen, 1), device="meta", dtype=torch.bfloat16)
    A = torch.empty(dim, 16, device="meta")
    B = torch.empty(batch, 16, seqlen, device="meta", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="u with strides"):
        ss_module._check_args(u, u, A, B, B, None, None, None, None)
    small = torch.empty_strided((2, dim, seqlen), (seqlen, 2 * seqlen, 1), device="meta", dtype=torch.bfloat16)
    ss_module._check_args(small, small, A, B[:2], B[:2], None, None, None, None)  # 2**21 elements: accepted


@pytest.mark.gpu
def test_cuda_channel_major_gradients_keep_the_layout():
    """With u, delta and z channel-major (as the Mamba-1 mixer passes them), du, ddelta and dz come back in that
    layout, and equal the gradients of contiguous inputs."""
    inputs = make_inputs(2, 64, 300, 16, act_dtype=torch.bfloat16, device="cuda")
    go = torch.randn(2, 64, 300, device="cuda", dtype=torch.bfloat16)
    grads = {}
    for layout in ("contiguous", "channel-major"):
        leaves = {k: (v.detach().clone() if v is not None else None) for k, v in inputs.items()}
        for k in ("u", "delta", "z"):
            t = leaves[k]
            if layout == "channel-major":
                t = t.transpose(0, 1).contiguous().transpose(0, 1)  # strides (l, b l, 1)
            leaves[k] = t.requires_grad_()
        out = selective_scan(**{k: leaves[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")},
                             delta_softplus=True)
        g = torch.autograd.grad(out, [leaves[k] for k in ("u", "delta", "z")], go)
        if layout == "channel-major":
            assert all(t.stride() == (300, 600, 1) for t in g)
        grads[layout] = g
    for a, b in zip(grads["contiguous"], grads["channel-major"]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# The plain-eager CUDA path past the custom ops (_EagerSelectiveScan)


def _scan_inputs(inputs):
    return [inputs[k] for k in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias", "initial_state")]


def _scan_call(fn, softplus, save_states):
    """fn (the forward op, or a function with its signature) on _scan_inputs' order."""
    return lambda *t: fn(*t[:8], softplus, t[8], save_states)


@pytest.mark.skipif(torch.cuda.is_available(), reason="interpreter test; the gpu test covers the CUDA kernels")
@pytest.mark.parametrize("opts, save_states, last_used", [
    (dict(B_kind="bnl", C_kind="bgnl", ngroups=2), True, True),
    (dict(B_kind="dn", C_kind="bnl", D=False, initial_state=False), False, False),  # the backward recomputes states
], ids=["saved-states-last-used", "recomputed-states-last-unused"])
def test_eager_selective_scan_function_equals_the_op(opts, save_states, last_used):
    """_EagerSelectiveScan, the plain-eager CUDA path past the custom ops, run on CPU tensors through the Triton
    interpreter: outputs and gradients match the op's (its CPU path) to fp32 rounding."""
    inputs = make_inputs(2, 6, 11, 5, seed=50, **opts)
    used = (0, 1) if last_used else (0,)
    got = fwd_bwd(_scan_call(ss_module._EagerSelectiveScan.apply, True, save_states), _scan_inputs(inputs), used, 51)
    want = fwd_bwd(_scan_call(torch.ops.mamba_compile.selective_scan_fwd, True, save_states), _scan_inputs(inputs),
                   used, 51)
    assert_same_results(got, want)


@pytest.mark.gpu
def test_cuda_eager_scan_skips_the_op_and_equals_it(monkeypatch):
    """Plain eager CUDA calls of selective_scan run through _EagerSelectiveScan, not the custom ops: the same
    kernels, so the same outputs and gradients as through the op (forced by making _plain_eager say no), bit for
    bit except dB and dC, which the backward sums over channels with float32 atomics in an order that varies from
    run to run (so there within a bf16 rounding); bf16, with the last state returned and used."""
    inputs = make_inputs(2, 256, 600, 16, act_dtype=torch.bfloat16, device="cuda", seed=52)
    nodes = []

    def spy(**kw):
        out, last = selective_scan(**kw, return_last_state=True)
        nodes.append(type(out.grad_fn).__name__)
        return out, last

    monkeypatch.setattr(ss_module, "_plain_eager", ss_module.plain_eager)
    got = run_fwd_bwd(spy, inputs, True)
    monkeypatch.setattr(ss_module, "_plain_eager", lambda *t: False)
    want = run_fwd_bwd(spy, inputs, True)
    assert "EagerSelectiveScan" in nodes[0] and "selective_scan_fwd" in nodes[1], nodes
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for k in want[2]:
        if k in ("B", "C"):
            assert_rel(got[2][k], want[2][k], 2**-7, "d" + k)  # one bf16 ulp
        else:
            assert torch.equal(got[2][k], want[2][k]), k
