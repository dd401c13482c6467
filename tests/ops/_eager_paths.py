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
