"""Golden Dynamo graphs: each public op shows up in the FX graph as one ``mamba_compile`` op, by name.

Printed graphs differ between torch versions, so the goldens are checked only on the torch
that CI runs (2.13); regenerate with ``EXPECTTEST_ACCEPT=1 python -m pytest tests/ops/test_graphs.py``.
"""

import pytest
import torch
from torch._dynamo.testing import EagerAndRecordGraphs, normalize_gm

import mamba_compile.ops as mc

expecttest = pytest.importorskip("expecttest")
pytestmark = pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="goldens recorded on torch 2.13")


def _graph(fn, *args) -> str:
    backend = EagerAndRecordGraphs()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    assert len(backend.graphs) == 1
    return normalize_gm(backend.graphs[0].print_readable(print_output=False))


class TestOpGraphs(expecttest.TestCase):
    def test_selective_scan(self):
        b, d, l, n = 2, 4, 8, 3
        args = (torch.randn(b, d, l), torch.rand(b, d, l), -torch.rand(d, n), torch.randn(b, n, l),
                torch.randn(b, n, l), torch.randn(d), torch.randn(b, d, l), torch.randn(d))

        def fn(u, delta, A, B, C, D, z, delta_bias):
            return mc.selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=True,
                                     return_last_state=True)

        self.assertExpectedInline(_graph(fn, *args), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_u_: "f32[2, 4, 8]", L_delta_: "f32[2, 4, 8]", L_A_: "f32[4, 3]", L_B_: "f32[2, 3, 8]", L_C_: "f32[2, 3, 8]", L_D_: "f32[4]", L_z_: "f32[2, 4, 8]", L_delta_bias_: "f32[4]"):
        l_u_ = L_u_
        l_delta_ = L_delta_
        l_a_ = L_A_
        l_b_ = L_B_
        l_c_ = L_C_
        l_d_ = L_D_
        l_z_ = L_z_
        l_delta_bias_ = L_delta_bias_

        selective_scan_fwd = torch.ops.mamba_compile.selective_scan_fwd(l_u_, l_delta_, l_a_, l_b_, l_c_, l_d_, l_z_, l_delta_bias_, True, None, False);  l_u_ = l_delta_ = l_a_ = l_b_ = l_c_ = l_d_ = l_z_ = l_delta_bias_ = None
        out: "f32[2, 4, 8]" = selective_scan_fwd[0]
        last_state: "f32[2, 4, 3]" = selective_scan_fwd[1];  selective_scan_fwd = None
        return (out, last_state)
""")

    def test_causal_conv1d(self):
        x, weight, bias = torch.randn(2, 4, 8), torch.randn(4, 4), torch.randn(4)
        self.assertExpectedInline(
            _graph(lambda x, w, b: mc.causal_conv1d(x, w, b, activation="silu"), x, weight, bias), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_x_: "f32[2, 4, 8]", L_w_: "f32[4, 4]", L_b_: "f32[4]"):
        l_x_ = L_x_
        l_w_ = L_w_
        l_b_ = L_b_

        causal_conv1d_fwd = torch.ops.mamba_compile.causal_conv1d_fwd(l_x_, l_w_, l_b_, None, None, False, True);  l_x_ = l_w_ = l_b_ = None
        out: "f32[2, 4, 8]" = causal_conv1d_fwd[0];  causal_conv1d_fwd = None
        return (out,)
""")

    def test_decode_updates(self):
        b, d, n = 2, 4, 3
        conv_state, weight = torch.randn(b, d, 3), torch.randn(d, 4)
        ssm_state, A = torch.randn(b, d, n), -torch.rand(d, n)
        x, dt, B, C = torch.randn(b, d), torch.rand(b, d), torch.randn(b, n), torch.randn(b, n)

        def step(x, conv_state, weight, ssm_state, dt, A, B, C):
            xc = mc.causal_conv1d_update(x, conv_state, weight, activation="silu")
            return mc.selective_state_update(ssm_state, xc, dt, A, B, C, dt_softplus=True)

        self.assertExpectedInline(_graph(step, x, conv_state, weight, ssm_state, dt, A, B, C), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_x_: "f32[2, 4]", L_weight_: "f32[4, 4]", L_conv_state_: "f32[2, 4, 3]", L_ssm_state_: "f32[2, 4, 3]", L_dt_: "f32[2, 4]", L_A_: "f32[4, 3]", L_B_: "f32[2, 3]", L_C_: "f32[2, 3]"):
        l_x_ = L_x_
        l_weight_ = L_weight_
        l_conv_state_ = L_conv_state_
        l_ssm_state_ = L_ssm_state_
        l_dt_ = L_dt_
        l_a_ = L_A_
        l_b_ = L_B_
        l_c_ = L_C_

        x3: "f32[2, 4, 1]" = l_x_.unsqueeze(-1);  l_x_ = None

        out: "f32[2, 4, 1]" = torch.ops.mamba_compile.causal_conv1d_update(x3, l_conv_state_, l_weight_, None, True, None, None);  x3 = l_conv_state_ = l_weight_ = None

        xc: "f32[2, 4]" = out.squeeze(-1);  out = None

        selective_state_update: "f32[2, 4]" = torch.ops.mamba_compile.selective_state_update(l_ssm_state_, xc, l_dt_, l_a_, l_b_, l_c_, None, None, None, True, None);  l_ssm_state_ = xc = l_dt_ = l_a_ = l_b_ = l_c_ = None
        return (selective_state_update,)
