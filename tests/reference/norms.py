"""Float64 oracles for the norms, written from the definitions (differentiable: tests take
reference gradients with autograd through them).

    add_norm: r = x + residual;  out = (r - mean) / sqrt(var + eps) * weight + bias     (LayerNorm)
                                 out = r / sqrt(mean(r^2) + eps) * weight + bias        (RMSNorm)
    gated:    u = x * silu(z) (norm_before_gate=False) or x;  out = u / sqrt(mean_group(u^2) + eps) * weight,
              times silu(z) when norm_before_gate

x, residual, z: (..., hidden); weight, bias: (hidden,). Inputs are used as given (pass float64).
"""

import torch


def add_norm_ref(x, weight, bias=None, residual=None, eps=1e-6, is_rms=False):
    """Returns (out, r) in the inputs' dtype (float64 in the tests)."""
    r = x if residual is None else x + residual
    if is_rms:
        normed = r / torch.sqrt((r * r).mean(-1, keepdim=True) + eps)
    else:
        centred = r - r.mean(-1, keepdim=True)
        normed = centred / torch.sqrt((centred * centred).mean(-1, keepdim=True) + eps)
    out = normed * weight
    if bias is not None:
        out = out + bias
    return out, r


def rms_norm_gated_ref(x, weight, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
    hidden = x.shape[-1]
    group_size = hidden if group_size is None else group_size
    silu = (lambda t: t * torch.sigmoid(t))
    u = x * silu(z) if (z is not None and not norm_before_gate) else x
    ug = u.reshape(*u.shape[:-1], hidden // group_size, group_size)
    normed = (ug / torch.sqrt((ug * ug).mean(-1, keepdim=True) + eps)).reshape(u.shape)
    out = normed * weight
    if z is not None and norm_before_gate:
        out = out * silu(z)
    return out
