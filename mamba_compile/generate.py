"""Command-line generation demo.

    python -m mamba_compile.generate [--model PATH_OR_HUB_ID] [--prompt TEXT] [--max-new-tokens N] [--compile]

Without --model it builds a small random-weight model (--arch mamba2 or mamba1) with a byte-level
tokenizer, so it runs offline: the text is noise, the point is the compiled decode loop and its speed.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .models import MambaConfig, MambaLM, load_tokenizer
from .models.tokenizer import ByteTokenizer


def random_model(arch: str, vocab_size: int, device, dtype) -> MambaLM:
    ssm = dict(layer="Mamba2", d_state=64, headdim=32, chunk_size=64) if arch == "mamba2" else dict(layer="Mamba1")
    config = MambaConfig(d_model=256, n_layer=4, vocab_size=vocab_size, ssm_cfg=ssm, pad_vocab_size_multiple=8)
    torch.manual_seed(0)
    return MambaLM(config).to(device=device, dtype=dtype).eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", help="checkpoint directory or hub id (reference or transformers format)")
    p.add_argument("--arch", choices=["mamba2", "mamba1"], default="mamba2", help="random model without --model")
    p.add_argument("--prompt", default="Mamba is a state space model that")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--compile", action="store_true", help="compile the decode step (CUDA graphs on CUDA)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None)
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if args.model:
        model = MambaLM.from_pretrained(args.model, device=device, dtype=dtype)
        from .models.checkpoint import resolve

        tokenizer = load_tokenizer(resolve(args.model))
    else:
        tokenizer = ByteTokenizer()
        model = random_model(args.arch, tokenizer.vocab_size, device, dtype)
    ids = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    eos = getattr(tokenizer, "eos_token_id", None)
    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, compile=args.compile)
    t = time.perf_counter()
    model.generate(ids, 2, **kw)  # warm-up: compilation and CUDA-graph capture
    warm = time.perf_counter() - t
    out = model.generate(ids, args.max_new_tokens, eos_token_id=None if args.model is None else eos, **kw)
    print(args.prompt + tokenizer.decode(out.sequences[0].tolist()))
    n = out.sequences.shape[1]
    print(f"\n{n} tokens, prefill {out.prefill_s * 1e3:.1f} ms, decode {n / max(out.decode_s, 1e-9):.1f} tokens/s "
          f"(warm-up incl. compile {warm:.1f} s), {device}, {str(dtype).replace('torch.', '')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
