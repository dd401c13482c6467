"""Prefill over a whole sequence vs decode token by token: the same outputs and the same final states.

Mamba-1: causal_conv1d + selective_scan (with initial states) against causal_conv1d_update +
selective_state_update per token. Mamba-2: causal_conv1d over xBC + ssd_chunk_scan against
causal_conv1d_update + selective_state_update (Mamba-2 layout, stride-0 expanded dt / A / D / dt_bias).
Sequence lengths cross the scans' internal chunk boundaries (selective_scan's CPU chunk of 64,
ssd's chunk_size 16).
"""

import pytest
import torch

from mamba_compile.ops import (
    causal_conv1d,
    causal_conv1d_update,
    selective_scan,
    selective_state_update,
    ssd_chunk_scan,
)

WIDTH = 4


def _close(got, want, what, tol):
    scale = max(want.abs().max().item(), 1.0)
    err = (got.double() - want.double()).abs().max().item()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.3g} * {scale:.3g}"


# CUDA kernels may use TF32 tensor-core products (the chunked scans do), hence the looser bound there
TOL = {"cpu": 2e-4, "cuda": 5e-3}


def _gpu_or_cpu(device):
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    return device


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("seqlen", [5, 70])
def test_mamba1_prefill_equals_decode(seqlen, device):
    device = _gpu_or_cpu(device)
    batch, dim, dstate = 2, 16, 8
    g = torch.Generator().manual_seed(seqlen)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    x, z, delta = rnd(batch, dim, seqlen), rnd(batch, dim, seqlen), 0.5 * rnd(batch, dim, seqlen)
    B, C = rnd(batch, dstate, seqlen), rnd(batch, dstate, seqlen)
    A = -(torch.rand(dim, dstate, generator=g) + 0.1).to(device)
    D, delta_bias = rnd(dim), 0.5 * rnd(dim)
    conv_w, conv_b = rnd(dim, WIDTH) / WIDTH**0.5, rnd(dim)
    conv_state0, ssm_state0 = rnd(batch, dim, WIDTH - 1), rnd(batch, dim, dstate)

    xc, conv_final = causal_conv1d(x, conv_w, conv_b, initial_states=conv_state0, return_final_states=True,
                                   activation="silu")
    out, last_state = selective_scan(xc, delta, A, B, C, D, z, delta_bias, delta_softplus=True,
                                     initial_state=ssm_state0, return_last_state=True)

    conv_state, ssm_state = conv_state0.clone(), ssm_state0.clone()
    for t in range(seqlen):
        xt = causal_conv1d_update(x[:, :, t], conv_state, conv_w, conv_b, activation="silu")
        yt = selective_state_update(ssm_state, xt, delta[:, :, t], A, B[:, :, t], C[:, :, t], D, z[:, :, t],
                                    dt_bias=delta_bias, dt_softplus=True)
        _close(xt, xc[:, :, t], f"conv out at t={t}", TOL[device])
        _close(yt, out[:, :, t], f"out at t={t}", TOL[device])
    _close(conv_state, conv_final, "conv_state vs final_states", TOL[device])
    _close(ssm_state, last_state, "ssm state vs last_state", TOL[device])


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("seqlen", [5, 37])
def test_mamba2_prefill_equals_decode(seqlen, device):
    device = _gpu_or_cpu(device)
    batch, nheads, headdim, dstate, ngroups, chunk = 2, 4, 8, 16, 2, 16
    d_inner = nheads * headdim
    conv_dim = d_inner + 2 * ngroups * dstate
    g = torch.Generator().manual_seed(100 + seqlen)
    rnd = lambda *s: torch.randn(*s, generator=g).to(device)  # noqa: E731
    xBC, z = rnd(batch, conv_dim, seqlen), rnd(batch, seqlen, nheads, headdim)
    dt = 0.5 * rnd(batch, seqlen, nheads)
    A = -(torch.rand(nheads, generator=g) + 0.1).to(device)
    D, dt_bias = rnd(nheads), 0.5 * rnd(nheads)
    conv_w, conv_b = rnd(conv_dim, WIDTH) / WIDTH**0.5, rnd(conv_dim)
    conv_state0, ssm_state0 = rnd(batch, conv_dim, WIDTH - 1), rnd(batch, nheads, headdim, dstate)

    def split(xbc):  # (batch, conv_dim, ...) -> x (.., nheads, headdim), B, C (.., ngroups, dstate)
        xbc = xbc.movedim(1, -1)
        x, B, C = torch.split(xbc, [d_inner, ngroups * dstate, ngroups * dstate], dim=-1)
        return (x.unflatten(-1, (nheads, headdim)), B.unflatten(-1, (ngroups, dstate)),
                C.unflatten(-1, (ngroups, dstate)))

    xbc_c, conv_final = causal_conv1d(xBC, conv_w, conv_b, initial_states=conv_state0, return_final_states=True,
                                      activation="silu")
    x, B, C = split(xbc_c)
    out, final_states = ssd_chunk_scan(x, dt, A, B, C, chunk, D=D, z=z, dt_bias=dt_bias,
                                       initial_states=ssm_state0, dt_softplus=True, return_final_states=True)

    # decode: per-head parameters broadcast with stride 0, as the Mamba-2 block passes them
    A_e = A[:, None, None].expand(nheads, headdim, dstate)
    D_e, dt_bias_e = D[:, None].expand(nheads, headdim), dt_bias[:, None].expand(nheads, headdim)
    conv_state, ssm_state = conv_state0.clone(), ssm_state0.clone()
    for t in range(seqlen):
        xbc_t = causal_conv1d_update(xBC[:, :, t], conv_state, conv_w, conv_b, activation="silu")
        xt, Bt, Ct = split(xbc_t[:, :, None])
        dt_t = dt[:, t, :, None].expand(batch, nheads, headdim)
        yt = selective_state_update(ssm_state, xt[:, 0], dt_t, A_e, Bt[:, 0], Ct[:, 0], D_e, z[:, t],
                                    dt_bias=dt_bias_e, dt_softplus=True)
        _close(yt, out[:, t], f"out at t={t}", TOL[device])
    _close(conv_state, conv_final, "conv_state vs final_states", TOL[device])
    _close(ssm_state, final_states, "ssm state vs final_states", TOL[device])
