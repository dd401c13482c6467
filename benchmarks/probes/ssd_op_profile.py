"""Which torch ops of our SSD forward+backward launch which GPU kernels: torch.profiler over eager steps at both
benchmark shapes, the aten ops (with their input shapes) ranked by the GPU time of the kernels they launched, then
every kernel's GPU time per step. For the torch kernels between the Triton ones (reductions, copies, fills), whose
source the kernel name does not say.

    python3 -m benchmarks.probes.ssd_op_profile [--steps 10]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_ssd import SHAPES, fwd_bwd, make_inputs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    from mamba_compile.ops import ssd_chunk_scan

    for shape in SHAPES:
        batch, seqlen, nheads, headdim, ngroups, dstate, chunk = shape
        print(f"\n## b{batch} l{seqlen} h{nheads}", flush=True)
        t = make_inputs(batch, seqlen, nheads, headdim, ngroups, dstate, requires_grad=True)
        dout = torch.randn_like(t["x"])
        for _ in range(3):
            fwd_bwd(ssd_chunk_scan, t, chunk, dout)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            for _ in range(args.steps):
                fwd_bwd(ssd_chunk_scan, t, chunk, dout)
            torch.cuda.synchronize()
        ops = [e for e in prof.key_averages(group_by_input_shape=True)
               if e.device_type == torch.autograd.DeviceType.CPU and e.key.startswith("aten::")
               and e.device_time_total > 0]
        for e in sorted(ops, key=lambda e: -e.device_time_total)[:20]:
            print(f"op {e.key:28s} {e.device_time_total / 1e3 / args.steps:.4f} ms/step  calls/step "
                  f"{e.count / args.steps:.0f}  shapes {e.input_shapes}", flush=True)
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        for e in sorted(kernels, key=lambda e: -e.device_time_total):
            print(f"kernel {e.device_time_total / 1e3 / args.steps:.4f} ms/step  x{e.count / args.steps:.0f}  "
                  f"{e.key[:110]}", flush=True)
        del t, dout
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
