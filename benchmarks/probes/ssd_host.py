"""Host (Python and launch) time of one eager SSD forward, ours and the reference's, at a shape whose GPU work is
tiny (b1 l256 h4), and a cProfile of ours: where an eager call's time goes when the GPU is not the limit.

    python3 -m benchmarks.probes.ssd_host
"""
import cProfile
import pstats
import time

import torch

from benchmarks.bench_ssd import call, impls, make_inputs


def host_us(fn, t, n=300):
    for _ in range(10):
        call(fn, t, 256)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        call(fn, t, 256)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n * 1e6


def main():
    t = make_inputs(1, 256, 4, 64, 1, 128)
    fns = impls()
    with torch.no_grad():
        for name, fn in fns.items():
            print(f"{name}: {host_us(fn, t):.0f} us per eager forward (no grad)", flush=True)
        tg = make_inputs(1, 256, 4, 64, 1, 128, requires_grad=True)
        for name, fn in fns.items():
            with torch.enable_grad():
                print(f"{name}: {host_us(fn, tg):.0f} us per eager forward (inputs require grad)", flush=True)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(200):
            call(fns["ours"], t, 256)
        torch.cuda.synchronize()
        prof.disable()
    pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
