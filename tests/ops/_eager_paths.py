"""Shared by the tests of the ops' plain-eager paths (the autograd.Functions that skip the custom ops' dispatch)."""

from __future__ import annotations

import torch


def assert_same_results(got, want, *, out_tol: float = 1e-5, grad_tol: float = 1e-4) -> None:
    """got, want: (outputs, gradients) of the two paths, gradients as a sequence or a dict by input name; every
    output (None on both sides allowed) and every gradient must agree, to the tolerances (relative, and absolute at
    1e-5 for values near zero)."""
    (outs, grads), (want_outs, want_grads) = got, want
    assert len(outs) == len(want_outs)
    for a, e in zip(outs, want_outs):
        if a is None or e is None:
            assert a is None and e is None
        else:
            torch.testing.assert_close(a, e, rtol=out_tol, atol=1e-5)
    if not isinstance(grads, dict):
        grads, want_grads = dict(enumerate(grads)), dict(enumerate(want_grads))
    assert grads.keys() == want_grads.keys()
    for k in want_grads:
        torch.testing.assert_close(grads[k], want_grads[k], rtol=grad_tol, atol=1e-5, msg=str(k))


def fwd_bwd(fn, inputs, used, seed):
    """Outputs of fn(*inputs) (a tuple) and the gradients of every floating tensor input, from random output
    gradients on the outputs whose index is in ``used`` (the others unused, as by a caller ignoring them)."""
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if isinstance(t, torch.Tensor) else t
              for t in inputs]
    outs = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    loss = sum((outs[i].float() * torch.randn(outs[i].shape, generator=g).to(outs[i].device)).sum() for i in used)
    return outs, torch.autograd.grad(loss, [t for t in leaves if isinstance(t, torch.Tensor) and t.requires_grad])
