"""The reference's entry points, called positionally in the reference's argument order, give the oracle's result."""

import pytest
import torch

from mamba_compile import compat
from tests.reference.causal_conv1d import causal_conv1d_ref, causal_conv1d_update_ref
from tests.reference.norms import add_norm_ref, rms_norm_gated_ref
from tests.reference.selective_scan import selective_scan_ref
from tests.reference.selective_state_update import selective_state_update_ref
from tests.reference.ssd import ssd_ref


def _close(actual, expected, tol=1e-4):
    actual, expected = actual.double(), expected.double()
    err = (actual - expected).norm() / expected.norm().clamp_min(1e-12)
    assert err < tol, f"relative error {err:.3g}"


def test_selective_scan_fn():
    torch.manual_seed(0)
    b, d, l, n = 2, 6, 37, 5
    u, delta, z = torch.randn(b, d, l), torch.randn(b, d, l), torch.randn(b, d, l)
    A, B, C = -torch.rand(d, n) - 0.1, torch.randn(b, n, l), torch.randn(b, n, l)
    D, delta_bias = torch.randn(d), torch.randn(d)
    out, last = compat.selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, True, True)
    ref_out, ref_last = selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, True)
    _close(out, ref_out)
    _close(last, ref_last)
    _close(compat.selective_scan_fn(u, delta, A, B, C, D, z, delta_bias, True), ref_out)


def test_causal_conv1d_fn_fills_final_states_out():
    torch.manual_seed(1)
    b, d, l, w = 2, 5, 9, 4
    x, weight, bias = torch.randn(b, d, l), torch.randn(d, w), torch.randn(d)
    initial = torch.randn(b, d, w - 1)
    final_out = torch.full((b, d, w - 1), float("nan"))
    out = compat.causal_conv1d_fn(x, weight, bias, None, initial, False, final_out, "silu")
    ref_out, ref_final = causal_conv1d_ref(x, weight, bias, None, initial, "silu")
    _close(out, ref_out)
    _close(final_out, ref_final)


def test_causal_conv1d_update_and_state_update():
    torch.manual_seed(2)
    b, d, w, n = 3, 4, 4, 6
    x, conv_state, weight, bias = torch.randn(b, d), torch.randn(b, d, w - 1), torch.randn(d, w), torch.randn(d)
    ref_out, ref_state = causal_conv1d_update_ref(x[..., None], conv_state, weight, bias, "silu")
    out = compat.causal_conv1d_update(x, conv_state, weight, bias, "silu")
    _close(out, ref_out[..., 0])
    _close(conv_state, ref_state)

    state, dt, A = torch.randn(b, d, n), torch.randn(b, d), -torch.rand(d, n)
    B, C, D, z, dt_bias = torch.randn(b, n), torch.randn(b, n), torch.randn(d), torch.randn(b, d), torch.randn(d)
    ref_out, ref_state = selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, True)
    out = compat.selective_state_update(state, x, dt, A, B, C, D, z, dt_bias, True)
    _close(out, ref_out)
    _close(state, ref_state)


@pytest.mark.parametrize("is_rms", [True, False], ids=["rms", "layer"])
def test_norm_fns(is_rms):
    torch.manual_seed(3)
    x, residual, weight, bias = torch.randn(4, 32), torch.randn(4, 32), torch.randn(32), torch.randn(32)
    fn = compat.rms_norm_fn if is_rms else compat.layer_norm_fn
    out, new_residual = fn(x, weight, bias, residual, None, None, None, 1e-5, 0.0, None, True, True)
    ref_out, ref_residual = add_norm_ref(x.double(), weight.double(), bias.double(), residual.double(), 1e-5, is_rms)
    _close(out, ref_out)
    _close(new_residual, ref_residual)
    assert new_residual.dtype == torch.float32
    with pytest.raises(NotImplementedError, match="dropout_p"):
        fn(x, weight, bias, dropout_p=0.1)


def test_gated_rmsnorm_and_chunk_scan():
    torch.manual_seed(4)
    x, z, weight = torch.randn(3, 16), torch.randn(3, 16), torch.randn(16)
    _close(compat.rmsnorm_fn(x, weight, None, z, 1e-5, 8, False),
           rms_norm_gated_ref(x.double(), weight.double(), z.double(), 1e-5, 8, False))
    with pytest.raises(NotImplementedError, match="bias"):
        compat.rmsnorm_fn(x, weight, torch.randn(16), z)

    b, l, h, p, g, n = 2, 45, 4, 8, 2, 16
    xs, dt, A = torch.randn(b, l, h, p), torch.randn(b, l, h), -torch.rand(h) - 0.1
    B, C, D, zs, dt_bias = torch.randn(b, l, g, n), torch.randn(b, l, g, n), torch.randn(h), torch.randn(b, l, h, p), torch.randn(h)
    out, final = compat.mamba_chunk_scan_combined(xs, dt, A, B, C, 16, D, zs, dt_bias, None, None, None, None, None,
                                                  True, (0.0, float("inf")), True)
    ref_out, ref_final, _ = ssd_ref(xs, dt, A, B, C, D, zs, dt_bias, None, None, None, True)
    _close(out, ref_out)
    _close(final, ref_final)
