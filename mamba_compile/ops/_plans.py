"""Launch plans: an eager call of a multi-kernel Triton pipeline, replayed from a record of what it launched.

Where an eager call's GPU work is short, its host time is the call's time, and most of that host time is Python
between the launches: block sizes and grids worked out from the shapes, allocations, the launch functions' own
bookkeeping. For the SSD scan on the GPU machine's host (session 37, ssd_host --pieces, the bare pipelines) that
was 0.21-0.25 ms a forward (three kernels) and 0.74-0.87 ms a backward (about ten), where the GPU takes 0.18 ms for
the forward and 0.77 ms for the forward+backward at the benchmark shape (CUDA graphs, bench_ssd). Yet for
a given key (each tensor's dtype, shape, strides and address modulo 16, the other arguments, the settings) the
pipeline always makes the same launches, with the same integer arguments, into buffers of the same sizes: only
the addresses change.

So ``PlanCache.run`` runs a key's first call as it is, records its second (``_Recording``: a TorchDispatchMode
that sees every torch op, and every launch intercepted), and replays the record from the third on (``Plan``):
allocate each buffer before the launch that first uses it, call each kernel's launcher with the addresses of this
call's inputs and buffers, drop each buffer after its last use, return the outputs. A record is kept only where
replaying it is the pipeline: every torch op between the launches allocated or viewed (anything that computes, or
reads a value on the host, makes the key unplanned), every launch went through FastLauncher's fast path (or the
Triton interpreter, for the tests on CPU) on the current device and stream, and every pointer a launch took lies
in an input or in a buffer the call allocated. A key that fails any of these runs as it is, at every call
(``NoPlan`` holds why).

Each compiled launch replays the binary FastLauncher found for the recorded launch, which is the one Triton picks
for the key: its specialisation (dtypes, 16-byte alignment, integers equal to 1 or divisible by 16, constexprs) is
a function of the key, the buffers coming from an allocator that aligns them alike at every call. A plan holds no
tensor. The record keeps every buffer of its call alive to the call's end (so that no two share an address): a
one-time peak of the call's intermediates summed, where the pipeline reuses their memory as it goes.
"""

from __future__ import annotations

import contextvars

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten
_ALLOCATIONS = frozenset({_aten.empty.memory_format, _aten.empty_strided.default, _aten.empty_like.default,
                          _aten.new_empty.default, _aten.new_empty_strided.default})
_recording: contextvars.ContextVar[_Recording | None] = contextvars.ContextVar("mamba_compile_plan_recording",
                                                                               default=None)

# Where a launch argument or an output comes from: an input of the call, a buffer the call allocates (by its index
# in the plan), or nothing (an empty tensor: a null pointer).
_INPUT, _BUFFER, _NULL = 0, 1, 2


def recording() -> _Recording | None:
    """The plan being recorded on this thread, if any: a pipeline's launch functions pass their launches through
    its ``launcher``."""
    return _recording.get()


def plan_key(tag, args) -> tuple:
    """The key of a call of a pipeline on ``args`` (tensors, None and scalars): ``tag`` (the pipeline and the
    settings it reads) and, for each tensor, what its launches specialise on."""
    return (tag, *[(a.dtype, a.shape, a.stride(), a.data_ptr() & 15, a.device) if isinstance(a, torch.Tensor) else a
                   for a in args])


class NoPlan:
    """A key whose calls run as they are, and why."""

    __slots__ = ("reason",)

    def __init__(self, reason: str):
        self.reason = reason


_SEEN = NoPlan("first call")


class PlanCache:
    """Plans by key (``plan_key``), at most ``max_plans`` (then it starts again)."""

    def __init__(self, max_plans: int = 256):
        self.plans: dict = {}
        self.max_plans = max_plans

    def clear(self) -> None:
        self.plans.clear()

    def run(self, key, fn, args: tuple, record=None):
        """``fn(*args)``, a pipeline's eager call: as it is for the key's first call, recorded by its second
        (through ``record(*args)`` where given: the same pipeline, restricted to what a plan can replay), replayed
        from its plan after that."""
        plan = self.plans.get(key)
        if type(plan) is Plan:
            if plan.ready():
                return plan.replay(args)
            return fn(*args)
        if plan is None:
            if len(self.plans) >= self.max_plans:
                self.plans.clear()
            self.plans[key] = _SEEN
            return fn(*args)
        if plan is not _SEEN:  # NoPlan
            return fn(*args)
        self.plans[key], out = _record(record or fn, args)
        return out


def _record(fn, args: tuple):
    """(Plan or NoPlan, the outputs of ``fn(*args)``)."""
    rec = _Recording(args)
    token = _recording.set(rec)
    try:
        with rec.mode:
            out = fn(*args)
    finally:
        _recording.reset(token)
    try:
        return rec.plan(out), out
    finally:
        rec.release()


