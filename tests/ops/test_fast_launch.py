"""_triton.FastLauncher: which launches take Triton's path and which its own, and that its launches of the SSD's
eager pipeline equal Triton's on the GPU, with inputs aligned and not."""

from __future__ import annotations

import contextlib
import importlib
from types import SimpleNamespace

import pytest
import torch

triton = pytest.importorskip("triton")
_triton = importlib.import_module("mamba_compile.ops._triton")
knobs = pytest.importorskip("triton.knobs")


class _Compiled:
    """A compiled kernel: records what its launcher gets."""

    def __init__(self, name):
        self.name, self.function, self.packed_metadata, self.launches = name, f"fn-{name}", f"md-{name}", []

    def run(self, *args):
        self.launches.append(args)


class _Kernel:
    """A JITFunction as fast_run uses it: parameters x, n and the constexpr BLOCK (default 16); a binder
    specialising ints (1, divisible by 16) and tensors (dtype, 16-byte alignment) as Triton does; run() compiling
    one _Compiled per specialisation and options, as Triton's cache does."""

    debug = False

    def __init__(self):
        self.pre_run_hooks, self.jit_runs, self.compiled = [], [], {}
        self.params = [SimpleNamespace(name=n, is_constexpr=n == "BLOCK") for n in ("x", "n", "BLOCK")]
        self.device_caches = {0: ({}, {}, None, None, self._bind)}

    @staticmethod
    def _spec(a):
        if isinstance(a, torch.Tensor):
            return (str(a.dtype), "D" if a.data_ptr() % 16 == 0 else None)
        if isinstance(a, bool):
            return ("u1", None)
        if not isinstance(a, int):
            return (type(a).__name__, None)
        return ("i32", "1" if a == 1 else "D" if a % 16 == 0 else None)

    def _bind(self, x, n, BLOCK=16, **options):
        bound = {"x": x, "n": n, "BLOCK": BLOCK}
        return bound, [self._spec(x), self._spec(n), ("constexpr", BLOCK)], options

    def run(self, *args, grid, warmup, **kwargs):
        bound, spec, options = self._bind(*args, **kwargs)
        key = str(spec) + str(options)
        self.jit_runs.append((grid, key))
        return self.compiled.setdefault(key, _Compiled(key))


@pytest.fixture
def no_cuda(monkeypatch):
    """fast_run asks torch for the current CUDA device and stream: answered here without a GPU."""
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda device: 1234, raising=False)


def test_fast_run_relaunches_the_binary_triton_picked_for_the_same_arguments(no_cuda):
    k = _Kernel()
    x = torch.randn(64)
    first = _triton.fast_run(k, (4, 2), x, 32, BLOCK=64, num_warps=4)
    assert len(k.jit_runs) == 1 and not first.launches  # compiled and launched by Triton's path
    y = torch.randn(64)
    again = _triton.fast_run(k, (4, 2), y, 32, BLOCK=64, num_warps=4)  # another tensor, same dtype and alignment
    assert again is first and len(k.jit_runs) == 1
    (launch,) = first.launches
    assert launch[:9] == (4, 2, 1, 1234, first.function, first.packed_metadata, None, None, None)
    assert launch[9] is y and launch[10:] == (32, 64)  # the positional arguments, then the constexpr
    _triton.fast_run(k, (3,), x, 32)  # BLOCK's default, which the launcher gets too
    _triton.fast_run(k, (3,), y, 32)
    assert k.compiled[k.jit_runs[-1][1]].launches[0][9:] == (y, 32, 16)


