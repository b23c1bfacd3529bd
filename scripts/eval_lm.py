"""Held-out perplexity of a language model folder (default: the shipped mamba3-hybrid-mini).

The held-out split of the corpus (documentation pages and dictionary entries, each
followed by EOS) is cut into non-overlapping windows of the model's context; every
token but the first is predicted once. Prints per-kind loss, perplexity and bits per
byte and writes them as JSON.

    python scripts/eval_lm.py --max-tokens 100000          # CPU, a prefix of each stream
    python scripts/eval_lm.py --device cuda                # the whole held-out split
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_io import find, read_jsonl, token_streams  # noqa: E402


@torch.no_grad()
def perplexity(model, stream: torch.Tensor, ctx: int, batch: int,
               autocast=None) -> dict[str, float]:
    """Mean next-token loss over ``stream`` in non-overlapping windows of ``ctx``."""
    n_pred = len(stream) - 1
    full = n_pred // ctx
    window = torch.arange(ctx + 1, device=stream.device)
    nll = torch.zeros((), dtype=torch.float64, device=stream.device)
    for i in range(0, full, batch):
        starts = torch.arange(i, min(i + batch, full), device=stream.device) * ctx
        nll += _nll(model, stream[starts[:, None] + window].long(), autocast)
    if n_pred > full * ctx:
        nll += _nll(model, stream[None, full * ctx:].long(), autocast)
    loss = float(nll) / n_pred
    return {"tokens": n_pred, "nll_sum": float(nll), "loss": loss,
            "perplexity": math.exp(loss)}


def _nll(model, ids: torch.Tensor, autocast) -> torch.Tensor:
    with autocast or contextlib.nullcontext():
        logits = model(ids[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(),
                           reduction="sum").double()


def main() -> None:
    from mamba3_integrations import Mamba3ForCausalLM
    from mamba3_integrations.models import default_lm_path

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--corpus", type=Path, default=Path(".data/corpus"))
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="evaluate only this many tokens of each stream (0: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lm_eval.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or default_lm_path()
    model = Mamba3ForCausalLM.from_pretrained(folder, device=args.device)
    ctx = model.config.context_length or 1024
    records = [r for stem in ("docs", "dict") for r in read_jsonl(find(args.corpus, stem))
               if r["split"] == "heldout"]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if args.device.startswith("cuda")
                else None)
    results = {}
    for (_, kind), (ids, nbytes) in token_streams(records, model.tokenizer).items():
        if args.max_tokens and len(ids) > args.max_tokens + 1:
            nbytes = round(nbytes * args.max_tokens / (len(ids) - 1))  # prorated
            ids = ids[:args.max_tokens + 1]
        start = time.time()
        r = perplexity(model, torch.from_numpy(ids).to(args.device), ctx, args.batch, autocast)
        r["bits_per_byte"] = r["nll_sum"] / math.log(2) / nbytes
        r["seconds"] = time.time() - start
        results[kind] = {k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}
        print(f"{kind:5s} tokens {r['tokens']:9,d}  loss {r['loss']:.4f}  perplexity "
              f"{r['perplexity']:8.3f}  bits/byte {r['bits_per_byte']:.4f}  "
              f"({r['seconds']:.0f}s)")
    report = {"model": str(folder), "context": ctx, "device": args.device,
              "dtype": "bfloat16 autocast" if autocast else "float32",
              "max_tokens_per_kind": args.max_tokens or None, "heldout": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
