"""Triton import guard and launch helpers shared by the kernel modules.

Kernels are launched through ``torch.library.wrap_triton`` inside the ops, so that Dynamo,
``torch.export`` and AOTInductor see and compile them. Tests launch the same kernels
directly (``wrap=False``), which is how they run under the Triton interpreter on CPU.
Launches that nothing traces (an op's eager call on plain tensors, direct launches) go
through ``FastLauncher``, which relaunches the binary Triton picked for the same arguments
without Triton's per-launch bookkeeping.

Programmatic dependent launch (Hopper and later). The decode kernels (decode_norm_in,
decode_norm_head, the decode state updates, decode_linear) take a ``PDL`` constexpr. With it
they read what no earlier kernel of the step writes (weights, and the layer's own SSM state),
then wait for the previous kernel of the stream to finish (``gdc_wait``), then let the next
kernel launch (``gdc_launch_dependents``). Launched with ``launch_pdl``, the next kernel's
programs then start, and issue their weight loads, while this one runs. Because every such
kernel signals only after its own wait, at most two kernels overlap: a kernel's reads before
its wait race only with the kernel just before it, which never writes those tensors.
``dependent_launches()`` turns this on for eager launches (a CUDA-graph capture of the decode
step); traced and compiled calls never use it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
import sys

import torch

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # CPU-only platforms without triton: the torch paths still work.
    triton = None
    tl = None
    HAS_TRITON = False

_DEPENDENT_LAUNCHES = contextvars.ContextVar("mamba_compile_dependent_launches", default=False)


def cdiv(a, b):
    """triton.cdiv for host code. Triton's cdiv and next_power_of_2 are constexpr functions, whose calls from host
    code convert every argument: about 5 us a call on the GPU machine's host (torch 2.11, triton 3.6), some forty
    calls in an eager SSD forward+backward. Same results, SymInts included (Triton's body)."""
    return (a + b - 1) // b


def next_pow2(n):
    """triton.next_power_of_2 for host code (see cdiv); anything but a positive int goes to Triton's."""
    return 1 << (n - 1).bit_length() if type(n) is int and n > 0 else triton.next_power_of_2(n)


def launcher(kernel, wrap: bool = True):
    """``kernel`` for ``launcher(kernel, wrap)[grid](*args, **kwargs)``: inside a triton_op (``wrap=True``),
    wrapped by ``torch.library.wrap_triton``, so that tracing sees the launch; for direct launches (the SSD's eager
    shortcut, and the tests under the Triton interpreter) as it is. A compiled kernel launched for real, with
    ``FAST_LAUNCH`` on and a Triton FastLauncher has been checked with, goes through FastLauncher: direct
    launches, and the launches of an op called eagerly on plain tensors (where torch's triton_op turns
    wrap_triton off and launches the kernel itself).

    Every launch that nothing traces runs on the device of its first tensor argument (see ``device_run``);
    traced launches get their device from Inductor's code."""
    if not HAS_TRITON:
        raise RuntimeError("this op's CUDA path needs triton, which is not installed")
    interp = sys.modules.get("triton.runtime.interpreter")  # never imported: no kernel is interpreted
    interpreted = interp is not None and isinstance(kernel, interp.InterpretedFunction)
    fast = FAST_LAUNCH and _fast_launch_supported() and isinstance(kernel, triton.runtime.jit.JITFunction)
    if wrap:
        from torch.library import wrap_triton

        if not _SOURCES_REGISTERED:
            register_kernel_sources()
        return wrap_triton(kernel) if interpreted else _OpLauncher(kernel, fast)
    if interpreted:  # CPU tensors: no device to choose
        return kernel
    return FastLauncher(kernel) if fast else _DeviceLauncher(kernel)


def _launch_device(args) -> int:
    """The CUDA device index of a launch's first tensor argument; -1 when that is not a CUDA tensor (or there is
    none)."""
    for a in args:
        if isinstance(a, torch.Tensor):
            return a.get_device()
    return -1


def _on_launch_device(run):
    """``run(kernel, grid, *args, **kwargs)``, a launch, made to launch on the device of its first tensor argument.
    Triton launches on the current device, whatever the tensors' device: a model on cuda:1 in a process whose current
    device is cuda:0 (``model.to("cuda:1")`` without ``torch.cuda.set_device``) would have its kernels run on cuda:0,
    reading cuda:1's memory, unordered with cuda:1's stream, or fail with an illegal address."""

    @functools.wraps(run)
    def launch(kernel, grid, *args, **kwargs):
        dev = _launch_device(args)
        if dev >= 0 and dev != torch.cuda.current_device():
            with torch.cuda.device(dev):
                return run(kernel, grid, *args, **kwargs)
        return run(kernel, grid, *args, **kwargs)

    return launch


@_on_launch_device
def device_run(kernel, grid, *args, **kwargs):
    """``kernel[grid](*args, **kwargs)`` on the device of the first tensor argument (see _on_launch_device)."""
    return kernel[grid](*args, **kwargs)


class _DeviceLauncher:
    """``kernel[grid](...)`` through device_run: direct launches without FastLauncher."""

    __slots__ = ("kernel",)

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return functools.partial(device_run, self.kernel, grid)


# Launches of compiled kernels outside tracing go through FastLauncher when True. Probes switch it.
FAST_LAUNCH = True
# The Triton versions whose JITFunction.run FastLauncher repeats (its binder, compiled-kernel cache and launcher call
# were read in that version's source, and the GPU tests ran with it): any other launches through Triton's own path.
_FAST_LAUNCH_TRITON = ("3.6.",)


@functools.cache
def _fast_launch_supported() -> bool:
    if not any(triton.__version__.startswith(v) for v in _FAST_LAUNCH_TRITON):
        return False
    from triton import knobs
    from triton.runtime.jit import JITFunction

    try:
        from torch._library.triton import is_wrap_triton_enabled  # noqa: F401
    except ImportError:
        return False
    return (hasattr(JITFunction, "create_binder") and hasattr(knobs.runtime.launch_enter_hook, "calls")
            and hasattr(knobs.runtime.launch_exit_hook, "calls"))


class _OpLauncher:
    """``wrap_triton(kernel)`` for a triton_op's launch, except where torch would launch the kernel itself
    (wrap_triton turned off: the op's eager call on plain tensors): there FastLauncher launches it when ``fast``,
    else device_run (torch's own launch would use the current device, not the tensors')."""

    __slots__ = ("kernel", "fast")

    def __init__(self, kernel, fast: bool):
        self.kernel, self.fast = kernel, fast

    def __getitem__(self, grid):
        from torch._library.triton import is_wrap_triton_enabled
        from torch.library import wrap_triton

        if is_wrap_triton_enabled():
            return wrap_triton(self.kernel)[grid]
        return functools.partial(fast_run if self.fast else device_run, self.kernel, grid)


class FastLauncher:
    """``kernel[grid](*args, **kwargs)`` for a compiled Triton kernel with less host work than Triton's
    ``JITFunction.run``, which an eager call of a multi-kernel op pays at every launch: 20-60 us on the GPU
    machine's host for this package's kernels of 7-76 arguments, about half of it in the binder that specialises
    the arguments (benchmarks/probes/launch_overhead.py).

    How: a launch's key is its arguments themselves, each int as it is, each tensor as its dtype and its address
    modulo 16, anything else as its type and value, with the keyword arguments (constexprs and launch options),
    the device and Triton's debug knobs. Triton's specialisation (dtypes, 16-byte alignment of pointers, integers
    equal to 1 or divisible by 16, their range, the constexpr values, the options) is a function of that key, so
    a key seen before names the binary Triton would pick. The first launch of a key goes through
    ``JITFunction.run`` (which compiles or finds the binary), and the key then maps to that binary and to the
    argument values the launcher takes after the positional ones (constexprs and defaults, fixed by the key);
    later launches call the binary's launcher directly. Launches Triton's path keeps: while a launch hook or a
    pre-run hook is installed (profilers such as proton), grids given as functions, keys that cannot be hashed,
    and non-constexpr arguments given by keyword. Skipped at every launch: Triton's check that the
    kernel's global variables are unchanged (this package's kernels read none that change). The cache holds at
    most ``_FAST_CACHE_MAX`` keys a kernel (a new shape is a new key), then starts again."""

    __slots__ = ("kernel",)

    def __init__(self, kernel):
        self.kernel = kernel

    def __getitem__(self, grid):
        return functools.partial(fast_run, self.kernel, grid)


_FAST_CACHE_MAX = 4096


@_on_launch_device
def fast_run(kernel, grid, *args, **kwargs):
    """One launch of ``kernel`` (a JITFunction) over ``grid``, on its first tensor's device; see FastLauncher."""
    from triton import knobs

    rt = knobs.runtime
    if kernel.pre_run_hooks or rt.launch_enter_hook.calls or rt.launch_exit_hook.calls or callable(grid):
        return kernel.run(*args, grid=grid, warmup=False, **kwargs)
    runtime_params = kernel.__dict__.get("_mamba_compile_runtime_params")
    if runtime_params is None:
        runtime_params = kernel._mamba_compile_runtime_params = frozenset(
            p.name for p in kernel.params if not p.is_constexpr)
    if not runtime_params.isdisjoint(kwargs):  # a runtime argument by keyword (a tensor's would key on its id)
        return kernel.run(*args, grid=grid, warmup=False, **kwargs)
    device = torch.cuda.current_device()
    cache = kernel.__dict__.setdefault("_mamba_compile_fast", {})
    try:
        key = _fast_key(device, knobs, args, kwargs)
        entry = cache.get(key)
    except TypeError:  # an unhashable argument
        return kernel.run(*args, grid=grid, warmup=False, **kwargs)
    if entry is None:
        compiled = kernel.run(*args, grid=grid, warmup=False, **kwargs)
        if compiled is not None:  # None: a compile hook built nothing
            if len(cache) >= _FAST_CACHE_MAX:
                cache.clear()
            # the launcher's values after the positional ones: constexprs and defaults, fixed by the key
            cache[key] = compiled, tuple(kernel.device_caches[device][4](*args, **kwargs)[0].values())[len(args):]
        return compiled
    compiled, tail = entry
    n = len(grid)
    compiled.run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, torch._C._cuda_getCurrentRawStream(device),
                 compiled.function, compiled.packed_metadata, None, None, None, *args, *tail)
    return compiled


