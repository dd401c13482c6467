"""Generation: prefill, then one compiled decode step per token, with greedy or sampled tokens.

Prompts of different lengths (a list, or a padded batch with ``attention_mask``) are prefilled one row
at a time into that row of the cache, so padding never enters a recurrent state and each row sees
exactly the tokens it would see alone; the decode steps then run batched, each row at its own
position (the cache keeps a length per row). Greedy decoding takes its argmax inside the compiled step;
sampling runs outside it.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch

from .cache import InferenceCache


@dataclass
class GenerateOutput:
    sequences: torch.Tensor  # (batch, max_new_tokens) new tokens; eos_token_id (or 0) after a row ends
    prompt_lengths: list[int]
    prefill_s: float
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.sequences.numel() / max(self.decode_s + self.prefill_s, 1e-9)


def _prompts(input_ids, attention_mask, device) -> list[torch.Tensor]:
    """The real tokens of each row, as 1-D int64 tensors."""
    if isinstance(input_ids, (list, tuple)):
        rows = [torch.as_tensor(r, dtype=torch.int64, device=device).reshape(-1) for r in input_ids]
    else:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError("input_ids must be a (batch, seqlen) tensor or a list of 1-D prompts")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"input_ids must have dtype int64 or int32, got {input_ids.dtype}")
        if attention_mask is None:
            rows = list(input_ids.to(device=device, dtype=torch.int64))
        else:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
            rows = []
            for i, (ids, mask) in enumerate(zip(input_ids, attention_mask.bool())):
                kept = mask.nonzero().flatten()
                if kept.numel() and kept[-1] - kept[0] + 1 != kept.numel():
                    raise ValueError(f"attention_mask row {i} has holes: only left or right padding is supported")
                rows.append(ids[kept].to(device=device, dtype=torch.int64))
    if not rows or any(r.numel() == 0 for r in rows):
        raise ValueError("every prompt needs at least one token")
    return rows


def sample(logits, *, temperature=0.0, top_k=None, top_p=None, min_p=None, repetition_penalty=None,
           seen=None, generator=None) -> torch.Tensor:
    """Next tokens (b,) from logits (b, vocab), in the order transformers applies its processors."""
    logits = logits.float()
    if repetition_penalty is not None and repetition_penalty != 1.0 and seen is not None:
        picked = logits.gather(1, seen)
        picked = torch.where(picked < 0, picked * repetition_penalty, picked / repetition_penalty)
        logits = logits.scatter(1, seen, picked)
    if not temperature:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    if min_p:
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _compiled(model, key: tuple, fn, **options):
    """``torch.compile(fn, fullgraph=True, **options)``, made once per model and key."""
    if key not in model._compiled_steps:
        model._compiled_steps[key] = torch.compile(fn, fullgraph=True, **options)
    return model._compiled_steps[key]


def decode_fn(model, compile: bool | str, greedy: bool = False):
    """The decode step (``greedy``: the step followed by argmax, returning tokens (b,) instead of logits),
    compiled once per model, backend and kind: ``compile=True`` is Inductor (with CUDA graphs,
    mode="reduce-overhead", on CUDA); a string names another backend (e.g. "aot_eager")."""
    fn = model.greedy_step if greedy else model.decode_step
    if not compile:
        return fn
    device = next(model.parameters()).device.type
    backend = "inductor" if compile is True else compile
    mode = "reduce-overhead" if device == "cuda" and backend == "inductor" else None
    return _compiled(model, (backend, device, greedy), fn, backend=backend, mode=mode)


# compile_prefill=True on CUDA: the compiled prefill also runs as CUDA graphs (mode="reduce-overhead"), one
# recorded per prompt shape; the compiled code itself stays dynamic (one compilation for every length).
PREFILL_CUDA_GRAPHS = True


def prefill_fn(model, compile: bool | str):
    """The prefill (``model(input_ids, cache=..., num_last_tokens=1)``), with ``compile``: compiled by
    Inductor with dynamic shapes (one graph for every prompt length). On an H100 this took a 100-token
    prefill of a 130M Mamba-1 from 23.6 ms (eager launches) to 6.7 ms (8.2 ms for Mamba-2), for about 100 s
    more compilation on the first call (the whole unrolled model), so it is opt-in. On CUDA it replays CUDA
    graphs too (PREFILL_CUDA_GRAPHS). A string names another backend."""
    if not compile:
        return model
    device = next(model.parameters()).device.type
    backend = "inductor" if compile is True else compile
    graphs = PREFILL_CUDA_GRAPHS and device == "cuda" and backend == "inductor"
    key = ("prefill", backend, device, graphs)
    return _compiled(model, key, model, backend=backend, dynamic=True, mode="reduce-overhead" if graphs else None)


# CUDA, greedy, compiled, no streamer, batch <= GRAPH_MAX_BATCH: the decode steps replay CUDA graphs captured
# from the compiled step, GRAPH_STEPS steps a graph (see GraphedGreedy). GRAPH_STEPS = 0 turns this off (one
# reduce-overhead call a step). H100, 130M, 100 tokens after 100: at batch 1 it gave Mamba-1 46.2-47.2 ms and
# Mamba-2 40.4 ms (the step alone: 0.38 / 0.36 ms). At batch 64, where a step's GPU time exceeds the host's, it
# gave Mamba-1 92.0 ms (110.5 per step before) but Mamba-2 167.3 (155.7 per step before), unexplained, so the
# larger batches keep the per-step path for now.
GRAPH_STEPS = 8
GRAPH_MAX_BATCH = 8

# Hopper and later, at the batches where the step is the fused block step (all its kernels the decode ops'): the
# graphs launch the decode kernels with programmatic dependent launch (see ops._triton, GraphedGreedy).
DEPENDENT_LAUNCH = True


class GraphedGreedy:
    """Greedy decode steps of ``model`` on rows [0, batch) of ``cache``, captured in CUDA graphs of ``steps``
    steps and of one step: a replay feeds each step's argmax to the next and writes the tokens to ``out``.

    One host launch then serves ``steps`` tokens. A step of the 130M models takes about 0.4 ms of GPU time at
    batch 1, less than the host needs to call a reduce-overhead compiled function (Dynamo's guards over every
    parameter, the CUDA-graph tree's checks of every static input), so calling one per token left the GPU
    waiting. The graphs capture the step compiled by Inductor without its own CUDA graphs; they are recorded
    again whenever a parameter, buffer or cache tensor has moved (``ensure_captured``).

    With ``dependent`` (DEPENDENT_LAUNCH, on a GPU that supports it, where the step is the fused block step)
    each decode kernel issues its weight loads while the kernel before it runs. Inductor launches the Triton
    kernels of the ops it compiles with options of its own, without ``launch_pdl`` (torch 2.11-2.13), so
    then the graphs capture the step's ops as they launch their kernels themselves, and only the argmax after
    them is compiled. An H100 took 0.260 ms for a 130M Mamba-2 step against 0.360 launched plainly.
    """

    def __init__(self, model, cache, batch: int, eos: torch.Tensor, compile: bool | str, steps: int):
        from ..ops._triton import supports_dependent_launch
        from . import mixers

        self.model, self.cache, self.batch, self.eos, self.steps = model, cache, batch, eos, steps
        device = cache.lengths.device
        self.tokens = torch.zeros(batch, dtype=torch.int64, device=device)  # each step's input
        self.finished = torch.zeros(batch, dtype=torch.bool, device=device)
        self.out = torch.zeros(batch, steps, dtype=torch.int64, device=device)
        backend = "inductor" if compile is True else compile
        self.dependent = bool(DEPENDENT_LAUNCH and supports_dependent_launch(device) and mixers.DECODE_GEMV
                              and model.backbone._block_steps(batch))
        if self.dependent:
            tokens = _compiled(model, ("greedy tokens", backend), model.greedy_tokens, backend=backend)
            self.fn = lambda ids, cache: tokens(model.decode_step(ids, cache))
        else:
            self.fn = _compiled(model, ("graphed greedy", backend), model.greedy_step, backend=backend)
        self.graphs, self.fingerprint = {}, None

    def _addresses(self) -> tuple:
        return tuple(t.data_ptr() for t in (*self.model.parameters(), *self.model.buffers(), *self.cache.tensors()))

    def _run(self, k: int) -> None:
        token, tokens = self.tokens, []
        for _ in range(k):  # each step's output is the next one's input, with no copy between
            token = self.fn(token, self.cache)
            if self.eos.numel():  # as generate(): a finished row repeats eos; no host sync
                token = torch.where(self.finished, self.eos[0], token)
                self.finished |= (token[:, None] == self.eos[None, :]).any(-1)
            tokens.append(token)
        self.out[:, :k].copy_(torch.stack(tokens, 1))
        self.tokens.copy_(token)

    def ensure_captured(self) -> bool:
        """Captures the graphs if they are missing or stale. The warm-up before the capture runs real steps,
        which advance the cache: returns True when it did, and the caller resets the cache."""
        if self.graphs and self.fingerprint == self._addresses():
            return False
        from ..ops._triton import dependent_launches

        self.graphs = {}
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), dependent_launches(self.dependent):
            for _ in range(2):  # compiles (first call) and runs every kernel once outside the capture
                self._run(1)
        torch.cuda.current_stream().wait_stream(stream)
        for k in sorted({self.steps, 1}):
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), dependent_launches(self.dependent):
                self._run(k)
            self.graphs[k] = graph
        self.fingerprint = self._addresses()
        return True

    def replay(self, k: int) -> torch.Tensor:
        """Runs k steps (k = steps or 1) from ``tokens`` and ``finished``; returns their tokens, (batch, k)."""
        self.graphs[k].replay()
        return self.out[:, :k]


def _graphed(model, cache, batch: int, eos: torch.Tensor, compile) -> GraphedGreedy:
    from . import mixers

    # the decode-path flags too: a graph replays the kernels it captured, whatever the flags say later
    flags = (mixers.FUSED_DECODE, mixers.FUSED_DECODE_IN_MAX_BATCH, mixers.FUSED_BLOCK_MAX_BATCH, mixers.DECODE_GEMV,
             DEPENDENT_LAUNCH)
    key = (id(cache), batch, tuple(eos.tolist()), compile, GRAPH_STEPS, flags)
    runners = model.__dict__.setdefault("_graphed_greedy", {})
    runner = runners.get(key)
    if runner is None or runner.cache is not cache:
        runners.clear()  # one set of graphs a model: they hold their memory pools
        runner = runners[key] = GraphedGreedy(model, cache, batch, eos, compile, GRAPH_STEPS)
    if runner.ensure_captured():
        cache.reset()
    return runner


@torch.inference_mode()
def generate(model, input_ids, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
             top_p: float | None = None, min_p: float | None = None, repetition_penalty: float | None = None,
             eos_token_id: int | list[int] | None = None, attention_mask=None, streamer=None,
             compile: bool | str | None = None, compile_prefill: bool | str = False, generator=None,
             cache: InferenceCache | None = None) -> GenerateOutput:
    """Generates ``max_new_tokens`` per row (fewer when every row has produced an eos token).

    ``streamer``: a callable taking the new tokens (b,) each step, or an object with ``put``/``end``
    (transformers' streamers). ``compile``: compile the decode step (default: on CUDA; see decode_fn).
    ``compile_prefill``: compile the prefill too (see prefill_fn; slow to compile, faster per call).
    Without ``cache`` the cache is kept on the model (``model._generation_cache``) and reused by the next
    call of the same batch size; a cache you pass is used as is (``cache.mark_static()`` it for CUDA graphs).
    """
    device = next(model.parameters()).device
    # The model's device, current: torch.cuda.Stream(), CUDA graphs, synchronize() and every eager kernel launch
    # work on the current device, which need not be the model's (a model on cuda:1 without set_device).
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        return _generate(model, input_ids, max_new_tokens, device, temperature=temperature, top_k=top_k, top_p=top_p,
                         min_p=min_p, repetition_penalty=repetition_penalty, eos_token_id=eos_token_id,
                         attention_mask=attention_mask, streamer=streamer, compile=compile,
                         compile_prefill=compile_prefill, generator=generator, cache=cache)


def _generate(model, input_ids, max_new_tokens: int, device: torch.device, *, temperature, top_k, top_p, min_p,
              repetition_penalty, eos_token_id, attention_mask, streamer, compile, compile_prefill, generator,
              cache) -> GenerateOutput:
    vocab = model.config.vocab_size
    prompts = _prompts(input_ids, attention_mask, device)
    every = torch.cat(prompts)
    lo, hi = torch.stack([every.min(), every.max()]).tolist()  # one sync for the whole batch
    if lo < 0 or hi >= vocab:
        raise ValueError(f"prompts have token ids in [{lo}, {hi}], outside [0, vocab_size={vocab})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    b = len(prompts)
    max_seqlen = max(p.numel() for p in prompts) + max_new_tokens
    compile = device.type == "cuda" if compile is None else compile
    if cache is None:  # reuse the last generation's cache when it fits: same addresses, no recompilation
        cache = getattr(model, "_generation_cache", None)
        too_short = cache is not None and cache.max_seqlen is not None and cache.max_seqlen < max_seqlen
        graphs = compile and device.type == "cuda"  # CUDA graphs need the cache at static addresses
        if (cache is None or too_short or cache.max_batch != b or cache.lengths.device != device
                or (graphs and not cache.is_static)):
            cache = model._generation_cache = model.allocate_cache(b, max_seqlen)
            if graphs:
                cache.mark_static()
        else:
            cache.reset()
    elif cache.max_batch < b or (cache.max_seqlen is not None and cache.max_seqlen < max_seqlen):
        raise ValueError(f"cache (max_batch {cache.max_batch}, max_seqlen {cache.max_seqlen}) is too small "
                         f"for batch {b} and {max_seqlen} tokens")
    else:
        cache.reset()
    eos = torch.tensor([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []), device=device)
    # Greedy decoding without a repetition penalty: argmax inside the compiled step, so a step is one
    # CUDA-graph replay and a copy of the tokens.
    greedy = not temperature and not (repetition_penalty and repetition_penalty != 1.0)
    put = getattr(streamer, "put", streamer)
    graphed = (greedy and compile and device.type == "cuda" and GRAPH_STEPS > 0 and put is None
               and max_new_tokens > 1 and b <= GRAPH_MAX_BATCH)
    if graphed:
        runner = _graphed(model, cache, b, eos, compile)
    else:
        step = decode_fn(model, compile, greedy=greedy)
    prefill = prefill_fn(model, compile_prefill)

    t0 = time.perf_counter()
    last = torch.empty(b, model.config.padded_vocab_size, device=device, dtype=next(model.parameters()).dtype)
    if len({p.numel() for p in prompts}) == 1:  # no padding anywhere: one batched prefill
        last.copy_(prefill(torch.stack(prompts), cache=cache, num_last_tokens=1).logits[:, -1])
    else:
        for i, p in enumerate(prompts):  # per-row prefill: no padding enters any state
            last[i] = prefill(p[None], cache=cache.rows(i, i + 1), num_last_tokens=1).logits[0, -1]
    seen = [p for p in prompts]
    out = torch.full((b, max_new_tokens), int(eos[0]) if eos.numel() else 0, dtype=torch.int64, device=device)
    finished = torch.zeros(b, dtype=torch.bool, device=device)
    tokens_in = torch.zeros(b, dtype=torch.int64, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    if graphed:
        n = _graphed_loop(runner, last[:, :vocab].argmax(-1), out, finished, eos, max_new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return GenerateOutput(out[:, :n], [p.numel() for p in prompts], t1 - t0, time.perf_counter() - t1)
    n = 0
    for n in range(max_new_tokens):
        if greedy and n > 0:
            token = last  # the compiled step's argmax
        else:
            seen_t = None
            if repetition_penalty:  # pad with each row's first token (a real one), not with 0
                seen_t = torch.nn.utils.rnn.pad_sequence(seen, batch_first=True, padding_value=0)
                lens = torch.tensor([s.numel() for s in seen], device=device)
                seen_t = torch.where(torch.arange(seen_t.shape[1], device=device) < lens[:, None], seen_t, seen_t[:, :1])
            token = sample(last[:, :vocab], temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                           repetition_penalty=repetition_penalty, seen=seen_t, generator=generator)
        if eos.numel():
            token = torch.where(finished, eos[0], token)
        out[:, n] = token
        if put is not None:
            put(out[:, n])
        if repetition_penalty:
            seen = [torch.cat([s, t[None]]) for s, t in zip(seen, token)]
        if eos.numel():
            finished |= torch.isin(token, eos)
            if bool(finished.all()):
                break
        if n + 1 < max_new_tokens:
            # The step reads its tokens from a buffer of its own: passing a CUDA-graph output back in
            # as an input is refused when a new graph is recorded.
            tokens_in.copy_(token)
            last = step(tokens_in, cache)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t2 = time.perf_counter()
    if hasattr(streamer, "end"):
        streamer.end()
    return GenerateOutput(out[:, : n + 1], [p.numel() for p in prompts], t1 - t0, t2 - t1)


def _graphed_loop(runner: GraphedGreedy, token, out, finished, eos, max_new_tokens: int) -> int:
    """generate()'s greedy loop through the runner's graphs: the same tokens, written to ``out``; returns how
    many columns of ``out`` are the result (fewer than max_new_tokens when every row has ended)."""
    if eos.numel():
        token = torch.where(finished, eos[0], token)
        finished |= torch.isin(token, eos)
    out[:, 0] = token
    runner.tokens.copy_(token)
    runner.finished.copy_(finished)
    n = 1
    while n < max_new_tokens:
        if eos.numel() and bool(runner.finished.all()):
            break
        k = runner.steps if max_new_tokens - n >= runner.steps else 1
        out[:, n : n + k] = runner.replay(k)
        n += k
    if eos.numel() and bool(runner.finished.all()):
        # as the step-by-step loop: up to the step at which the last row ended
        ended = torch.isin(out[:, :n], eos).int().argmax(1)  # each row's first eos
        n = int(ended.max()) + 1
    return n