class _Mode(TorchDispatchMode):
    """Sees the torch ops a recorded call runs between its launches: keeps the tensors each allocation makes (alive
    to the end of the record, so no two buffers share an address), and names the first op that is neither an
    allocation nor a view."""

    def __init__(self):
        super().__init__()
        self.buffers: list = []
        self.unplannable: str | None = None
        self.in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # Not the launch's: the Triton interpreter's own copies. Not the call's: meta tensors (the first call of a
        # configuration runs the pipelines on them to find the kernels to compile ahead).
        if not self.in_launch and not (isinstance(out, torch.Tensor) and out.is_meta):
            if func in _ALLOCATIONS:
                self.buffers.append(out)
            elif not func.is_view and self.unplannable is None:
                self.unplannable = f"torch op {func}"
        return out


class _RecordingLauncher:
    __slots__ = ("rec", "kernel", "real")

    def __init__(self, rec: _Recording, kernel, real):
        self.rec, self.kernel, self.real = rec, kernel, real

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            mode = self.rec.mode
            mode.in_launch = True
            try:
                out = self.real[grid](*args, **kwargs)
            finally:
                mode.in_launch = False
            self.rec.add_launch(self.kernel, self.real, grid, args, kwargs)
            return out

        return run


class _Recording:
    """What one call of a pipeline launched, and from where each pointer came."""

    def __init__(self, args: tuple):
        self.args = args
        self.mode = _Mode()
        self.launches: list = []
        self.unplannable: str | None = None
        x = next(a for a in args if isinstance(a, torch.Tensor))
        self.device = x.device
        self.cuda = x.is_cuda
        if self.cuda:
            if x.get_device() != torch.cuda.current_device():
                self.unplannable = "the inputs are not on the current device"
            self.stream = torch._C._cuda_getCurrentRawStream(x.get_device())

    def launcher(self, kernel, real):
        """``real`` (``launcher(kernel, wrap)``), its launches recorded."""
        return _RecordingLauncher(self, kernel, real)

    def add_launch(self, kernel, real, grid, args, kwargs) -> None:
        if self.unplannable is not None:
            return
        if not isinstance(grid, tuple) or not all(type(g) is int for g in grid):
            self.unplannable = f"a grid that is not a tuple of ints: {grid!r}"
        elif self.cuda:
            from ._triton import FastLauncher, fast_entry  # not at import: it imports triton

            entry = fast_entry(kernel, args, kwargs) if isinstance(real, FastLauncher) else None
            if entry is None:
                self.unplannable = f"{kernel.fn.__name__} launched outside FastLauncher's fast path"
            elif torch._C._cuda_getCurrentRawStream(self.device.index) != self.stream:
                self.unplannable = f"{kernel.fn.__name__} launched on another stream"
            elif any(isinstance(a, torch.Tensor) and a.device != self.device for a in args):
                self.unplannable = f"{kernel.fn.__name__} launched with a tensor on another device"
            else:
                self.launches.append((kernel, grid, args, entry))
        elif real is kernel:  # the Triton interpreter: launched as it is, tensors and all
            if any(isinstance(v, torch.Tensor) for v in kwargs.values()):
                self.unplannable = "a tensor passed by keyword"
            else:
                self.launches.append((kernel, grid, args, kwargs))
        else:
            self.unplannable = f"a launch of {kernel} that is neither compiled nor interpreted"

    def release(self) -> None:
        self.mode.buffers.clear()
        self.launches.clear()
        self.args = ()

    def plan(self, out):
        """A Plan of the recorded call, whose outputs were ``out``, or a NoPlan saying why not."""
        reason = self.unplannable or self.mode.unplannable
        if reason is None and not isinstance(out, (tuple, list)):
            reason = "outputs that are not a tuple or list of tensors"
        if reason is None:
            try:
                return Plan(self, out)
            except _Unplannable as e:
                reason = str(e)
            except Exception as e:  # noqa: BLE001 (the call's outputs are made: a record that fails only costs its plan)
                reason = f"the record failed: {type(e).__name__}: {e}"
        return NoPlan(reason)


class _Unplannable(Exception):
    pass