def fast_entry(kernel, args, kwargs):
    """(compiled kernel, the launcher's values after the positional arguments) that fast_run holds for a launch of
    ``kernel`` with ``args`` and ``kwargs`` on the current device, which it has made; None where it holds none (the
    launch went through Triton's own path). For launch plans (``_plans``), which replay the launcher call."""
    from triton import knobs

    cache = kernel.__dict__.get("_mamba_compile_fast")
    if cache is None:
        return None
    try:
        return cache.get(_fast_key(torch.cuda.current_device(), knobs, args, kwargs))
    except TypeError:
        return None


def _fast_key(device: int, knobs, args, kwargs) -> tuple:
    """FastLauncher's key of a launch (see there); TypeError where an argument cannot be hashed."""
    return (device, knobs.runtime.debug, knobs.compilation.instrumentation_mode, tuple(kwargs.items()),
            tuple([a if type(a) is int else (a.dtype, a.data_ptr() & 15) if isinstance(a, torch.Tensor)
                   else (type(a), a) for a in args]))


# The kernels each triton_op of this package can launch, by module (tests/ops/test_kernel_sources.py checks that
# every kernel of a module is listed and that the traced launches of the multi-kernel ops stay within their lists).
_SSD_FWD = ("_chunk_cumsum_fwd_kernel", "_chunk_state_fwd_kernel", "_chunk_state_passing_fwd_kernel", "_bmm_cb_kernel",
            "_chunk_scan_fwd_kernel")
