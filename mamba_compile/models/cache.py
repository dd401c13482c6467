"""InferenceCache: decode state for every layer, allocated once for (max_batch, max_seqlen).

Per Mamba layer: conv_state (max_batch, conv_dim, d_conv - 1) holding the last d_conv - 1 conv
inputs, ssm_state (max_batch, d_inner, d_state) for Mamba-1 or (max_batch, nheads, headdim, d_state)
for Mamba-2, both fp32. Per attention layer: key/value (max_batch, max_seqlen, nheads_kv, head_dim)
in the model's dtype. ``lengths`` (max_batch,) int64 counts the tokens each row has seen, so rows
may sit at different positions (per-row prefill of prompts of different lengths).

The cache is a pytree dataclass: torch.compile and torch.export take it as an input whose tensors
are updated in place; allocating once keeps addresses static for CUDA graphs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_EMPTY = (0,)


@dataclass
class InferenceCache:
    conv_states: list[torch.Tensor]
    ssm_states: list[torch.Tensor]
    key_cache: list[torch.Tensor]
    value_cache: list[torch.Tensor]
    lengths: torch.Tensor  # (max_batch,) int64

    @property
    def max_batch(self) -> int:
        return self.lengths.shape[0]

    @property
    def max_seqlen(self) -> int | None:
        """Positions the attention layers can hold; None without attention (Mamba states have no length limit)."""
        for k in self.key_cache:
            if k.numel():
                return k.shape[1]
        return None

    @classmethod
    def allocate(cls, model, max_batch: int, max_seqlen: int, device=None, dtype=None,
                 state_dtype: torch.dtype = torch.float32) -> "InferenceCache":
        """Zeroed states for every layer of ``model`` (a MambaLM); ``dtype`` is the KV cache's (default:
        the model's), ``state_dtype`` the conv and SSM states' (float32, or the model's 16-bit dtype)."""
        if state_dtype not in (torch.float32, torch.bfloat16, torch.float16):
            raise TypeError(f"state_dtype must be torch.float32, torch.bfloat16 or torch.float16, got {state_dtype}")
        if max_batch < 1 or max_seqlen < 1:
            raise ValueError(f"max_batch and max_seqlen must be >= 1, got {max_batch} and {max_seqlen}")
        p = next(model.parameters())
        device = p.device if device is None else torch.device(device)
        dtype = p.dtype if dtype is None else dtype
        conv, ssm, keys, values = [], [], [], []
        for layer in model.backbone.layers:
            shapes = layer.mixer.state_shapes(max_batch, max_seqlen)
            empty = torch.zeros(_EMPTY, device=device)
            if "key" in shapes:
                conv.append(empty)
                ssm.append(empty.clone())
                keys.append(torch.zeros(shapes["key"], device=device, dtype=dtype))
                values.append(torch.zeros(shapes["key"], device=device, dtype=dtype))
            else:
                conv.append(torch.zeros(shapes["conv"], device=device, dtype=state_dtype))
                ssm.append(torch.zeros(shapes["ssm"], device=device, dtype=state_dtype))
                keys.append(torch.zeros(_EMPTY, device=device, dtype=dtype))
                values.append(torch.zeros(_EMPTY, device=device, dtype=dtype))
        return cls(conv, ssm, keys, values, torch.zeros(max_batch, dtype=torch.int64, device=device))

    def tensors(self) -> list[torch.Tensor]:
        return [*self.conv_states, *self.ssm_states, *self.key_cache, *self.value_cache, self.lengths]

    def rows(self, start: int, stop: int) -> "InferenceCache":
        """A view of rows [start, stop): writes through it land in this cache. All rows: the cache itself
        (slices would make the compiler copy every state in and out of an in-place op)."""
        if start == 0 and stop == self.max_batch:
            return self
        sl = lambda ts: [t[start:stop] for t in ts]  # noqa: E731  (placeholders of shape (0,) stay empty)
        return InferenceCache(sl(self.conv_states), sl(self.ssm_states), sl(self.key_cache),
                              sl(self.value_cache), self.lengths[start:stop])

    def reset(self) -> "InferenceCache":
        torch._foreach_zero_([t for t in self.tensors() if t.numel()])  # a few launches, not one per tensor
        return self

    def mark_static(self) -> "InferenceCache":
        """Marks every state tensor as a static address (CUDA graphs then keep the in-place updates)."""
        for t in self.tensors():
            torch._dynamo.mark_static_address(t)
        self.is_static = True  # a plain attribute, read only outside compiled code
        return self

    is_static = False


torch.export.register_dataclass(InferenceCache, serialized_type_name="mamba_compile.models.InferenceCache")