class Plan:
    """The launches of one recorded call (see the module docstring), replayed by ``replay``."""

    def __init__(self, rec: _Recording, out):
        self.device = rec.device
        self.cuda = rec.cuda
        self._inputs = [(i, a) for i, a in enumerate(rec.args) if isinstance(a, torch.Tensor)]
        self._buffers = rec.mode.buffers
        self._by_storage = {}
        for j, b in enumerate(self._buffers):
            if b.untyped_storage().nbytes():
                self._by_storage[b.untyped_storage().data_ptr()] = j
        self.steps = []  # (how it launches, [(position, source, index, offset or view)], template, allocations, frees)
        first, last = {}, {}
        for k, (kernel, grid, args, extra) in enumerate(rec.launches):
            template, pointers = list(args), []
            for pos, a in enumerate(args):
                if isinstance(a, torch.Tensor):
                    source, index, where = self._source(a)
                    pointers.append((pos, source, index, where))
                    template[pos] = None
                    if source == _BUFFER:
                        first.setdefault(index, k)
                        last[index] = k
            if self.cuda:
                compiled, tail = extra
                n = len(grid)
                how = (compiled.run, (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1), compiled.function,
                       compiled.packed_metadata, tuple(tail))
            else:
                how = (kernel, grid, extra)
            self.steps.append([how, pointers, template, [], []])
        self.outputs = []
        kept = set()
        for t in out:
            if not isinstance(t, torch.Tensor):
                raise _Unplannable(f"an output that is not a tensor: {type(t).__name__}")
            same = [i for i, a in self._inputs if a is t]
            if same:
                self.outputs.append((_INPUT, same[0], None))
                continue
            source, index, where = self._source(t)
            self.outputs.append((source, index, where))
            if source == _BUFFER:
                kept.add(index)
        self.buffer_specs = [(tuple(b.shape), b.stride(), b.dtype) for b in self._buffers]
        for j in range(len(self._buffers)):
            if j in first:
                self.steps[first[j]][3].append(j)
                if j not in kept:
                    self.steps[last[j]][4].append(j)
        self.unlaunched = [j for j in kept if j not in first]  # outputs no launch writes (empty ones, say)
        self.kernels = tuple({id(k): k for k, *_ in rec.launches}.values())
        self.nbuffers = len(self._buffers)
        del self._inputs, self._buffers, self._by_storage  # a plan holds no tensor

    def _source(self, t: torch.Tensor):
        """(_INPUT, the input's position, where) or (_BUFFER, the buffer's index, where) or (_NULL, None, the empty
        tensor's shape and dtype): where is (byte offset, shape, strides, storage offset) from the input's or the
        buffer's start, in its dtype."""
        if t.untyped_storage().nbytes() == 0:
            return _NULL, None, (tuple(t.shape), t.stride(), t.dtype)
        storage = t.untyped_storage().data_ptr()
        j = self._by_storage.get(storage)
        if j is not None:
            return _BUFFER, j, self._where(t, self._buffers[j])
        sharing = [(i, a) for i, a in self._inputs if a.untyped_storage().data_ptr() == storage]
        exact = [(i, a) for i, a in sharing if a.data_ptr() == t.data_ptr()]
        if len(exact) == 1 or (not exact and len(sharing) == 1):
            i, a = (exact or sharing)[0]
            return _INPUT, i, self._where(t, a)
        if exact:
            raise _Unplannable("a pointer into two inputs that share an address")
        if sharing:
            raise _Unplannable("a pointer into inputs that share a storage")
        raise _Unplannable("a pointer to a tensor from outside the call")

    @staticmethod
    def _where(t: torch.Tensor, base: torch.Tensor):
        if t.dtype != base.dtype:
            raise _Unplannable(f"a {t.dtype} view of a {base.dtype} tensor")
        offset = t.storage_offset() - base.storage_offset()
        return t.data_ptr() - base.data_ptr(), tuple(t.shape), t.stride(), offset

    def ready(self) -> bool:
        """Whether a replay is the launch the pipeline would make: no launch hook (a profiler) or pre-run hook
        installed, and the inputs on the current device."""
        if not self.cuda:
            return True
        from triton import knobs

        rt = knobs.runtime
        return (not (rt.launch_enter_hook.calls or rt.launch_exit_hook.calls)
                and not any(k.pre_run_hooks for k in self.kernels)
                and self.device.index == torch.cuda.current_device())

    def replay(self, args: tuple) -> list:
        buffers = [None] * self.nbuffers
        specs, device = self.buffer_specs, self.device
        if self.cuda:
            stream = torch._C._cuda_getCurrentRawStream(device.index)
        for (how, pointers, template, allocations, frees) in self.steps:
            for j in allocations:
                size, stride, dtype = specs[j]
                buffers[j] = torch.empty_strided(size, stride, dtype=dtype, device=device)
            call = template.copy()
            if self.cuda:
                for pos, source, index, where in pointers:
                    call[pos] = (args[index].data_ptr() + where[0] if source == _INPUT
                                 else buffers[index].data_ptr() + where[0] if source == _BUFFER else 0)
                run, grid, function, metadata, tail = how
                run(*grid, stream, function, metadata, None, None, None, *call, *tail)
            else:
                for pos, source, index, where in pointers:
                    call[pos] = self._tensor(args, buffers, source, index, where)
                kernel, grid, kwargs = how
                kernel[grid](*call, **kwargs)
            for j in frees:
                buffers[j] = None
        for j in self.unlaunched:
            size, stride, dtype = specs[j]
            buffers[j] = torch.empty_strided(size, stride, dtype=dtype, device=device)
        return [args[index] if where is None else self._tensor(args, buffers, source, index, where)
                for source, index, where in self.outputs]

    def _tensor(self, args, buffers, source, index, where):
        if source == _NULL:
            size, stride, dtype = where
            return torch.empty_strided(size, stride, dtype=dtype, device=self.device)
        base = args[index] if source == _INPUT else buffers[index]
        _, size, stride, offset = where
        if offset == 0 and base.shape == size and base.stride() == stride:
            return base
        return base.as_strided(size, stride, base.storage_offset() + offset)
