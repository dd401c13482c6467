"""MambaLM: embedding, blocks of (add + norm + mixer [+ add + norm + gated MLP]), final norm, LM head.

Shapes: input_ids (batch, seqlen) int; hidden_states and residual (batch, seqlen, d_model);
logits (batch, seqlen, padded_vocab_size). One decode step: input_ids (batch,), logits (batch, padded_vocab_size).
The module tree mirrors the reference's MambaLMHeadModel (backbone.embedding, backbone.layers.N.{norm,
mixer, norm2, mlp}, backbone.norm_f, lm_head), so its state_dict keys are the reference's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import decode_norm_head, layer_norm, linear_cross_entropy, rms_norm
from ..ops._checks import values_readable
from .cache import InferenceCache
from .config import MambaConfig
from . import mixers
from .mixers import MHA, Mamba1Mixer, Mamba2Mixer


# The training step's embedding gradient as index_select's (an atomic index_add into zeros) instead of
# nn.Embedding's sort-based backward (see MixerModel._embed). Read at call time.
EMBEDDING_INDEX_SELECT = True


@dataclass
class LMOutput:
    logits: torch.Tensor | None  # (batch, seqlen, padded_vocab_size); None when the loss was asked for
    loss: torch.Tensor | None = None  # () mean next-token cross-entropy, with ``labels``


# A registered pytree node: compiled and exported models return it, and .pt2 packages serialise it.
torch.export.register_dataclass(LMOutput, serialized_type_name="mamba_compile.models.LMOutput")


class Norm(nn.Module):
    """RMSNorm or LayerNorm with the residual add fused in (``prenorm`` also returns the new residual)."""

    def __init__(self, d: int, eps: float, rms: bool):
        super().__init__()
        self.eps, self.rms = eps, rms
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = None if rms else nn.Parameter(torch.zeros(d))

    def forward(self, x, residual=None, prenorm: bool = False, residual_in_fp32: bool = False):
        fn = rms_norm if self.rms else layer_norm
        return fn(x, self.weight, self.bias, residual=residual, eps=self.eps, prenorm=prenorm,
                  residual_in_fp32=residual_in_fp32)


class GatedMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, multiple_of: int = 128):
        super().__init__()
        hidden = (hidden + multiple_of - 1) // multiple_of * multiple_of
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False)
        self.fc2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))


class Block(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int):
        super().__init__()
        d, eps = config.d_model, config.norm_epsilon
        self.residual_in_fp32 = config.residual_in_fp32
        self.norm = Norm(d, eps, config.rms_norm)
        if layer_idx in config.attn_layer_idx:
            self.mixer = MHA(d, layer_idx, **config.attn())
        elif config.layer == "Mamba2":
            self.mixer = Mamba2Mixer(d, layer_idx, **config.ssm(), norm_eps=eps)
        else:
            self.mixer = Mamba1Mixer(d, layer_idx, **config.ssm())
        if config.d_intermediate > 0:
            self.norm2 = Norm(d, eps, config.rms_norm)
            self.mlp = GatedMLP(d, config.d_intermediate)
        else:
            self.mlp = None

    def _add_norm(self, norm, hidden_states, residual):
        return norm(hidden_states, residual, prenorm=True, residual_in_fp32=self.residual_in_fp32)

    def forward(self, hidden_states, residual=None, cache=None, step: bool = False):
        # hidden_states, residual: (b, l, d_model), or (b, d_model) with step=True
        hidden_states, residual = self._add_norm(self.norm, hidden_states, residual)
        hidden_states = self.mixer.step(hidden_states, cache) if step else self.mixer(hidden_states, cache)
        if self.mlp is not None:
            hidden_states, residual = self._add_norm(self.norm2, hidden_states, residual)
            hidden_states = self.mlp(hidden_states)
        return hidden_states, residual


class MixerModel(nn.Module):
    def __init__(self, config: MambaConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.padded_vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm_f = Norm(config.d_model, config.norm_epsilon, config.rms_norm)

    def forward(self, input_ids, cache=None, step: bool = False):
        if step and self._block_steps(input_ids.shape[0]):
            return self._fused_step(input_ids, cache)
        hidden_states, residual = self._embed(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(hidden_states, residual, cache, step)
        return self.norm_f(hidden_states, residual, prenorm=False)

    def _embed(self, input_ids):
        """The embedding rows of input_ids. While training an fp32 table (EMBEDDING_INDEX_SELECT), as index_select,
        whose gradient is an atomic index_add into a zero-filled table, rather than nn.Embedding's sort-based
        backward; under torch.use_deterministic_algorithms, and for 16-bit tables (whose atomic adds would round
        at every repeated id), nn.Embedding."""
        weight = self.embedding.weight
        if (EMBEDDING_INDEX_SELECT and torch.is_grad_enabled() and weight.requires_grad
                and weight.dtype == torch.float32 and not torch.are_deterministic_algorithms_enabled()):
            return weight.index_select(0, input_ids.reshape(-1)).unflatten(0, input_ids.shape)
        return self.embedding(input_ids)

    def _block_steps(self, batch: int) -> bool:
        """Whether a decode step goes through the mixers' block_step (read at call time: a compiled step is
        guarded on the flags)."""
        return (mixers.FUSED_DECODE and batch <= mixers.FUSED_BLOCK_MAX_BATCH
                and all(layer.mlp is None and getattr(layer.mixer, "block_step_ok", False) for layer in self.layers))

    def _fused_layers(self, input_ids, cache):
        """The layers of a block-path step: (hidden_states, residual, deferred scale) before norm_f. Each
        block_step takes the previous block's output, residual and scale, and does its own add + norm."""
        hidden_states, residual, scale = self.embedding(input_ids), None, None
        for layer in self.layers:
            hidden_states, residual, scale = layer.mixer.block_step(hidden_states, residual, scale, cache, layer.norm,
                                                                    layer.residual_in_fp32)
        return hidden_states, residual, scale

    def _fused_step(self, input_ids, cache):
        hidden_states, residual, scale = self._fused_layers(input_ids, cache)
        dtype = hidden_states.dtype
        hidden_states = mixers.apply_scale(hidden_states, scale)
        return self.norm_f(hidden_states, residual, prenorm=False).to(dtype)


