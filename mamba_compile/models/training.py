"""A training step replayed from one CUDA graph.

A compiled training step of a 130M model issues about 1500 kernels. Many of them are short enough that the
host, running Python, dispatch and Dynamo's guards for each launch, falls behind the GPU: in a profile of
the Mamba-1 step on an H100 the GPU sat idle 12 of 101 ms, in over a thousand gaps between kernels.
``GraphedTrainStep`` captures the whole step (loss, backward, optimizer step) into one CUDA graph, so a step
is one launch, as in PyTorch's whole-network capture recipe:

    model = MambaLM(config, device="cuda").train()
    for layer in model.backbone.layers:
        layer.compile(fullgraph=True)
    opt = torch.optim.AdamW(model.parameters(), lr=torch.tensor(3e-4), fused=True, capturable=True)

    def loss_fn(ids):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(ids, labels=ids).loss  # position t predicts ids[:, t + 1]

    step = GraphedTrainStep(loss_fn, opt)
    for ids in batches:  # the same shape every step
        loss = step(ids)

The first ``warmup`` calls run eagerly (on a side stream), as real training steps: they compile, run every
kernel once and create the optimizer's state, none of which may happen during a capture. The next call
captures the step and replays it; later calls copy their inputs into the captured ones and replay.

What the graph fixes at capture, and what is checked on each call instead of silently replaying stale work:

- the inputs' shapes and dtypes (a mismatch raises, naming the input);
- the optimizer's hyperparameters that are Python numbers: a captured kernel keeps the value it was given,
  so changing one (a learning-rate schedule setting a float ``lr``) raises. Keep ``lr`` a tensor and change
  it in place (``group["lr"].fill_(new)``) to schedule it;
- the parameters' and gradients' storage: if a parameter moves (``model.to``, loading a state dict that
  replaces tensors), the step is captured again on the next call.

The returned loss, and the parameters' ``.grad``, live in the graph's memory: the next call overwrites them
(``loss.clone()`` keeps one). Gradients are not accumulated across calls (each step starts from zero). At the
capture the optimizer's state tensors are replaced by copies with the same values (moved to the host and back,
so that the eager steps' cached memory can be released; this needs host memory for the state, once): hold the
optimizer, not its state tensors.
"""

from __future__ import annotations

import contextlib
import numbers

import torch