OP_KERNELS = {
    "add_matmul": ("add_matmul_triton", ("_add_matmul_kernel",)),
    "causal_conv1d_fwd": ("causal_conv1d_triton", ("_causal_conv1d_fwd_kernel", "_causal_conv1d_fwd_pairs_kernel",
                                                   "_causal_conv1d_fwd_rows_kernel")),
    "causal_conv1d_bwd": ("causal_conv1d_triton", ("_causal_conv1d_bwd_dy_kernel", "_causal_conv1d_bwd_dx_kernel",
                                                   "_causal_conv1d_bwd_pairs_kernel", "_causal_conv1d_bwd_runs_kernel",
                                                   "_causal_conv1d_bwd_rows_kernel")),
    "causal_conv1d_update": ("causal_conv1d_triton", ("_causal_conv1d_update_kernel",)),
    "decode_linear": ("decode_linear_triton", ("_decode_linear_kernel",)),
    "decode_in": ("mamba1_decode_triton", ("_decode_in_fwd_kernel",)),
    "mamba1_decode_ssm": ("mamba1_decode_triton", ("_decode_ssm_fwd_kernel",)),
    "decode_norm_in": ("mamba1_decode_triton", ("_decode_norm_in_kernel",)),
    "decode_norm_head": ("mamba1_decode_triton", ("_decode_norm_in_kernel",)),
    "mamba2_decode_ssm": ("mamba2_decode_triton", ("_decode_ssm_fwd_kernel",)),
    "mamba2_decode_ssm_gated": ("mamba2_decode_triton", ("_decode_ssm_fwd_kernel",)),
    "add_norm": ("norms_triton", ("_add_norm_fwd_kernel",)),
    "add_norm_bwd": ("norms_triton", ("_add_norm_bwd_kernel",)),
    "rms_norm_gated": ("norms_triton", ("_rms_norm_gated_fwd_kernel",)),
    "rms_norm_gated_bwd": ("norms_triton", ("_rms_norm_gated_bwd_kernel",)),
    "selective_scan_fwd": ("selective_scan_triton", ("_bc_time_major_kernel", "_selective_scan_fwd_kernel")),
    "selective_scan_bwd": ("selective_scan_triton", ("_bc_time_major_kernel", "_selective_scan_bwd_kernel",
                                                     "_bwd_sums_kernel", "_selective_scan_fwd_kernel")),
    "selective_state_update": ("selective_state_update_triton", ("_state_update_fwd_kernel",)),
    "ssd_chunk_scan_fwd": ("ssd_triton", _SSD_FWD),
    "ssd_chunk_scan_bwd": ("ssd_triton", _SSD_FWD + ("_dt_bwd_kernel", "_state_passing_bwd_kernel",
                                                     "_chunk_state_passing_bwd_kernel",
                                                     "_chunk_scan_bwd_dz_kernel", "_gate_bwd_kernel",
                                                     "_gate_bwd_flat_kernel",
                                                     "_chunk_scan_bwd_dx_kernel", "_chunk_scan_bwd_dcb_kernel",
                                                     "_chunk_scan_bwd_dbc_kernel", "_sum_parts_kernel",
                                                     "_head_grads_kernel")),
}
_SOURCES_REGISTERED = False