def test_fast_run_keys_on_everything_triton_specialises_on(no_cuda, monkeypatch):
    """Each of these launches differs from the first in one thing Triton's binary depends on: each must take
    Triton's path (which then picks the binary), never relaunch the first's binary."""
    k = _Kernel()
    x = torch.randn(64)
    first = _triton.fast_run(k, (4,), x, 32, BLOCK=64, num_warps=4)
    variants = [
        lambda: _triton.fast_run(k, (4,), x, 1, BLOCK=64, num_warps=4),  # an int equal to 1
        lambda: _triton.fast_run(k, (4,), x, 33, BLOCK=64, num_warps=4),  # not divisible by 16
        lambda: _triton.fast_run(k, (4,), x, True, BLOCK=64, num_warps=4),  # a bool where an int was
        lambda: _triton.fast_run(k, (4,), x, 32.0, BLOCK=64, num_warps=4),  # a float equal to the int
        lambda: _triton.fast_run(k, (4,), x[1:], 32, BLOCK=64, num_warps=4),  # a pointer off 16 bytes
        lambda: _triton.fast_run(k, (4,), x.double(), 32, BLOCK=64, num_warps=4),  # another dtype
        lambda: _triton.fast_run(k, (4,), x, 32, BLOCK=32, num_warps=4),  # another constexpr
        lambda: _triton.fast_run(k, (4,), x, 32, BLOCK=64, num_warps=8),  # another launch option
    ]
    for i, launch in enumerate(variants):
        launch()
        assert len(k.jit_runs) == i + 2 and not first.launches, i
    with monkeypatch.context() as m:
        m.setattr(knobs.runtime, "debug", True)  # Triton's debug knob: device-side assertions
        _triton.fast_run(k, (4,), x, 32, BLOCK=64, num_warps=4)
    assert len(k.jit_runs) == len(variants) + 2 and not first.launches
    # and each of them is launched directly the second time
    misaligned = _triton.fast_run(k, (5,), x[1:], 32, BLOCK=64, num_warps=4)
    assert len(k.jit_runs) == len(variants) + 2
    assert misaligned is not first and misaligned.launches[0][:3] == (5, 1, 1)
    assert misaligned.launches[0][9].data_ptr() % 16 != 0


def test_fast_run_leaves_to_triton_what_it_cannot_key(no_cuda):
    k = _Kernel()
    x = torch.randn(64)
    compiled = _triton.fast_run(k, (4,), x, 32)
    _triton.fast_run(k, lambda meta: (4,), x, 32)  # a grid function
    hook = lambda *a: None  # noqa: E731
    knobs.runtime.launch_enter_hook.add(hook)
    try:
        _triton.fast_run(k, (4,), x, 32)
    finally:
        knobs.runtime.launch_enter_hook.remove(hook)
    k.pre_run_hooks.append(hook)
    _triton.fast_run(k, (4,), x, 32)
    k.pre_run_hooks.clear()
    _triton.fast_run(k, (4,), x, [32])  # unhashable
    _triton.fast_run(k, (4,), x, n=32)  # runtime arguments by keyword
    _triton.fast_run(k, (4,), x=x, n=32)
    _triton.fast_run(k, (4,), x=x, n=32)
    assert len(k.jit_runs) == 8 and not compiled.launches
    _triton.fast_run(k, (4,), x, 32)
    assert len(k.jit_runs) == 8 and len(compiled.launches) == 1


def test_launches_run_on_the_device_of_their_first_tensor(no_cuda, monkeypatch):
    """A launch whose first tensor argument is on another CUDA device than the current one runs inside
    torch.cuda.device(that device), on that device's stream, through fast_run and device_run alike; on the current
    device, or with CPU tensors (the interpreter), nothing is switched. Devices simulated: no GPU here."""
    current, entered, seen = [0], [], []

    @contextlib.contextmanager
    def device(d):
        entered.append(d)
        old, current[0] = current[0], d
        try:
            yield
        finally:
            current[0] = old

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch._C, "_cuda_getCurrentRawStream", lambda d: 1000 + d, raising=False)
    on = {"device": 1}
    monkeypatch.setattr(_triton, "_launch_device", lambda args: on["device"])
    k = _Kernel()
    k.device_caches[1] = k.device_caches[0]
    run = k.run
    k.run = lambda *a, **kw: seen.append(current[0]) or run(*a, **kw)
    x = torch.randn(64)
    compiled = _triton.fast_run(k, (4,), x, 32)  # Triton's path the first time, on device 1
    _triton.fast_run(k, (4,), x, 32)  # the binary's launcher, with device 1's stream
    assert seen == [1] and entered == [1, 1] and current == [0]
    assert compiled.launches[0][3] == 1001
    on["device"] = 0
    _triton.fast_run(k, (4,), x, 32)  # the current device: its own key, Triton's path once, then the launcher
    _triton.fast_run(k, (4,), x, 32)
    assert seen == [1, 0] and entered == [1, 1] and compiled.launches[1][3] == 1000

    class Plain:  # kernel[grid](...) as Triton's JITFunction takes it
        def __getitem__(self, grid):
            return lambda *a, **kw: seen.append((grid, current[0]))

    on["device"] = 1
    _triton.device_run(Plain(), (2,), x, 32)
    on["device"] = -1  # a CPU tensor first
    _triton.device_run(Plain(), (3,), x, 32)
    assert seen[-2:] == [((2,), 1), ((3,), 0)] and entered == [1, 1, 1]
    monkeypatch.undo()
    assert _triton._launch_device((3, torch.randn(2), 4)) == -1 and _triton._launch_device((3, 4.0)) == -1


def _copy(x_ptr, y_ptr, n):  # a kernel for the launcher test (never launched)
    pass


