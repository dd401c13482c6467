"""How long does the greedy step's argmax over the 130M vocabulary take at batch 1 and 2 (bf16 logits, padded
to 50280, real vocabulary 50277)? CUDA-graph timed: eager argmax, Inductor's argmax (torch.compile), and the
two-stage form (max over 40 groups of 1257, then over the groups) compiled.

    python -m benchmarks.probes.argmax_probe --out $OUT/argmax.json
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._common import device_name, graph_ms, write_results

VOCAB, PADDED, GROUPS = 50277, 50280, 40


def plain(logits):
    return logits[:, :VOCAB].argmax(-1)


def grouped(logits):
    b = logits.shape[0]
    masked = logits.masked_fill(torch.arange(PADDED, device=logits.device) >= VOCAB, float("-inf"))
    values, idx = masked.view(b, GROUPS, PADDED // GROUPS).max(-1)
    group = values.argmax(-1)
    return group * (PADDED // GROUPS) + idx.gather(1, group[:, None])[:, 0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    print(f"device: {device_name()}, torch {torch.__version__}", flush=True)
    rows = []
    for b in (1, 2):
        logits = torch.randn(b, PADDED, device="cuda", dtype=torch.bfloat16)
        want = plain(logits)
        for name, fn in [("eager argmax", plain), ("compiled argmax", torch.compile(plain, fullgraph=True)),
                         ("compiled two-stage", torch.compile(grouped, fullgraph=True))]:
            assert torch.equal(fn(logits), want), name
            rows.append(dict(batch=b, case=name, us=1e3 * graph_ms(lambda: fn(logits))))
            print(rows[-1], flush=True)
    write_results(rows, args.out)


if __name__ == "__main__":
    main()
