# Probe (run on the GPU machine, 2026-11-22, torch 2.11.0+cu130, triton 3.6.0, H100): the triton_op device-branch
# pattern is correct in eager (max error 1e-6, FMA rounding: a plain allclose with rtol 1e-5 calls that "wrong"),
# compiles (fullgraph, dynamic) correctly, and export + AOTInductor packaging ran (65.8 s); the fresh-process load of the
# package printed nothing at all (neither result nor error): not yet explained, to be checked with the export work.
# Diagnoses the triton_op (device-branch) pattern on the GPU machine's torch: why eager could be wrong.
import os, sys, time, subprocess, textwrap, tempfile
import torch, triton, triton.language as tl
from torch.library import triton_op, wrap_triton
print(torch.__version__, triton.__version__, torch.cuda.get_device_name(), flush=True)

@triton.jit
def _axpy_kernel(x_ptr, y_ptr, o_ptr, a, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(o_ptr + offs, a * tl.load(x_ptr + offs, mask=m) + tl.load(y_ptr + offs, mask=m), mask=m)

@triton_op("probe::axpy", mutates_args=())
def axpy(x: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
    if x.device.type == "cpu":
        return a * x + y
    o = torch.empty_like(x)
    n = x.numel()
    wrap_triton(_axpy_kernel)[(triton.cdiv(n, 1024),)](x, y, o, a, n, BLOCK=1024)
    return o

@triton_op("probe::axpy_direct", mutates_args=())
def axpy_direct(x: torch.Tensor, y: torch.Tensor, a: float) -> torch.Tensor:
    o = torch.empty_like(x)
    n = x.numel()
    _axpy_kernel[(triton.cdiv(n, 1024),)](x, y, o, a, n, BLOCK=1024)
    return o

x = torch.randn(4096, device="cuda"); y = torch.randn(4096, device="cuda")
for name, fn in [("wrap", axpy), ("direct-launch", axpy_direct)]:
    for a in (3.0, 1.0, 2.5):
        o = fn(x, y, a); torch.cuda.synchronize()
        ref = a * x + y
        err = (o - ref).abs().max().item()
        print(f"{name} a={a}: maxerr={err:.3g} o[:3]={o[:3].tolist()} ref[:3]={ref[:3].tolist()}", flush=True)
# Direct launch outside an op
o = torch.empty_like(x); _axpy_kernel[(4,)](x, y, o, 3.0, 4096, BLOCK=1024); torch.cuda.synchronize()
print("plain launch err", (o - (3 * x + y)).abs().max().item(), flush=True)
# int vs float specialisation
o = axpy(x, y, 3); torch.cuda.synchronize(); print("int a err", (o - (3 * x + y)).abs().max().item())
# compile
f = torch.compile(lambda a, b: axpy(a, b, 2.0).relu(), fullgraph=True, dynamic=True)
for n in (100, 3000, 4096):
    a_, b_ = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    print("compile n", n, (f(a_, b_) - (2 * a_ + b_).relu()).abs().max().item(), flush=True)
# AOTI
class M(torch.nn.Module):
    def forward(self, a, b): return axpy(a, b, 1.5) * 2
t = time.time()
ep = torch.export.export(M(), (x, y))
print("export s", round(time.time() - t, 1), flush=True)
d = tempfile.mkdtemp()
pkg = torch._inductor.aoti_compile_and_package(ep, package_path=os.path.join(d, "axpy.pt2"))
print("aoti s", round(time.time() - t, 1), flush=True)
code = f"import torch\nm = torch._inductor.aoti_load_package({pkg!r})\nx = torch.randn(4096, device='cuda'); y = torch.randn(4096, device='cuda')\nprint('aoti fresh process ok', torch.allclose(m(x, y), (1.5 * x + y) * 2))"
r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
print(r.stdout, r.stderr[-2000:], flush=True)
# bandwidth
buf = torch.empty(2 * 1024**3 // 4, device="cuda"); dst = torch.empty_like(buf)
ms = triton.testing.do_bench(lambda: dst.copy_(buf), return_mode="median")
print("copy TB/s", 2 * buf.numel() * 4 / ms / 1e9, flush=True)
