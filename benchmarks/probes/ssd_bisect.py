"""chunk_scan forward variants on the GPU (C B^T dtype or none, pipeline stages, incoming-state dtype, column
tile): each in its own process, since a faulting variant kills the CUDA context. Each is checked against the
float32 torch path at a small odd shape (b1 l777 h4 p32 g2 n64 chunk 64, every kernel synchronised) and at the
benchmark shape (b8 l2048 h24 p64 g1 n128 chunk 256), where it is also timed (median, do_bench).

    python3 -m benchmarks.probes.ssd_bisect        # JSON lines, and $OUT/ssd_bisect.json
"""
import itertools
import json
import os
import subprocess
import sys

SHAPES = {"small": (1, 777, 4, 32, 2, 64, 64), "bench": (8, 2048, 24, 64, 1, 128, 256)}
if os.environ.get("BISECT_DEVICE") == "cpu":
    SHAPES = {"small": (1, 100, 4, 32, 2, 64, 64)}


def one_all(spec):
    for shape in SHAPES:
        one({**spec, "shape": shape})


def one(spec):
    import torch
    import triton.testing
    from benchmarks.bench_ssd import make_inputs
    from mamba_compile.ops import ssd
    from mamba_compile.ops import ssd_triton as kt

    shape, cbd, ns, pd, bs, part = spec["shape"], spec["cb"], spec["ns"], spec["prev"], spec["bs"], spec["part"]
    b, l, h, p, g, n, chunk = SHAPES[shape]
    dev = os.environ.get("BISECT_DEVICE", "cuda")
    t = make_inputs(b, l, h, p, g, n, device=dev)
    if dev == "cpu":  # the interpreter's bf16 dots are unusable: fp16 there
        t = {k: v.half() if v.dtype == torch.bfloat16 else v for k, v in t.items()}
    dt_ = {"none": None, "bf16": torch.bfloat16 if dev == "cuda" else torch.float16, "fp32": torch.float32}
    args = (t["x"], t["dt"], t["A"], t["B"], t["C"], chunk, t["D"], t["z"], t["dt_bias"], None, None, None, True,
            0.0, ssd._OPEN_BOUND)
    with torch.no_grad():
        want = ssd._ssd_torch(*[a.float() if isinstance(a, torch.Tensor) else a for a in args])
    x, dt, A, B, C = args[:5]
    dtp, dA_cs = kt.chunk_cumsum_fwd(dt, A, t["dt_bias"], chunk, True, 0.0, ssd._OPEN_BOUND, False, wrap=False)
    prev, final = kt.chunk_state_passing_fwd(x, B, dtp, dA_cs, None, None, prev_dtype=dt_[pd], wrap=False)
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    sync()
    res = {"final_err": ((final - want[1]).abs().max() / want[1].abs().max()).item()}
    if part == "state":
        print("RESULT", json.dumps({"shape": shape, **res}), flush=True)
        return
    cb = kt.bmm_cb_fwd(C, B, chunk, dtype=dt_[cbd], wrap=False) if cbd != "none" else None
    cfg = dict(block_t=64, block_s=bs, num_warps=4, num_stages=ns)
    f = lambda: kt.chunk_scan_fwd(x, B, C, dtp, dA_cs, prev, t["D"], t["z"], None, cb=cb, config=cfg, wrap=False)
    out = f()
    sync()
    res["out_err"] = ((out.float() - want[0]).abs().max() / want[0].abs().max()).item()
    if shape == "bench":
        res["scan_ms"] = triton.testing.do_bench(f, warmup=25, rep=100, return_mode="median")
    print("RESULT", json.dumps({"shape": shape, **res}), flush=True)


def main():
    rows = []
    variants = [dict(part="state", cb="none", ns=2, prev=pd, bs=64) for pd in ("bf16", "fp32")]
    variants += [dict(part="scan", cb=cb, ns=ns, prev=pd, bs=64)
                 for cb, ns, pd in itertools.product(("none", "bf16", "fp32"), (1, 2), ("bf16", "fp32"))]
    variants += [dict(part="scan", cb="bf16", ns=2, prev="bf16", bs=32), dict(part="scan", cb="fp32", ns=2, prev="bf16", bs=32)]
    for v in variants:
        r = subprocess.run([sys.executable, "-m", "benchmarks.probes.ssd_bisect", json.dumps(v)], capture_output=True, text=True, timeout=150)
        got = [json.loads(s[7:]) for s in r.stdout.splitlines() if s.startswith("RESULT")]
        row = {**v, "results": got}
        if r.returncode != 0:
            row["crash"] = (r.stderr.strip().splitlines() or ["?"])[-1][:200]
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(os.path.join(os.environ.get("OUT", "."), "ssd_bisect.json"), "w") as fh:
        json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        one_all(json.loads(sys.argv[1]))
    else:
        main()