def op_kernels(op: str) -> list:
    """The kernel objects (JITFunctions or autotuners) of ``OP_KERNELS[op]``."""
    import importlib

    module, names = OP_KERNELS[op]
    module = importlib.import_module(f"{__package__}.{module}")
    return [getattr(module, name) for name in names]


def register_kernel_sources() -> None:
    """Lists, in torch's table of a triton_op's kernels (``torch._library.triton.triton_ops_to_kernels``), the
    kernels each of this package's triton_ops can launch (``OP_KERNELS``).

    Why: torch.compile's AOTAutograd cache (on disk, on by default) keys a graph on its Dynamo graph, where a
    triton_op is one node, plus the source of the kernels that table lists for it. torch fills the table by
    reading the op's Python source for ``wrap_triton(name)`` calls, which finds none here (the ops launch through
    ``launcher`` in other modules), so a cache written by an older version of this package would replay that
    version's kernels after an upgrade. With them listed, any edit of a kernel, or of a helper it calls, is a
    cache miss. What the table cannot carry, the Python around the kernels (launch configurations, which kernel
    runs, the CPU code), is not covered: the README's note on compile caches says what to do. Runs once, at the
    first traced launch; with a torch whose table is gone it does nothing."""
    global _SOURCES_REGISTERED
    _SOURCES_REGISTERED = True
    import torch._library.triton as library_triton

    table = getattr(library_triton, "triton_ops_to_kernels", None)
    if not isinstance(table, dict):
        return
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    for op in OP_KERNELS:
        # Compiled kernels only: under the Triton interpreter (TRITON_INTERPRET=1) they are InterpretedFunctions,
        # without the source torch's key reads (and the kernels only run as Python there).
        kernels = [k for k in op_kernels(op) if isinstance(k.fn if isinstance(k, Autotuner) else k, JITFunction)]
        listed = list(table.get(f"mamba_compile::{op}", []))
        table[f"mamba_compile::{op}"] = listed + [k for k in kernels if all(k is not seen for seen in listed)]


