"""The kernels each triton_op lists in torch's table (``_triton.OP_KERNELS``), which the AOTAutograd cache key
hashes: without them a compile cache written by an older version of this package replays its kernels.

The ops run here on fake CUDA tensors (no GPU needed): their Python bodies pick and launch kernels exactly as
while torch.compile traces them, and a recording ``launcher`` notes which.
"""

from __future__ import annotations

import contextlib
import importlib
import pathlib

import pytest
import torch
from torch._subclasses import FakeTensorMode

from mamba_compile.ops import _triton

triton = pytest.importorskip("triton")
library_triton = pytest.importorskip("torch._library.triton")

# Every kernel module of the package (_triton.py holds the launch helpers)
KERNEL_MODULES = sorted(p.stem for p in pathlib.Path(_triton.__file__).parent.glob("*_triton.py")
                        if p.stem != "_triton")
# Launched by an opaque custom op (linear_cross_entropy), whose compiled graphs call it at run time.
NOT_TRITON_OPS = {"cross_entropy_triton"}


def _jit_kernels(module):
    """Names of the module's own kernels (compiled, or interpreted under TRITON_INTERPRET=1)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import KernelInterface

    for name, obj in sorted(vars(module).items()):
        inner = obj.fn if isinstance(obj, Autotuner) else obj
        if name.endswith("_kernel") and isinstance(inner, KernelInterface) and inner.fn.__module__ == module.__name__:
            yield name


def test_every_triton_op_and_kernel_is_listed():
    importlib.import_module("mamba_compile.ops")  # registers the ops

    ours = {name.split("::")[1] for name in library_triton.triton_ops_to_kernels if name.startswith("mamba_compile::")}
    assert ours, "no triton_op of this package in torch's table"
    assert ours == set(_triton.OP_KERNELS), "OP_KERNELS must name every triton_op, and only those"
    listed = {(module, name) for module, names in _triton.OP_KERNELS.values() for name in names}
    for module_name in KERNEL_MODULES:
        module = importlib.import_module(f"mamba_compile.ops.{module_name}")
        kernels = set(_jit_kernels(module))
        assert kernels, module_name
        if module_name in NOT_TRITON_OPS:
            continue
        missing = {name for name in kernels if (module_name, name) not in listed}
        assert not missing, f"{module_name}: kernels no triton_op lists: {sorted(missing)}"
    for op in _triton.OP_KERNELS:
        assert all(hasattr(k, "fn") for k in _triton.op_kernels(op)), op


@contextlib.contextmanager
def _recording():
    """Every kernel launched, with the launches themselves skipped (a fake tensor's real launch is traced by
    torch as a kernel call, which some launches' arguments do not survive on a CPU-only build)."""
    launched = []

    class _Grid:
        def __getitem__(self, grid):
            return lambda *args, **kwargs: None

    def record(kernel, wrap=True):
        launched.append(kernel)
        return _Grid()

    mp = pytest.MonkeyPatch()
    for name in KERNEL_MODULES:
        mp.setattr(importlib.import_module(f"mamba_compile.ops.{name}"), "launcher", record)
    try:
        yield launched
    finally:
        mp.undo()


def _fake_cases():
    """(op, case) pairs covering the multi-kernel ops' branches. A case runs inside FakeTensorMode and returns
    the kernels its op launched, recorded around that op alone (not around a forward that feeds a backward)."""
    ops = torch.ops.mamba_compile
    bf16, f32 = torch.bfloat16, torch.float32

    def t(*shape, dtype=bf16):
        return torch.empty(*shape, device="cuda", dtype=dtype)

    def conv_x(layout, dtype):
        # 1792 channels of a 3352-wide buffer, made with their strides (views of fake CUDA tensors fail on a
        # CPU-only build of torch)
        strides = (3352 * 64, 64, 1) if layout == "time" else (64 * 3352, 1, 3352)
        return torch.empty_strided((2, 1792, 64), strides, device="cuda", dtype=dtype)

    def conv_dout(layout, dtype):
        strides = (1792 * 64, 64, 1) if layout == "time" else (64 * 1792, 1, 1792)
        return torch.empty_strided((2, 1792, 64), strides, device="cuda", dtype=dtype)

    def conv_fwd(layout, dtype):
        with _recording() as launched:
            ops.causal_conv1d_fwd(conv_x(layout, dtype), t(1792, 4, dtype=dtype), t(1792, dtype=dtype), None, None,
                                  False, True)
        return launched

    def conv_bwd(layout, dtype):
        x = conv_x(layout, dtype)
        with _recording() as launched:
            ops.causal_conv1d_bwd(x, t(1792, 4, dtype=dtype), t(1792, dtype=dtype), None, None,
                                  conv_dout(layout, dtype), None, True)
        return launched

    def conv_bwd_pairs():  # the pair backward, which _BWD_RUNS (on by default) replaces by the run kernel
        from mamba_compile.ops import causal_conv1d_triton

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(causal_conv1d_triton, "_BWD_RUNS", False)
            return conv_bwd("time", bf16)

    def conv_init():
        with _recording() as launched:
            ops.causal_conv1d_fwd(t(2, 64, 40, dtype=f32), t(64, 4, dtype=f32), None, None, t(2, 64, 3, dtype=f32),
                                  True, False)
        return launched

    def scan_args():
        b, d, n, l = 2, 64, 16, 96
        return (t(b, d, l), t(b, d, l), t(d, n, dtype=f32), t(b, 1, n, l), t(b, 1, n, l), t(d, dtype=f32),
                t(b, d, l), t(d, dtype=f32))

    def scan_fwd():
        with _recording() as launched:
            ops.selective_scan_fwd(*scan_args(), True, None, True)
        return launched

    def ssd_args():
        b, l, h, p, g, n = 2, 512, 4, 64, 1, 64
        return (t(b, l, h, p), t(b, l, h, dtype=f32), t(h, dtype=f32), t(b, l, g, n), t(b, l, g, n), 256,
                t(h, dtype=f32), t(b, l, h, p), t(h, dtype=f32), None, None, None, True, 0.0,
                torch.finfo(torch.float32).max)  # an open dt_limit bound, as the ops take it

    def ssd_fwd():
        with _recording() as launched:
            ops.ssd_chunk_scan_fwd(*ssd_args(), True)
        return launched

    def ssd_bwd(keep: bool):
        args = ssd_args()
        with _recording():
            kept = ops.ssd_chunk_scan_fwd(*args, True)[3:] if keep else ()  # pre_gate and the chunk states
        with _recording() as launched:
            ops.ssd_chunk_scan_bwd(torch.empty_like(args[0]), None, None, *args, *kept)
        return launched

    cases = [(f"causal_conv1d_{d}", lambda d=d, layout=layout, dtype=dtype: (conv_fwd if d == "fwd" else conv_bwd)(
        layout, dtype)) for d in ("fwd", "bwd") for layout in ("time", "channel_last") for dtype in (bf16, f32)]
    return cases + [("causal_conv1d_bwd", conv_bwd_pairs), ("causal_conv1d_fwd", conv_init),
                    ("selective_scan_fwd", scan_fwd), ("ssd_chunk_scan_fwd", ssd_fwd),
                    ("ssd_chunk_scan_bwd", lambda: ssd_bwd(True)), ("ssd_chunk_scan_bwd", lambda: ssd_bwd(False))]


def test_traced_launches_stay_within_the_lists():
    """Each multi-kernel op, through the branches above (conv: run, pair, row and general kernels, initial states;
    SSD: kept or recomputed pre-gate and chunk states), launches only kernels listed for it. The selective-scan
    backward is left out: its launcher slices fake CUDA tensors, which a CPU-only build of torch refuses (its list,
    read off the code, includes the forward kernel it runs when the forward saved no states)."""
    seen = {}
    for op, case in _fake_cases():
        with FakeTensorMode():
            launched = case()
        allowed = _triton.op_kernels(op)
        strays = [k.fn.__name__ for k in launched if all(k is not a for a in allowed)]
        assert launched and not strays, f"{op}: launched {strays}, not in OP_KERNELS"
        seen.setdefault(op, set()).update(k.fn.__name__ for k in launched)
    # the branches were reached: every conv kernel ran in some case
    assert seen["causal_conv1d_fwd"] == set(_triton.OP_KERNELS["causal_conv1d_fwd"][1])
    assert seen["causal_conv1d_bwd"] == set(_triton.OP_KERNELS["causal_conv1d_bwd"][1])


# Run in a process of its own, without the Triton interpreter the suite's CPU runs use: the table holds compiled
# kernels (JITFunctions) only, since torch's key reads their source.
_KEY_SCRIPT = """
import torch
from torch._functorch._aot_autograd.autograd_cache import AOTAutogradCacheDetails
from torch._subclasses import FakeTensorMode

from mamba_compile.ops import _triton, causal_conv1d_triton

graph = torch.fx.Graph()
x, w = graph.placeholder("x"), graph.placeholder("w")
graph.output(graph.call_function(torch.ops.mamba_compile.causal_conv1d_fwd.default, (x, w, None, None, None, False,
                                                                                   True)))
gm = torch.fx.GraphModule({}, graph)
details = object.__new__(AOTAutogradCacheDetails)
before = details.get_triton_source_codes_from_gm(gm)
with FakeTensorMode():  # the op's first traced launch lists the kernels
    torch.ops.mamba_compile.causal_conv1d_fwd(torch.empty(2, 64, 32, device="cuda", dtype=torch.bfloat16),
                                              torch.empty(64, 4, device="cuda", dtype=torch.bfloat16), None, None,
                                              None, False, True)
sources = "\\n".join(details.get_triton_source_codes_from_gm(gm))
first_lines = [k.src.strip().splitlines()[0] for k in _triton.op_kernels("causal_conv1d_fwd")]
first_lines.append(causal_conv1d_triton._row_pre.src.strip().splitlines()[0])  # a helper, through its caller
print(len(before), [line in sources for line in first_lines])
"""


def test_cache_key_sources_cover_the_kernels():
    """What the AOTAutograd cache key hashes for a graph holding the op, before and after the op's first traced
    launch: nothing, then the source of every kernel listed for it and of the helpers they call."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(pathlib.Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    run = subprocess.run([sys.executable, "-c", _KEY_SCRIPT], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["0", "[True,", "True,", "True,", "True]"], run.stdout
