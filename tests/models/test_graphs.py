"""Golden Dynamo graphs of one Mamba-1 and one Mamba-2 block: the mamba_compile ops appear by name.

Printed graphs differ between torch versions, so the goldens are checked on torch 2.13 only;
regenerate with EXPECTTEST_ACCEPT=1 after an intended change.
"""

import pytest
import torch
from torch._dynamo.testing import EagerAndRecordGraphs, normalize_gm

from mamba_compile.models.model import Block

from ._configs import mamba1, mamba2

expecttest = pytest.importorskip("expecttest")

pytestmark = pytest.mark.skipif(not torch.__version__.startswith("2.13"), reason="goldens recorded on torch 2.13")


def _graph(config) -> str:
    torch.manual_seed(0)
    block = Block(config, layer_idx=1)
    hidden_states = torch.randn(2, 16, config.d_model)
    residual = torch.randn(2, 16, config.d_model)
    backend = EagerAndRecordGraphs()
    out, res = torch.compile(block, fullgraph=True, backend=backend)(hidden_states, residual)
    want, want_res = block(hidden_states, residual)
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(res, want_res)
    assert len(backend.graphs) == 1
    return normalize_gm(backend.graphs[0].print_readable(print_output=False))


class TestBlockGraphs(expecttest.TestCase):
    def test_mamba1_block(self):
        graph = _graph(mamba1())
        for op in ("add_norm", "causal_conv1d_fwd", "selective_scan_fwd", "add_matmul"):
            self.assertIn(f"mamba_compile.{op}", graph.replace("torch.ops.", ""))
        self.assertExpectedInline(graph, """\
class GraphModule(torch.nn.Module):
    def forward(self, L_self_modules_norm_parameters_weight_: "f32[64]", L_hidden_states_: "f32[2, 16, 64]", L_residual_: "f32[2, 16, 64]", L_self_modules_mixer_modules_in_proj_parameters_weight_: "f32[256, 64]", L_self_modules_mixer_parameters_A_log_: "f32[128, 8]", L_self_modules_mixer_modules_conv1d_parameters_weight_: "f32[128, 1, 4]", L_self_modules_mixer_modules_conv1d_parameters_bias_: "f32[128]", L_self_modules_mixer_modules_x_proj_parameters_weight_: "f32[20, 128]", L_self_modules_mixer_modules_dt_proj_parameters_weight_: "f32[128, 4]", L_self_modules_mixer_parameters_D_: "f32[128]", L_self_modules_mixer_modules_dt_proj_parameters_bias_: "f32[128]", L_self_modules_mixer_modules_out_proj_parameters_weight_: "f32[64, 128]"):
        l_self_modules_norm_parameters_weight_ = L_self_modules_norm_parameters_weight_
        l_hidden_states_ = L_hidden_states_
        l_residual_ = L_residual_
        l_self_modules_mixer_modules_in_proj_parameters_weight_ = L_self_modules_mixer_modules_in_proj_parameters_weight_
        l_self_modules_mixer_parameters_a_log_ = L_self_modules_mixer_parameters_A_log_
        l_self_modules_mixer_modules_conv1d_parameters_weight_ = L_self_modules_mixer_modules_conv1d_parameters_weight_
        l_self_modules_mixer_modules_conv1d_parameters_bias_ = L_self_modules_mixer_modules_conv1d_parameters_bias_
        l_self_modules_mixer_modules_x_proj_parameters_weight_ = L_self_modules_mixer_modules_x_proj_parameters_weight_
        l_self_modules_mixer_modules_dt_proj_parameters_weight_ = L_self_modules_mixer_modules_dt_proj_parameters_weight_
        l_self_modules_mixer_parameters_d_ = L_self_modules_mixer_parameters_D_
        l_self_modules_mixer_modules_dt_proj_parameters_bias_ = L_self_modules_mixer_modules_dt_proj_parameters_bias_
        l_self_modules_mixer_modules_out_proj_parameters_weight_ = L_self_modules_mixer_modules_out_proj_parameters_weight_

        add_norm = torch.ops.mamba_compile.add_norm(l_hidden_states_, l_self_modules_norm_parameters_weight_, None, l_residual_, 1e-05, True, True, True);  l_hidden_states_ = l_self_modules_norm_parameters_weight_ = l_residual_ = None
        out: "f32[2, 16, 64]" = add_norm[0]
        r: "f32[2, 16, 64]" = add_norm[1];  add_norm = None

        flatten: "f32[32, 64]" = out.flatten(0, 1);  out = None
        getattr_1: "f32[64, 32]" = flatten.T;  flatten = None
        arg: "f32[64, 32]" = getattr_1.to(torch.float32);  getattr_1 = None

        arg_1: "f32[256, 64]" = l_self_modules_mixer_modules_in_proj_parameters_weight_.to(torch.float32);  l_self_modules_mixer_modules_in_proj_parameters_weight_ = None

        t: "f32[32, 64]" = arg.T

        t_1: "f32[32, 64]" = arg.T

        fwd_body_0 = self.fwd_body_0
        bwd_body_0 = self.bwd_body_0
        autograd_function_apply = torch.ops.higher_order.autograd_function_apply(fwd_body_0, bwd_body_0, arg_1, arg, t, t_1, non_differentiable_idx = [], saved_for_backward_idx = [0, 1]);  fwd_body_0 = bwd_body_0 = arg_1 = arg = t = t_1 = None
        getitem_4: "f32[128, 32]" = autograd_function_apply[0]
        getitem_5: "f32[128, 32]" = autograd_function_apply[1];  autograd_function_apply = None

        unflatten: "f32[128, 2, 16]" = getitem_4.unflatten(1, (2, 16));  getitem_4 = None
        x: "f32[2, 128, 16]" = unflatten.transpose(0, 1);  unflatten = None
        unflatten_1: "f32[128, 2, 16]" = getitem_5.unflatten(1, (2, 16));  getitem_5 = None
        z: "f32[2, 128, 16]" = unflatten_1.transpose(0, 1);  unflatten_1 = None

        float_1: "f32[128, 8]" = l_self_modules_mixer_parameters_a_log_.float();  l_self_modules_mixer_parameters_a_log_ = None
        exp: "f32[128, 8]" = torch.exp(float_1);  float_1 = None
        A: "f32[128, 8]" = -exp;  exp = None

        weight: "f32[128, 4]" = l_self_modules_mixer_modules_conv1d_parameters_weight_.squeeze(1);  l_self_modules_mixer_modules_conv1d_parameters_weight_ = None

        causal_conv1d_fwd = torch.ops.mamba_compile.causal_conv1d_fwd(x, weight, l_self_modules_mixer_modules_conv1d_parameters_bias_, None, None, False, True);  x = weight = l_self_modules_mixer_modules_conv1d_parameters_bias_ = None
        out_1: "f32[2, 128, 16]" = causal_conv1d_fwd[0];  causal_conv1d_fwd = None

        transpose_2: "f32[128, 2, 16]" = out_1.transpose(0, 1);  out_1 = None
        reshape: "f32[128, 32]" = transpose_2.reshape(128, 32);  transpose_2 = None
        out_2: "f32[128, 32]" = reshape.to(torch.float32);  reshape = None

        arg_2: "f32[20, 128]" = l_self_modules_mixer_modules_x_proj_parameters_weight_.to(torch.float32);  l_self_modules_mixer_modules_x_proj_parameters_weight_ = None
        arg_3: "f32[128, 4]" = l_self_modules_mixer_modules_dt_proj_parameters_weight_.to(torch.float32);  l_self_modules_mixer_modules_dt_proj_parameters_weight_ = None

        t_2: "f32[32, 128]" = out_2.T

        fwd_body_1 = self.fwd_body_1
        bwd_body_1 = self.bwd_body_1
        autograd_function_apply_1 = torch.ops.higher_order.autograd_function_apply(fwd_body_1, bwd_body_1, arg_2, arg_3, out_2, t_2, non_differentiable_idx = [], saved_for_backward_idx = [0, 2]);  fwd_body_1 = bwd_body_1 = arg_2 = arg_3 = out_2 = t_2 = None
        xm: "f32[128, 32]" = autograd_function_apply_1[0]
        getitem_9: "f32[128, 32]" = autograd_function_apply_1[1]
        getitem_10: "f32[8, 32]" = autograd_function_apply_1[2]
        getitem_11: "f32[8, 32]" = autograd_function_apply_1[3];  autograd_function_apply_1 = None

        unflatten_2: "f32[128, 2, 16]" = xm.unflatten(1, (2, 16));  xm = None
        x_1: "f32[2, 128, 16]" = unflatten_2.transpose(0, 1);  unflatten_2 = None
        unflatten_3: "f32[128, 2, 16]" = getitem_9.unflatten(1, (2, 16));  getitem_9 = None
        dt: "f32[2, 128, 16]" = unflatten_3.transpose(0, 1);  unflatten_3 = None
        unflatten_4: "f32[8, 2, 16]" = getitem_10.unflatten(1, (2, 16));  getitem_10 = None
        B: "f32[2, 8, 16]" = unflatten_4.transpose(0, 1);  unflatten_4 = None
        unflatten_5: "f32[8, 2, 16]" = getitem_11.unflatten(1, (2, 16));  getitem_11 = None
        C: "f32[2, 8, 16]" = unflatten_5.transpose(0, 1);  unflatten_5 = None

        value: "f32[128]" = l_self_modules_mixer_parameters_d_.float();  l_self_modules_mixer_parameters_d_ = None
        value_1: "f32[128]" = l_self_modules_mixer_modules_dt_proj_parameters_bias_.float();  l_self_modules_mixer_modules_dt_proj_parameters_bias_ = None

        selective_scan_fwd = torch.ops.mamba_compile.selective_scan_fwd(x_1, dt, A, B, C, value, z, value_1, True, None, True);  x_1 = dt = A = B = C = value = z = value_1 = None
        out_3: "f32[2, 128, 16]" = selective_scan_fwd[0];  selective_scan_fwd = None

        transpose_7: "f32[2, 16, 128]" = out_3.transpose(1, 2);  out_3 = None
        hidden_states: "f32[2, 16, 64]" = torch._C._nn.linear(transpose_7, l_self_modules_mixer_modules_out_proj_parameters_weight_, None);  transpose_7 = l_self_modules_mixer_modules_out_proj_parameters_weight_ = None
        return (hidden_states, r)

    class fwd_body_0(torch.nn.Module):
        def forward(self, to_1: "f32[256, 64]", to_0: "f32[64, 32]", t: "f32[32, 64]", t_1: "f32[32, 64]"):
            _set_grad_enabled = torch._C._set_grad_enabled(False);  _set_grad_enabled = None

            w: "f32[256, 64]" = to_1.to(torch.float32);  to_1 = None

            getitem: "f32[128, 64]" = w[slice(None, 128, None)]
            out: "f32[128, 32]" = getitem @ to_0;  getitem = None
            getitem_1: "f32[128, 64]" = w[slice(128, None, None)]
            out_1: "f32[128, 32]" = getitem_1 @ to_0;  getitem_1 = None

            _set_grad_enabled_1 = torch._C._set_grad_enabled(True);  _set_grad_enabled_1 = None
            return ((out, out_1), (w, to_0, t, t_1))

    class bwd_body_0(torch.nn.Module):
        def forward(self, dx: "f32[128, 32]", dz: "f32[128, 32]", w: "f32[256, 64]", arg: "f32[64, 32]", t_3: "f32[32, 64]", t_6: "f32[32, 64]"):
            _set_grad_enabled = torch._C._set_grad_enabled(False);  _set_grad_enabled = None

            getattr_1: "f32[32, 128]" = dz.T
            getitem: "f32[128, 64]" = w[slice(128, None, None)]
            dh: "f32[32, 64]" = getattr_1 @ getitem;  getattr_1 = getitem = None

            t: "f32[128, 64]" = w[slice(None, 128, None)];  w = None

            add_matmul_ = torch.ops.mamba_compile.add_matmul_(dh, dx, t);  t = add_matmul_ = None

            dweight: "f32[256, 64]" = arg.new_empty((256, 64), dtype = torch.float32);  arg = None

            t_1: "f32[128, 64]" = dweight[slice(None, 128, None)]
            t_2: "f32[32, 128]" = dx.T;  dx = None

            matmul_into_ = torch.ops.mamba_compile.matmul_into_(t_1, t_2, t_3);  t_1 = t_2 = t_3 = matmul_into_ = None

            t_4: "f32[128, 64]" = dweight[slice(128, None, None)]
            t_5: "f32[32, 128]" = dz.T;  dz = None

            matmul_into__1 = torch.ops.mamba_compile.matmul_into_(t_4, t_5, t_6);  t_4 = t_5 = t_6 = matmul_into__1 = None

            getattr_4: "f32[64, 32]" = dh.T;  dh = None

            _set_grad_enabled_1 = torch._C._set_grad_enabled(True);  _set_grad_enabled_1 = None
            return (dweight, getattr_4, None, None)

    class fwd_body_1(torch.nn.Module):
        def forward(self, to_3: "f32[20, 128]", to_4: "f32[128, 4]", to_2: "f32[128, 32]", t_2: "f32[32, 128]"):
            _set_grad_enabled = torch._C._set_grad_enabled(False);  _set_grad_enabled = None

            wx: "f32[20, 128]" = to_3.to(torch.float32);  to_3 = None
            wdt: "f32[128, 4]" = to_4.to(torch.float32);  to_4 = None

            x_dbl: "f32[20, 32]" = wx @ to_2

            split = x_dbl.split([4, 8, 8]);  x_dbl = None
            dt_low: "f32[4, 32]" = split[0]
            B: "f32[8, 32]" = split[1]
            C: "f32[8, 32]" = split[2];  split = None

            out: "f32[128, 32]" = wdt @ dt_low

            _set_grad_enabled_1 = torch._C._set_grad_enabled(True);  _set_grad_enabled_1 = None

            view_as: "f32[128, 32]" = to_2.view_as(to_2)

            getattr_1: "f32[4, 128]" = wdt.T;  wdt = None

            t: "f32[32, 4]" = dt_low.T;  dt_low = None
            return ((view_as, out, B, C), (to_2, getattr_1, wx, t_2, t))

    class bwd_body_1(torch.nn.Module):
        def forward(self, dx: "f32[128, 32]", ddt: "f32[128, 32]", d_b: "f32[8, 32]", d_c: "f32[8, 32]", out_2: "f32[128, 32]", getattr_1: "f32[4, 128]", wx: "f32[20, 128]", t_2: "f32[32, 128]", t_4: "f32[32, 4]"):
            _set_grad_enabled = torch._C._set_grad_enabled(False);  _set_grad_enabled = None

            zeros: "f32[8, 32]" = out_2.new_zeros(8, 32);  zeros = None

            matmul: "f32[4, 32]" = getattr_1 @ ddt;  getattr_1 = None
            dx_dbl: "f32[20, 32]" = torch.cat([matmul, d_b, d_c]);  matmul = d_b = d_c = None

            dx_1: "f32[128, 32]" = torch.ops.mamba_compile.add_matmul(dx, wx, dx_dbl);  dx = wx = None

            dw_x: "f32[20, 128]" = out_2.new_empty((20, 128), dtype = torch.float32)

            t: "f32[32, 20]" = dx_dbl.T;  dx_dbl = None

            matmul_into_ = torch.ops.mamba_compile.matmul_into_(dw_x, t, t_2);  t = t_2 = matmul_into_ = None

            dw_dt: "f32[128, 4]" = out_2.new_empty((128, 4), dtype = torch.float32);  out_2 = None

            t_3: "f32[32, 128]" = ddt.T;  ddt = None

            matmul_into__1 = torch.ops.mamba_compile.matmul_into_(dw_dt, t_3, t_4);  t_3 = t_4 = matmul_into__1 = None

            _set_grad_enabled_1 = torch._C._set_grad_enabled(True);  _set_grad_enabled_1 = None
            return (dw_x, dw_dt, dx_1, None)
""")

    def test_mamba2_block(self):
        graph = _graph(mamba2())
        for op in ("add_norm", "causal_conv1d_fwd", "ssd_chunk_scan_fwd", "rms_norm_gated"):
            self.assertIn(f"mamba_compile.{op}", graph.replace("torch.ops.", ""))
        self.assertExpectedInline(graph, """\
class GraphModule(torch.nn.Module):
    def forward(self, L_self_modules_norm_parameters_weight_: "f32[64]", L_hidden_states_: "f32[2, 16, 64]", L_residual_: "f32[2, 16, 64]", L_self_modules_mixer_modules_in_proj_parameters_weight_: "f32[328, 64]", L_self_modules_mixer_modules_conv1d_parameters_weight_: "f32[192, 1, 4]", L_self_modules_mixer_modules_conv1d_parameters_bias_: "f32[192]", L_self_modules_mixer_parameters_A_log_: "f32[8]", L_self_modules_mixer_parameters_D_: "f32[8]", L_self_modules_mixer_parameters_dt_bias_: "f32[8]", L_self_modules_mixer_modules_norm_parameters_weight_: "f32[128]", L_self_modules_mixer_modules_out_proj_parameters_weight_: "f32[64, 128]"):
        l_self_modules_norm_parameters_weight_ = L_self_modules_norm_parameters_weight_
        l_hidden_states_ = L_hidden_states_
        l_residual_ = L_residual_
        l_self_modules_mixer_modules_in_proj_parameters_weight_ = L_self_modules_mixer_modules_in_proj_parameters_weight_
        l_self_modules_mixer_modules_conv1d_parameters_weight_ = L_self_modules_mixer_modules_conv1d_parameters_weight_
        l_self_modules_mixer_modules_conv1d_parameters_bias_ = L_self_modules_mixer_modules_conv1d_parameters_bias_
        l_self_modules_mixer_parameters_a_log_ = L_self_modules_mixer_parameters_A_log_
        l_self_modules_mixer_parameters_d_ = L_self_modules_mixer_parameters_D_
        l_self_modules_mixer_parameters_dt_bias_ = L_self_modules_mixer_parameters_dt_bias_
        l_self_modules_mixer_modules_norm_parameters_weight_ = L_self_modules_mixer_modules_norm_parameters_weight_
        l_self_modules_mixer_modules_out_proj_parameters_weight_ = L_self_modules_mixer_modules_out_proj_parameters_weight_

        add_norm = torch.ops.mamba_compile.add_norm(l_hidden_states_, l_self_modules_norm_parameters_weight_, None, l_residual_, 1e-05, True, True, True);  l_hidden_states_ = l_self_modules_norm_parameters_weight_ = l_residual_ = None
        out: "f32[2, 16, 64]" = add_norm[0]
        r: "f32[2, 16, 64]" = add_norm[1];  add_norm = None

        getitem_4: "f32[128, 64]" = l_self_modules_mixer_modules_in_proj_parameters_weight_[slice(None, 128, None)]
        linear: "f32[2, 16, 128]" = torch._C._nn.linear(out, getitem_4, None);  getitem_4 = None

        split = linear.split([0, 0, 128], dim = -1);  linear = None
        z: "f32[2, 16, 128]" = split[2];  split = None

        getitem_8: "f32[192, 64]" = l_self_modules_mixer_modules_in_proj_parameters_weight_[slice(128, -8, None)]
        xBC: "f32[2, 16, 192]" = torch._C._nn.linear(out, getitem_8, None);  getitem_8 = None
        getitem_9: "f32[8, 64]" = l_self_modules_mixer_modules_in_proj_parameters_weight_[slice(-8, None, None)];  l_self_modules_mixer_modules_in_proj_parameters_weight_ = None
        dt: "f32[2, 16, 8]" = torch._C._nn.linear(out, getitem_9, None);  out = getitem_9 = None

        t: "f32[2, 192, 16]" = xBC.transpose(1, 2);  xBC = None

        weight: "f32[192, 4]" = l_self_modules_mixer_modules_conv1d_parameters_weight_.squeeze(1);  l_self_modules_mixer_modules_conv1d_parameters_weight_ = None

        causal_conv1d_fwd = torch.ops.mamba_compile.causal_conv1d_fwd(t, weight, l_self_modules_mixer_modules_conv1d_parameters_bias_, None, None, False, True);  t = weight = l_self_modules_mixer_modules_conv1d_parameters_bias_ = None
        out_1: "f32[2, 192, 16]" = causal_conv1d_fwd[0];  causal_conv1d_fwd = None

        transpose_1: "f32[2, 16, 192]" = out_1.transpose(1, 2);  out_1 = None
        split_1 = transpose_1.split([128, 32, 32], dim = -1);  transpose_1 = None
        x: "f32[2, 16, 128]" = split_1[0]
        B: "f32[2, 16, 32]" = split_1[1]
        C: "f32[2, 16, 32]" = split_1[2];  split_1 = None

        x_1: "f32[2, 16, 8, 16]" = x.unflatten(-1, (8, 16));  x = None

        B_1: "f32[2, 16, 2, 16]" = B.unflatten(-1, (2, 16));  B = None

        C_1: "f32[2, 16, 2, 16]" = C.unflatten(-1, (2, 16));  C = None

        float_1: "f32[8]" = l_self_modules_mixer_parameters_a_log_.float();  l_self_modules_mixer_parameters_a_log_ = None
        exp: "f32[8]" = torch.exp(float_1);  float_1 = None
        A: "f32[8]" = -exp;  exp = None

        value: "f32[8]" = l_self_modules_mixer_parameters_d_.float();  l_self_modules_mixer_parameters_d_ = None

        value_1: "f32[8]" = l_self_modules_mixer_parameters_dt_bias_.float();  l_self_modules_mixer_parameters_dt_bias_ = None

        ssd_chunk_scan_fwd = torch.ops.mamba_compile.ssd_chunk_scan_fwd(x_1, dt, A, B_1, C_1, 16, value, None, value_1, None, None, None, True, 0.0, 3.4028234663852886e+38, True);  x_1 = dt = A = B_1 = C_1 = value = value_1 = None
        out_2: "f32[2, 16, 8, 16]" = ssd_chunk_scan_fwd[0];  ssd_chunk_scan_fwd = None

        t_1: "f32[2, 16, 128]" = out_2.flatten(-2);  out_2 = None

        rms_norm_gated = torch.ops.mamba_compile.rms_norm_gated(t_1, l_self_modules_mixer_modules_norm_parameters_weight_, z, 1e-05, 64, False);  t_1 = l_self_modules_mixer_modules_norm_parameters_weight_ = z = None
        out_3: "f32[2, 16, 128]" = rms_norm_gated[0];  rms_norm_gated = None

        hidden_states: "f32[2, 16, 64]" = torch._C._nn.linear(out_3, l_self_modules_mixer_modules_out_proj_parameters_weight_, None);  out_3 = l_self_modules_mixer_modules_out_proj_parameters_weight_ = None
        return (hidden_states, r)
""")
