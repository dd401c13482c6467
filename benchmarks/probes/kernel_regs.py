"""Registers and spills of a Triton kernel as ptxas builds it for sm_90, without a GPU: the launch is captured from
the op's launcher (CPU tensors of the real shapes, dtypes and strides stand in for CUDA ones), compiled by
triton.compile for an sm_90 target with the options asked for (num_warps, maxnreg), and its PTX run through
ptxas -v. For trying a register cap (``maxnreg``: more warps per scheduler, at the price of spills) before
spending device time on it.

Needs a Triton with the NVIDIA backend's ptxas (the GPU machine's, or ``pip install --no-deps triton==3.6.0
--target /tmp/t36site`` and PYTHONPATH=/tmp/t36site:. on a CPU machine), and no TRITON_INTERPRET.

    python -m benchmarks.probes.kernel_regs --kernel scan_bwd --maxnreg 0 168 128
    python -m benchmarks.probes.kernel_regs --ssd-all   # every SSD kernel: registers, wgmma or mma.sync
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

import torch

_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
           torch.int32: "i32"}


def capture(module, fn, *args, **kwargs) -> list:
    """(kernel, grid, args, kwargs) of every launch ``fn`` makes through ``module.launcher``; nothing runs."""
    launches = []

    class _Capture:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append((self.kernel, grid, a, kw))

    old = module.launcher
    module.launcher = lambda kernel, wrap=True: _Capture(kernel)
    try:
        fn(*args, **kwargs)
    finally:
        module.launcher = old
    return launches


def compile_sm90(kernel, args, kwargs, maxnreg: int | None):
    """triton.compile of one captured launch for sm_90, specialised as Triton's JIT would (pointers and ints that are
    multiples of 16 get the divisibility hint, ints equal to 1 become constants)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = kernel.arg_names
    options = {k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs}
    if maxnreg:
        options["maxnreg"] = maxnreg
    values = dict(zip(names, args))
    values.update({k: v for k, v in kwargs.items() if k in names})
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(names):
        v = values[name] if name in values else kernel.params[i].default  # a constexpr the launch left at its default
        if i in kernel.constexprs:
            signature[name], constexprs[name] = "constexpr", v
        elif isinstance(v, torch.Tensor):
            signature[name] = "*" + _DTYPES[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, bool):
            signature[name] = "i1"
        elif isinstance(v, int):
            if v == 1:
                signature[name], constexprs[name] = "constexpr", 1
                continue
            signature[name] = "i64" if abs(v) >= 2**31 else "i32"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            signature[name] = "fp32"
        else:
            raise TypeError(f"argument {name}: {type(v).__name__}")
    src = ASTSource(kernel, signature, constexprs, attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)


def ptxas_report(ptx: str) -> dict:
    """ptxas -v of the PTX for sm_90a: registers, spill stores and loads (bytes), stack frame."""
    from triton.backends.nvidia import compiler as nv

    ptxas = nv.get_ptxas(90).path
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, "-v", "--gpu-name=sm_90a", path, "-o", os.path.join(d, "k.cubin")],
                             capture_output=True, text=True, check=True).stderr
    regs = re.search(r"Used (\d+) registers", out)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", out)
    stack = re.search(r"(\d+) bytes stack frame", out)
    return dict(registers=int(regs.group(1)) if regs else None,
                spill_stores=int(spills.group(1)) if spills else None,
                spill_loads=int(spills.group(2)) if spills else None,
                stack=int(stack.group(1)) if stack else None)


def _launch_of(launches: list, name: str):
    """The captured launch of the kernel called ``name``."""
    return next(x for x in launches if x[0].fn.__name__ == name)


def _scan_inputs(batch=8, dim=1536, seqlen=2048, dstate=16) -> dict:
    """The selective scan's inputs at the Mamba-1 130M training shape: channel-major u, delta, z, dout as the mixer
    gives them ((b, d, l) with strides (l, b l, 1)), B, C (b, 1, n, l) bf16, fp32 A, D, delta_bias."""

    def cm():
        return torch.empty(dim, batch, seqlen, dtype=torch.bfloat16).transpose(0, 1)

    B = torch.empty(batch, 1, dstate, seqlen, dtype=torch.bfloat16)
    return dict(u=cm(), delta=cm(), z=cm(), dout=cm(), A=torch.empty(dim, dstate), B=B, C=B, D=torch.empty(dim),
                bias=torch.empty(dim))