def test_launcher_goes_fast_only_where_nothing_traces_the_launch(monkeypatch):
    """Direct launches and an op's eager launches (torch's triton_op turns wrap_triton off for those) get
    fast_run; a traced launch (wrap_triton on) gets wrap_triton's; FAST_LAUNCH off, an unchecked Triton or an
    interpreted kernel get what they got before FastLauncher."""
    from torch._library.triton import set_wrap_triton_enabled
    from torch.library import wrap_triton

    kernel = triton.runtime.jit.JITFunction(_copy)  # compiled, even where the tests run the Triton interpreter
    wrapped = type(wrap_triton(kernel))
    monkeypatch.setattr(_triton, "_fast_launch_supported", lambda: True)
    direct = _triton.launcher(kernel, wrap=False)[(3,)]
    assert direct.func is _triton.fast_run and direct.args == (kernel, (3,))
    in_op = _triton.launcher(kernel, wrap=True)
    with set_wrap_triton_enabled(False):
        eager = in_op[(1,)]
    assert eager.func is _triton.fast_run and eager.args == (kernel, (1,))
    assert isinstance(in_op[(1,)], wrapped)  # wrap_triton on: what tracing needs
    for switch, value in (("FAST_LAUNCH", False), ("_fast_launch_supported", lambda: False)):
        with monkeypatch.context() as m:
            m.setattr(_triton, switch, value)
            direct = _triton.launcher(kernel, wrap=False)[(3,)]  # Triton's launch, on the tensors' device
            assert direct.func is _triton.device_run and direct.args == (kernel, (3,))
            in_op = _triton.launcher(kernel, wrap=True)
            assert isinstance(in_op[(1,)], wrapped)
            with set_wrap_triton_enabled(False):
                eager = in_op[(1,)]
            assert eager.func is _triton.device_run and eager.args == (kernel, (1,))
    interpreted = triton.runtime.interpreter.InterpretedFunction(_copy)
    assert _triton.launcher(interpreted, wrap=False) is interpreted
    assert type(_triton.launcher(interpreted, wrap=True)) is type(wrap_triton(interpreted))


@pytest.mark.gpu
@pytest.mark.parametrize("offset", [0, 1], ids=["aligned", "misaligned"])
def test_cuda_eager_ssd_fast_launches_equal_tritons(offset, monkeypatch):
    """The SSD's eager shortcut with fast launches against Triton's own path, bit for bit, forward and backward,
    after a call on aligned inputs has cached its binaries; with offset 1, x, z and B start 2 bytes past an
    aligned address, which Triton specialises differently (a binary built for aligned pointers would read
    misaligned vectors)."""
    from mamba_compile.ops import ssd_chunk_scan
    from mamba_compile.ops import ssd_triton as kt

    if not _triton._fast_launch_supported():
        pytest.skip(f"FastLauncher is not used with triton {triton.__version__}")
    g = torch.Generator(device="cuda").manual_seed(5)
    b, l, h, p, n = 2, 300, 4, 32, 64

    def rnd(*shape, extra=0):
        flat = torch.randn(extra + torch.Size(shape).numel(), generator=g, device="cuda").to(torch.bfloat16)
        return flat[extra:].view(shape)

    def inputs(extra):
        t = dict(x=rnd(b, l, h, p, extra=extra), dt=rnd(b, l, h), B=rnd(b, l, 1, n, extra=extra),
                 C=rnd(b, l, 1, n), z=rnd(b, l, h, p, extra=extra))
        t.update(A=-(torch.rand(h, generator=g, device="cuda") + 0.5), D=torch.randn(h, generator=g, device="cuda"))
        return {k: v.requires_grad_() for k, v in t.items()}

    def run(t, dout):
        for v in t.values():
            v.grad = None
        out = ssd_chunk_scan(t["x"], t["dt"], t["A"], t["B"], t["C"], 64, D=t["D"], z=t["z"], dt_softplus=True)
        out.backward(dout)
        return [out.detach().clone()] + [t[k].grad.clone() for k in sorted(t)]

    warm = inputs(0)
    run(warm, torch.randn_like(warm["x"]))  # fast launchers cache the aligned binaries
    t = inputs(offset)
    assert (t["x"].data_ptr() % 16 != 0) == bool(offset)
    dout = torch.randn_like(t["x"])
    fast = run(t, dout)
    assert kt._chunk_scan_fwd_kernel.__dict__.get("_mamba_compile_fast")  # the fast path did launch
    monkeypatch.setattr(_triton, "FAST_LAUNCH", False)
    slow = run(t, dout)
    for a, r in zip(fast, slow):
        assert torch.equal(a, r)