def supports_dependent_launch(device: torch.device) -> bool:
    """Whether kernels on ``device`` can use programmatic dependent launch: a CUDA GPU of compute capability 9
    or more and a triton with the grid-dependency intrinsics."""
    device = torch.device(device)
    return (HAS_TRITON and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
            and hasattr(tl.extra.cuda, "gdc_wait"))


@contextlib.contextmanager
def dependent_launches(enabled: bool = True):
    """Within this block, eager launches of the decode kernels on a GPU that supports it use programmatic
    dependent launch (see the module docstring). Meant for CUDA-graph captures of the decode step: the
    kernel launched just before each decode kernel must not write that kernel's weights or state, which
    holds inside a step (a graph's first kernel, moreover, waits for all the work before the graph)."""
    token = _DEPENDENT_LAUNCHES.set(enabled)
    try:
        yield
    finally:
        _DEPENDENT_LAUNCHES.reset(token)


def dependent_launch_options(out: torch.Tensor) -> dict:
    """A decode kernel's ``PDL`` constexpr, with ``launch_pdl`` when it is on. ``out`` is a tensor the op has
    just allocated: a plain ``torch.Tensor`` in an eager call, a fake or functional one while the op is traced,
    where the option stays off (a traced kernel's launch options do not reach Inductor's launcher)."""
    if _DEPENDENT_LAUNCHES.get() and type(out) is torch.Tensor and supports_dependent_launch(out.device):
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


def ptxas_major(x: torch.Tensor) -> int | None:
    """Major version of the ptxas that will turn a kernel launched now on ``x`` into machine code, for the launch
    configurations whose timings depend on it (``selective_scan_triton.fwd_prefetch``); None off CUDA, without
    triton, or when no ptxas answers.

    An eager launch is built by Triton's JIT, which runs ``TRITON_PTXAS_PATH`` when that is set and its own ptxas
    otherwise. A launch being traced (``x`` fake) is built later by Inductor, for torch.compile and AOTInductor
    alike, and Inductor, when ``TRITON_PTXAS_PATH`` is unset, runs the ptxas that torch ships where it ships one (a
    CUDA 13 ptxas in torch 2.11's cu130 wheels, against Triton 3.6's 12.8): see ``_inductor_ptxas``."""
    if not HAS_TRITON or x.device.type != "cuda":
        return None
    path = os.environ.get("TRITON_PTXAS_PATH")
    if not path and torch._subclasses.fake_tensor.is_fake(x):
        path = _inductor_ptxas()
    return _ptxas_major_at(path)


@functools.cache
def _inductor_ptxas() -> str | None:
    """The ptxas Inductor sets for its compiles when ``TRITON_PTXAS_PATH`` is unset (None: Triton's own), found by
    running torch's ``_set_triton_ptxas_path`` (uncached) and taking back the variable it sets. Where it looks
    differs between torch versions (torch 2.11's cu130 wheel: ``torch/bin/ptxas``)."""
    fn = None
    for name in ("torch._inductor.runtime.compile_tasks", "torch._inductor.codecache"):
        try:
            fn = getattr(importlib.import_module(name), "_set_triton_ptxas_path")
            break
        except (ImportError, AttributeError):
            continue
    if fn is None or os.environ.get("TRITON_PTXAS_PATH") is not None:
        return None
    try:
        getattr(fn, "__wrapped__", fn)()
        return os.environ.get("TRITON_PTXAS_PATH")
    except Exception:
        return None
    finally:
        os.environ.pop("TRITON_PTXAS_PATH", None)


@functools.cache
def _ptxas_major_at(path: str | None) -> int | None:
    """Major version of the ptxas Triton runs given ``path`` (None: its own), as Triton resolves it (a path
    that does not answer falls back to its own)."""
    try:
        from triton import knobs

        tool = knobs.NvidiaTool.from_path(path) if path else None
        tool = tool or knobs.nvidia.ptxas
        return int(tool.version.split(".")[0])
    except Exception:  # an older triton without knobs, or no ptxas that runs here
        return None