""")

    def test_norms(self):
        x, residual, weight, z = torch.randn(3, 8), torch.randn(3, 8), torch.randn(8), torch.randn(3, 8)

        def fn(x, residual, weight, z):
            out, residual = mc.rms_norm(x, weight, residual=residual, prenorm=True, residual_in_fp32=True)
            return mc.rms_norm_gated(out, weight, z=z, group_size=4), residual

        self.assertExpectedInline(_graph(fn, x, residual, weight, z), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_x_: "f32[3, 8]", L_weight_: "f32[8]", L_residual_: "f32[3, 8]", L_z_: "f32[3, 8]"):
        l_x_ = L_x_
        l_weight_ = L_weight_
        l_residual_ = L_residual_
        l_z_ = L_z_

        add_norm = torch.ops.mamba_compile.add_norm(l_x_, l_weight_, None, l_residual_, 1e-06, True, True, True);  l_x_ = l_residual_ = None
        out: "f32[3, 8]" = add_norm[0]
        r: "f32[3, 8]" = add_norm[1];  add_norm = None

        rms_norm_gated = torch.ops.mamba_compile.rms_norm_gated(out, l_weight_, l_z_, 1e-06, 4, True);  out = l_weight_ = l_z_ = None
        out_1: "f32[3, 8]" = rms_norm_gated[0];  rms_norm_gated = None
        return (out_1, r)
""")

    def test_ssd_chunk_scan(self):
        b, l, h, p, g, n = 1, 20, 2, 4, 1, 8
        args = (torch.randn(b, l, h, p), torch.rand(b, l, h), -torch.rand(h), torch.randn(b, l, g, n),
                torch.randn(b, l, g, n), torch.randn(h), torch.randn(b, l, h, p), torch.randn(h))

        def fn(x, dt, A, B, C, D, z, dt_bias):
            return mc.ssd_chunk_scan(x, dt, A, B, C, 16, D=D, z=z, dt_bias=dt_bias, dt_softplus=True,
                                     return_final_states=True)

        self.assertExpectedInline(_graph(fn, *args), """\
class GraphModule(torch.nn.Module):
    def forward(self, L_x_: "f32[1, 20, 2, 4]", L_B_: "f32[1, 20, 1, 8]", L_C_: "f32[1, 20, 1, 8]", L_dt_: "f32[1, 20, 2]", L_A_: "f32[2]", L_D_: "f32[2]", L_z_: "f32[1, 20, 2, 4]", L_dt_bias_: "f32[2]"):
        l_x_ = L_x_
        l_b_ = L_B_
        l_c_ = L_C_
        l_dt_ = L_dt_
        l_a_ = L_A_
        l_d_ = L_D_
        l_z_ = L_z_
        l_dt_bias_ = L_dt_bias_

        ssd_chunk_scan_fwd = torch.ops.mamba_compile.ssd_chunk_scan_fwd(l_x_, l_dt_, l_a_, l_b_, l_c_, 16, l_d_, l_z_, l_dt_bias_, None, None, None, True, 0.0, 3.4028234663852886e+38, False);  l_x_ = l_dt_ = l_a_ = l_b_ = l_c_ = l_d_ = l_z_ = l_dt_bias_ = None
        out: "f32[1, 20, 2, 4]" = ssd_chunk_scan_fwd[0]
        final_states: "f32[1, 2, 4, 8]" = ssd_chunk_scan_fwd[1];  ssd_chunk_scan_fwd = None
        return (out, final_states)
""")