FIRST_ARGMAX_MAX_BATCH = 8  # greedy_step's two-stage argmax was measured at batch 1 and 2 only


def first_argmax(logits: torch.Tensor, n: int, groups: int = 40) -> torch.Tensor:
    """logits[:, :n].argmax(-1) (the first index of the largest value) in two stages, the max over ``groups``
    slices and then over their maxima: a single-row argmax over 50k logits runs as one long reduction (11 us on
    an H100, eager or compiled), the two stages in 4 us."""
    b, width = logits.shape
    size = -(-width // groups)
    keep = torch.arange(groups * size, device=logits.device) < n
    padded = torch.nn.functional.pad(logits, (0, groups * size - width)) if groups * size > width else logits
    values, index = padded.masked_fill(~keep, float("-inf")).view(b, groups, size).max(-1)
    group = values.argmax(-1)  # the first group holding the maximum, and its first index within
    return group * size + index.gather(1, group[:, None])[:, 0]


def _check_input_ids(input_ids, config: MambaConfig, cache: InferenceCache | None, ndim: int, seqlen: int):
    """Static checks always; the range checks read tensor values (a device sync), so they run only
    outside compiled regions and CUDA-graph captures: a compiled caller validates before (generate() does);
    in a replayed graph the embedding's own device-side bounds check stops an id outside the vocabulary."""
    if not isinstance(input_ids, torch.Tensor):
        raise TypeError(f"input_ids must be a torch.Tensor, got {type(input_ids).__name__}")
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"input_ids must have dtype int64 or int32, got {str(input_ids.dtype).replace('torch.', '')}")
    if input_ids.dim() != ndim:
        want = "(batch, seqlen)" if ndim == 2 else "(batch,)"
        raise ValueError(f"input_ids must have shape {want}, got {tuple(input_ids.shape)}")
    if cache is not None and input_ids.shape[0] > cache.max_batch:
        raise ValueError(f"input_ids has batch {input_ids.shape[0]} but the cache holds max_batch {cache.max_batch}")
    if not values_readable(input_ids) or input_ids.numel() == 0:
        return
    lo, hi = int(input_ids.min()), int(input_ids.max())
    if lo < 0 or hi >= config.vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={config.vocab_size}), got values in [{lo}, {hi}]")
    if cache is not None and cache.max_seqlen is not None:
        longest = int(cache.lengths[: input_ids.shape[0]].max()) + seqlen
        if longest > cache.max_seqlen:
            raise ValueError(f"cache holds max_seqlen {cache.max_seqlen} tokens but a row would reach {longest}")