def scan_bwd_launch():
    """The selective-scan backward's kernel launch at that shape."""
    from mamba_compile.ops import selective_scan_triton as s

    t = _scan_inputs()
    batch, dim, seqlen = t["u"].shape
    block_l = s.bwd_block_sizes(dim, t["A"].shape[1], dim)[1]
    states = torch.empty(batch, seqlen // block_l + 1, dim, t["A"].shape[1])
    launches = capture(s, s.selective_scan_bwd, t["dout"], None, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"],
                       t["z"], t["bias"], True, None, states, wrap=False)
    return _launch_of(launches, "_selective_scan_bwd_kernel")


def scan_fwd_launch():
    """The selective-scan forward's kernel launch (states saved for the backward) at that shape."""
    from mamba_compile.ops import selective_scan_triton as s

    t = _scan_inputs()
    launches = capture(s, s.selective_scan_fwd, t["u"], t["delta"], t["A"], t["B"], t["C"], t["D"], t["z"],
                       t["bias"], True, None, True, wrap=False)
    return _launch_of(launches, "_selective_scan_fwd_kernel")


def ce_rows_launch(separate_max=False, rows=5338, vocab=50280):
    """The cross-entropy's loss/gradient kernel on one 130M training block of bf16 logits."""
    from mamba_compile.ops import cross_entropy_triton as k

    logits = torch.empty(rows, vocab, dtype=torch.bfloat16)
    labels, inv = torch.empty(rows, dtype=torch.int64), torch.empty(1)
    return _launch_of(capture(k, k.ce_rows, logits, labels, inv, -100, True, separate_max=separate_max),
                      "_ce_rows_kernel")


def ssd_bwd_launch(name: str):
    """One SSD backward kernel (``name``) at the benchmark shape (b8 l2048 h24 p64 g1 n128, bf16, chunk 128, D and
    z, the forward's pre-gate output kept)."""
    from mamba_compile.ops import ssd, ssd_triton as k

    b, l, h, p, g, n = 8, 2048, 24, 64, 1, 128
    x = torch.empty(b, l, h, p, dtype=torch.bfloat16)
    B = torch.empty(b, l, g, n, dtype=torch.bfloat16)
    args = (x, torch.empty(b, l, h, dtype=torch.bfloat16), torch.empty(h), B, B.clone(), 128, torch.empty(h),
            x.clone(), torch.empty(h), None, None, None, True, 0.0, ssd._OPEN_BOUND)
    launches = capture(k, ssd._bwd_triton, x.clone(), None, None, *args, wrap=False, pre_gate=x.clone())
    return _launch_of(launches, name)


def ssd_launches() -> list:
    """Every launch of the SSD's forward (keeping y + D x) and backward at the benchmark shape, as ssd_bwd_launch."""
    from mamba_compile.ops import ssd, ssd_triton as k

    b, l, h, p, g, n = 8, 2048, 24, 64, 1, 128
    x = torch.empty(b, l, h, p, dtype=torch.bfloat16)
    B = torch.empty(b, l, g, n, dtype=torch.bfloat16)
    args = (x, torch.empty(b, l, h, dtype=torch.bfloat16), torch.empty(h), B, B.clone(), 128, torch.empty(h),
            x.clone(), torch.empty(h), None, None, None, True, 0.0, ssd._OPEN_BOUND)
    return (capture(k, ssd._fwd_triton, *args, wrap=False, keep_pre_gate=True)
            + capture(k, ssd._bwd_triton, x.clone(), None, None, *args, wrap=False, pre_gate=x.clone()))


def mma_counts(ptx: str) -> dict:
    """How the kernel's dots reach the tensor cores: Hopper's wgmma, or the older mma.sync."""
    return dict(wgmma=len(re.findall(r"wgmma\.mma_async", ptx)), mma_sync=len(re.findall(r"mma\.sync", ptx)))


KERNELS = {"scan_bwd": scan_bwd_launch, "scan_fwd": scan_fwd_launch, "ce_rows": ce_rows_launch,
           "ce_rows_separate_max": lambda: ce_rows_launch(separate_max=True),
           "ssd_dx": lambda: ssd_bwd_launch("_chunk_scan_bwd_dx_kernel"),
           "ssd_dcb": lambda: ssd_bwd_launch("_chunk_scan_bwd_dcb_kernel")}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--kernel", choices=sorted(KERNELS), default="scan_bwd")
    p.add_argument("--maxnreg", type=int, nargs="+", default=[0], help="0: no cap")
    p.add_argument("--ssd-all", action="store_true",
                   help="every SSD launch, forward and backward: registers and wgmma / mma.sync counts (no cap)")
    args = p.parse_args()
    if args.ssd_all:
        for kernel, grid, a, kw in ssd_launches():
            ptx = compile_sm90(kernel, a, kw, None).asm["ptx"]
            print(dict(kernel=kernel.fn.__name__, grid=grid, num_warps=kw.get("num_warps"), **ptxas_report(ptx),
                       **mma_counts(ptx)), flush=True)
        return
    kernel, grid, a, kw = KERNELS[args.kernel]()
    for cap in args.maxnreg:
        compiled = compile_sm90(kernel, a, kw, cap or None)
        print(dict(kernel=args.kernel, num_warps=kw.get("num_warps"), maxnreg=cap or None,
                   **ptxas_report(compiled.asm["ptx"])), flush=True)


if __name__ == "__main__":
    main()
