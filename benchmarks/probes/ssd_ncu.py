"""Runs the SSD's forward+backward a few times at the benchmark shape (b8 l2048 h24 p64 g1 n128, bf16, D, z,
dt_bias, softplus), for a profiler to attach to (ncu -k regex:_chunk_ ...). Times nothing itself.

    python3 -m benchmarks.probes.ssd_ncu
"""
import torch

from benchmarks.bench_ssd import fwd_bwd, impls, make_inputs

t = make_inputs(8, 2048, 24, 64, 1, 128, requires_grad=True)
dout = torch.randn_like(t["x"])
for _ in range(2):
    fwd_bwd(impls()["ours"], t, 256, dout)
torch.cuda.synchronize()