class GraphedTrainStep:
    def __init__(self, loss_fn, optimizer: torch.optim.Optimizer, *, warmup: int = 3):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (eager steps before the capture), got {warmup!r}")
        not_capturable = [i for i, g in enumerate(optimizer.param_groups) if g.get("capturable") is False]
        if not_capturable:
            raise ValueError(f"optimizer: param groups {not_capturable} have capturable=False; a CUDA graph can "
                             f"only capture a capturable optimizer step, e.g. "
                             f"{type(optimizer).__name__}(..., capturable=True)")
        self.loss_fn, self.optimizer, self.warmup = loss_fn, optimizer, warmup
        params = self._parameters()
        off_gpu = [i for i, p in enumerate(params) if p.device.type != "cuda"]
        if off_gpu:
            raise ValueError(f"optimizer: parameters {off_gpu[:8]} are on {params[off_gpu[0]].device}, not CUDA; "
                             f"GraphedTrainStep needs every parameter on the GPU")
        self.params = None  # the optimizer's parameters at the capture
        self.calls = 0
        self.stream = None
        self.graph = None
        self.static_inputs = None
        self.static_loss = None
        self.fingerprint = None
        self.hyper = None

    # -- what the graph fixed --------------------------------------------------------------------------

    def _parameters(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def _hyperparameters(self) -> list[dict]:
        return [{k: v for k, v in g.items() if k != "params" and isinstance(v, (numbers.Number, tuple))}
                for g in self.optimizer.param_groups]

    def _addresses(self) -> tuple:
        return tuple(p.data_ptr() for p in self.params)

    def _check_inputs(self, inputs) -> None:
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"expected {len(self.static_inputs)} inputs (as captured), got {len(inputs)}")
        for i, (t, s) in enumerate(zip(inputs, self.static_inputs)):
            if t.shape != s.shape or t.dtype != s.dtype:
                raise ValueError(f"input {i} has shape {tuple(t.shape)} and dtype {t.dtype}; the step was captured "
                                 f"with {tuple(s.shape)} and {s.dtype} (a CUDA graph replays fixed shapes)")

    def _check_hyperparameters(self) -> None:
        now = self._hyperparameters()
        params = self._parameters()
        if len(now) != len(self.hyper) or len(params) != len(self.params) or any(
                p is not q for p, q in zip(params, self.params)):
            raise ValueError("optimizer: its param groups or parameters changed after the step was captured, and the "
                             "graph would keep updating the old ones; build a new GraphedTrainStep")
        for i, (was, is_) in enumerate(zip(self.hyper, now)):
            for k in was.keys() | is_.keys():
                if was.get(k) != is_.get(k):
                    raise ValueError(
                        f"optimizer: param group {i}'s {k!r} changed from {was.get(k)!r} to {is_.get(k)!r} after the "
                        f"step was captured, and the graph would keep using the old value; make it a tensor and "
                        f"change it in place (group[{k!r}].fill_(value)), or build a new GraphedTrainStep")

    # -- the step -----------------------------------------------------------------------------------------

    def _step(self, inputs):
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(*inputs)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def _release_warmup_memory(self) -> None:
        """Hands the eager steps' cached blocks back to the device before the capture, whose private pool holds
        its own. The optimizer's state was created inside the first step, in blocks freed by its activations,
        and a segment with one live tensor cannot be released: the state moves to the host and back, into
        segments of its own."""
        moved = []
        for state in self.optimizer.state.values():
            for k, v in state.items():
                if isinstance(v, torch.Tensor) and v.device.type == "cuda":
                    state[k] = v.to("cpu")
                    moved.append((state, k, v.device))
        torch.cuda.empty_cache()
        for state, k, device in moved:
            state[k] = state[k].to(device)

    def _capture(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates them from the graph's pool
        self._release_warmup_memory()
        with torch.cuda.graph(self.graph):
            loss = self.loss_fn(*self.static_inputs)
            loss.backward()
            self.optimizer.step()
        self.static_loss = loss.detach()
        self.params = self._parameters()
        self.fingerprint = self._addresses()
        self.hyper = self._hyperparameters()

    def __call__(self, *inputs) -> torch.Tensor:
        """One training step on ``inputs`` (passed to ``loss_fn``); returns the loss (overwritten by the next call)."""
        for i, t in enumerate(inputs):
            if not isinstance(t, torch.Tensor):  # a captured graph would keep the first call's value
                raise TypeError(f"input {i} must be a tensor, got {type(t).__name__}")
            if t.device.type != "cuda":
                raise ValueError(f"input {i} is on {t.device}; GraphedTrainStep takes CUDA tensors")
        devices = {t.device for t in inputs}
        if len(devices) > 1:
            raise ValueError(f"inputs are on {sorted(map(str, devices))}; GraphedTrainStep takes them on one device")
        # Streams, the capture and the replay work on the current device: make it the inputs' (a model on cuda:1
        # without torch.cuda.set_device).
        with torch.cuda.device(inputs[0].device) if inputs else contextlib.nullcontext():
            return self._call(inputs)

    def _call(self, inputs) -> torch.Tensor:
        self.calls += 1
        if self.calls <= self.warmup:
            if self.stream is None:  # one side stream for every eager step: blocks cached on it are reused
                self.stream = torch.cuda.Stream()
            stream = self.stream
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                loss = self._step(inputs)
            torch.cuda.current_stream().wait_stream(stream)
            return loss
        if self.static_inputs is None:
            self.static_inputs = [t.detach().clone() for t in inputs]
        else:
            self._check_inputs(inputs)
        if self.graph is not None and self.fingerprint != self._addresses():
            self.graph = None  # a parameter moved: capture again
        if self.graph is not None:
            self._check_hyperparameters()
        for s, t in zip(self.static_inputs, inputs):
            s.copy_(t)
        if self.graph is None:
            self._capture()
        self.graph.replay()
        return self.static_loss
