"""What the Mamba-1 and Mamba-2 fused-decode model tests share: decoding token by token with
``mixers.FUSED_DECODE`` off or on, and the exact-equality check between the two."""

from __future__ import annotations

import torch

import mamba_compile.models.mixers as mixers
from mamba_compile import MambaLM
from tests.models._configs import VOCAB


def decode(model, ids, fused, monkeypatch, state_dtype=torch.float32, step_fn=None):
    """Prefill ids[:, :5], then decode the rest one token at a time; returns (logits (b, steps, vocab), cache).
    The five-launch fused step (the three-launch block step has tests of its own: test_decode_block.py)."""
    monkeypatch.setattr(mixers, "FUSED_DECODE", fused)
    monkeypatch.setattr(mixers, "FUSED_BLOCK_MAX_BATCH", 0)
    b, l = ids.shape
    cache = model.allocate_cache(b + 1, l, state_dtype=state_dtype)  # one spare row: rows() hands out slices
    step_fn = step_fn or model.decode_step
    with torch.no_grad():
        model(ids[:, :5], cache=cache.rows(0, b))
        logits = torch.stack([step_fn(ids[:, t], cache) for t in range(5, l)], dim=1)
    return logits, cache


def assert_fused_equals_unfused(config, mixer_cls, state_dtype, in_max_batch, monkeypatch):
    """Both in-projections of the fused step (decode_in at small batches, cuBLAS + conv update above
    mixers.FUSED_DECODE_IN_MAX_BATCH) give the unfused step's logits and states exactly."""
    monkeypatch.setattr(mixers, "FUSED_DECODE_IN_MAX_BATCH", in_max_batch)
    torch.manual_seed(0)
    model = MambaLM(config).eval()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(1))
    calls = []
    monkeypatch.setattr(mixer_cls, "_fused_step",
                        lambda self, *a, _f=mixer_cls._fused_step: calls.append(1) or _f(self, *a))
    want, cache_want = decode(model, ids, False, monkeypatch, state_dtype)
    assert not calls
    got, cache_got = decode(model, ids, True, monkeypatch, state_dtype)
    assert calls  # the flag took the fused path
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    for a, b in zip(cache_got.tensors(), cache_want.tensors()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