class MambaLM(nn.Module):
    def __init__(self, config: MambaConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        self.backbone = MixerModel(config)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
        self._init_weights()
        if config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self._compiled_steps = {}
        if device is not None or dtype is not None:
            self.to(device=device, dtype=dtype)

    def _init_weights(self):
        """The reference's init: normal(0.02) embeddings, zero linear biases, residual-path output
        projections scaled by 1/sqrt(residuals per layer * n_layer)."""
        n_residuals = 2 if self.config.d_intermediate > 0 else 1
        with torch.no_grad():
            nn.init.normal_(self.backbone.embedding.weight, std=0.02)
            for name, module in self.named_modules():
                if isinstance(module, nn.Linear) and module.bias is not None and not getattr(module.bias, "_no_reinit", False):
                    nn.init.zeros_(module.bias)
                if name.endswith(("out_proj", "fc2")):
                    nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                    module.weight /= math.sqrt(n_residuals * self.config.n_layer)

    # ---- forward passes ------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, cache: InferenceCache | None = None, num_last_tokens: int = 0,
                labels: torch.Tensor | None = None, ignore_index: int = -100) -> LMOutput:
        """Logits for every position (or the last ``num_last_tokens``). With a cache this is a prefill:
        it starts from the cached states of rows [0, batch), writes the final ones back and advances
        ``cache.lengths``; calling it again continues the sequence (chunked prefill).

        With ``labels`` (batch, seqlen), as in transformers: the mean cross-entropy of position t's
        logits against labels[:, t + 1] (``ignore_index`` skips a position), computed block by block by
        ``linear_cross_entropy`` without materialising the logits, which are then None."""
        _check_input_ids(input_ids, self.config, cache, ndim=2, seqlen=input_ids.shape[-1] if input_ids.dim() == 2 else 0)
        b, l = input_ids.shape
        if labels is not None:
            if not isinstance(labels, torch.Tensor) or labels.shape != input_ids.shape:
                raise ValueError(f"labels must be a tensor of input_ids' shape {tuple(input_ids.shape)}, got "
                                 f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
            if cache is not None or num_last_tokens:
                raise ValueError("labels cannot be combined with cache or num_last_tokens")
        rows = None if cache is None else cache.rows(0, b)
        hidden_states = self.backbone(input_ids, rows)  # (b, l, d_model)
        if rows is not None:
            rows.lengths.add_(l)
        if labels is not None:
            loss = linear_cross_entropy(hidden_states[:, :-1].flatten(0, 1), self.lm_head.weight,
                                        labels[:, 1:].flatten().long(), ignore_index)
            return LMOutput(None, loss)
        if num_last_tokens > 0:
            hidden_states = hidden_states[:, -num_last_tokens:]
        return LMOutput(self.lm_head(hidden_states))

    def decode_step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """One token per row: input_ids (b,) -> logits (b, padded_vocab_size); states updated in place."""
        _check_input_ids(input_ids, self.config, cache, ndim=1, seqlen=1)
        return self._step(input_ids, cache)

    def _step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """decode_step without its input checks (whose range check syncs, which a CUDA-graph capture refuses)."""
        rows = cache.rows(0, input_ids.shape[0])
        if self.backbone._block_steps(input_ids.shape[0]) and mixers.DECODE_GEMV:
            # norm_f (with the last Mamba-2 layer's deferred scale) and the LM head in one kernel
            hidden_states, residual, scale = self.backbone._fused_layers(input_ids, rows)
            rows.lengths.add_(1)
            norm = self.backbone.norm_f
            return decode_norm_head(hidden_states, residual, norm.weight, norm.bias, self.lm_head.weight,
                                    eps=float(norm.eps), is_rms=norm.rms, **mixers.scale_kwargs(scale))
        hidden_states = self.backbone(input_ids, rows, step=True)  # (b, d_model)
        rows.lengths.add_(1)
        return self.lm_head(hidden_states)

    def greedy_step(self, input_ids: torch.Tensor, cache: InferenceCache) -> torch.Tensor:
        """decode_step followed by argmax over the real vocabulary: input_ids (b,) -> next tokens (b,) int64."""
        return self.greedy_tokens(self.decode_step(input_ids, cache))

    def greedy_tokens(self, logits: torch.Tensor) -> torch.Tensor:
        """The argmax over the real vocabulary of decode logits (b, padded_vocab_size) -> tokens (b,) int64."""
        if logits.shape[0] <= FIRST_ARGMAX_MAX_BATCH:
            return first_argmax(logits, self.config.vocab_size)
        return logits[:, : self.config.vocab_size].argmax(-1)

    def allocate_cache(self, max_batch: int, max_seqlen: int, device=None, dtype=None,
                       state_dtype: torch.dtype = torch.float32) -> InferenceCache:
        return InferenceCache.allocate(self, max_batch, max_seqlen, device=device, dtype=dtype, state_dtype=state_dtype)

    # ---- checkpoints and generation (see checkpoint.py, generation.py) -------------------
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str, device=None, dtype=None) -> "MambaLM":
        from .checkpoint import load_pretrained

        return load_pretrained(cls, path_or_hub_id, device=device, dtype=dtype)

    def save_pretrained(self, directory: str) -> None:
        from .checkpoint import save_pretrained

        save_pretrained(self, directory)

    def generate(self, input_ids, max_new_tokens: int, **kwargs):
        from .generation import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)
