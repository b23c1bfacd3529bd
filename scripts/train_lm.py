"""Train ``mamba3-hybrid-mini``: a Mamba-3 hybrid LM (Mamba-3 layers, one sliding-window
and one global attention layer) on the train subset of the corpus.

Runs on the GPU machine from the folder of ``prepare_device_data.py``; the schedule
(warmup, cosine decay) follows the wall clock, so the run ends inside ``--minutes``
whatever the throughput. The checkpoint with the lowest validation loss (2 % of the
train split) is evaluated on the held-out split and saved as bf16 safetensors shards;
the config and the training figures are in the first shard's metadata
(``scripts/export_models.py`` turns the shards into the shipped model folder).

    python scripts/train_lm.py --bundle .data/device --out runs/lm --minutes 8.5
    python scripts/train_lm.py --tiny --max-steps 3 --out /tmp/lm   # CPU smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_io import (  # noqa: E402
    check_scan_backend,
    cosine_lr,
    load_shards,
    read_jsonl,
    recover,
    release_graphs,
    save_checkpoint,
    token_streams,
)
from eval_lm import perplexity  # noqa: E402

from mamba3_integrations import Mamba3Config, Mamba3ForCausalLM  # noqa: E402


def model_config(vocab_size: int, ctx: int, tiny: bool) -> Mamba3Config:
    """12 layers of width 512: Mamba-3 everywhere except a sliding-window attention layer
    (window 256) at index 4 and a global attention layer at index 9."""
    if tiny:
        return Mamba3Config(
            d_model=64, n_layer=4, vocab_size=vocab_size,
            ssm_cfg={"layer": "Mamba3", "d_state": 16, "headdim": 16, "chunk_size": 16},
            attn_layer_idx=[1, 3], attn_window={1: 16},
            attn_cfg={"num_heads": 4, "head_dim": 16, "rotary_emb_dim": 16, "causal": True},
            fused_add_norm=False, context_length=ctx)
    return Mamba3Config(
        d_model=512, n_layer=12, vocab_size=vocab_size,
        ssm_cfg={"layer": "Mamba3", "d_state": 64, "headdim": 64, "expand": 2,
                 "chunk_size": 64},
        attn_layer_idx=[4, 9], attn_window={4: 256},
        attn_cfg={"num_heads": 8, "head_dim": 64, "rotary_emb_dim": 64, "causal": True},
        fused_add_norm=False, context_length=ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path(".data/device"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=8.5, help="whole-run budget")
    parser.add_argument("--reserve", type=float, default=50, help="seconds kept for the end")
    parser.add_argument("--ctx", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=32, help="windows per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=16, help="windows per forward")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=float, default=0.05, help="fraction of the run")
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--p-docs", type=float, default=0.4,
                        help="share of each batch drawn from documentation (rest: dictionaries)")
    parser.add_argument("--eval-every", type=float, default=45, help="seconds")
    parser.add_argument("--init", type=Path, help="start from these shards' weights")
    parser.add_argument("--tiny", action="store_true", help="tiny model, for a CPU smoke test")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--limit-records", type=int, default=0)
    parser.add_argument("--memory-fraction", type=float, default=0.0,
                        help="cap this process's share of GPU memory (0: no cap)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.time()
    deadline = start + args.minutes * 60

    def log(msg: str) -> None:
        print(f"[lm {time.time() - start:6.1f}s] {msg}", flush=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and args.memory_fraction:
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(args.bundle / "lm_tokenizer"))
    records = list(read_jsonl(args.bundle / "corpus.jsonl.xz"))
    if args.limit_records:
        step = max(1, len(records) // args.limit_records)
        records = records[::step]
    streams = token_streams(records, tokenizer)
    del records
    for (sub, kind), (ids, nbytes) in streams.items():
        log(f"{sub} {kind}: {len(ids):,} tokens, {nbytes:,} bytes")
    train = {kind: torch.from_numpy(streams["train", kind][0]).to(device)
             for kind in ("docs", "dict")}
    config = model_config(len(tokenizer), args.ctx, args.tiny)
    model = Mamba3ForCausalLM(config, device=device, tokenizer=tokenizer)
    model.init_weights()
    if args.init:  # continue from an earlier run's weights (a fresh optimizer)
        model.load_state_dict(load_shards(args.init, "lm")[0], strict=False)
        model.tie_weights()
        log(f"initialised from {args.init}")
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.2f}M parameters; {json.dumps(config.to_dict())}")
    backend = check_scan_backend(device, config, log)
    log(f"Mamba-3 scan: {backend}")

    decay = [p for n, p in model.named_parameters()
             if p.dim() >= 2 and "embedding" not in n and not getattr(p, "_no_weight_decay", 0)]
    no_decay = [p for p in model.parameters() if all(p is not q for q in decay)]
    fused = device.type == "cuda"
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused)
    amp = torch.autocast(device.type, dtype=torch.bfloat16)
    ctx, batch = args.ctx, args.batch
    micro = min(args.micro_batch, batch)
    arange = torch.arange(ctx + 1, device=device)

    def sample(n: int) -> torch.Tensor:
        """n windows of ctx + 1 tokens, a share p_docs of them from documentation."""
        n_docs = int(np.random.binomial(n, args.p_docs))
        rows = []
        for kind, k in (("docs", n_docs), ("dict", n - n_docs)):
            stream = train[kind]
            offsets = torch.randint(0, len(stream) - ctx - 1, (k,), device=device)
            rows.append(stream[offsets[:, None] + arange])
        return torch.cat(rows).long()

    valid = {kind: torch.from_numpy(ids[: 24 * ctx + 1]).to(device)
             for (sub, kind), (ids, _) in streams.items() if sub == "valid"}

    def validation_loss() -> dict[str, float]:
        return {k: perplexity(model, v, ctx, 8, amp)["loss"] for k, v in valid.items()}

    def train_step(lr: float) -> torch.Tensor:
        """One optimizer step over ``batch`` windows, in micro-batches of ``micro``."""
        for group in optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=device)
        for _ in range(batch // micro):
            ids = sample(micro)
            with amp:
                logits = model(ids[:, :-1]).logits
            loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
            (loss * micro / batch).backward()
            total += loss.detach() * micro / batch
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        release_graphs()
        return total

    def robust_step(lr: float) -> torch.Tensor:
        nonlocal micro
        while True:
            try:
                return train_step(lr)
            except Exception as exc:
                optimizer.zero_grad(set_to_none=True)
                action = recover(exc, log)
                if action == "smaller" and micro > 1:
                    micro //= 2
                    log(f"micro-batch now {micro}")
                elif action != "retry":
                    raise

    gc.collect()
    gc.freeze()  # the token data stays out of every later collection
    model.train()
    robust_step(0.0)  # compiles the kernels outside the schedule
    train_start = time.time()
    budget = max(1.0, deadline - args.reserve - train_start)
    step, tokens, next_eval = 0, 0, train_start + args.eval_every
    best = (math.inf, None, 0)
    curve = []
    loss_sum, loss_n = torch.zeros((), device=device), 0
    try:
        while True:
            progress = (time.time() - train_start) / budget
            if progress >= 1 or (args.max_steps and step >= args.max_steps):
                break
            loss_sum += robust_step(cosine_lr(progress, args.lr, args.warmup))
            loss_n += 1
            step += 1
            tokens += batch * ctx
            if time.time() >= next_eval or step == args.max_steps:
                model.eval()
                val = validation_loss()
                model.train()
                mean_val = float(np.mean(list(val.values())))
                elapsed = time.time() - train_start
                point = {"step": step, "tokens": tokens, "seconds": round(elapsed, 1),
                         "train_loss": round(float(loss_sum) / loss_n, 4),
                         **{f"valid_loss_{k}": round(v, 4) for k, v in val.items()}}
                curve.append(point)
                log(json.dumps(point) + f" tok/s {tokens / elapsed:,.0f}")
                loss_sum.zero_()
                loss_n = 0
                if mean_val < best[0]:
                    best = (mean_val, {k: v.detach().cpu().clone()
                                       for k, v in model.state_dict().items()}, step)
                    save_checkpoint(model, args.out, "lm", {"partial": True, "curve": curve})
                next_eval = time.time() + args.eval_every
    except Exception as exc:  # keep what was learnt: save the best checkpoint so far
        log(f"training stopped early: {type(exc).__name__}: {str(exc)[:300]}")
    train_seconds = time.time() - train_start
    gc.unfreeze()
    if best[1] is not None:
        model.load_state_dict(best[1])
    model.eval()
    log(f"trained {step} steps, {tokens:,} tokens in {train_seconds:.0f}s "
        f"({tokens / train_seconds:,.0f} tok/s); best validation at step {best[2]}")
    heldout = {}
    try:
        for (sub, kind), (ids, nbytes) in streams.items():
            if sub != "heldout":
                continue
            result = perplexity(model, torch.from_numpy(ids).to(device), ctx, 16, amp)
            result["bits_per_byte"] = result["nll_sum"] / math.log(2) / nbytes
            heldout[kind] = {k: round(v, 4) if isinstance(v, float) else v
                             for k, v in result.items()}
            log(f"held-out {kind}: {json.dumps(heldout[kind])}")
        total_nll = sum(h["nll_sum"] for h in heldout.values())
        total_tok = sum(h["tokens"] for h in heldout.values())
        heldout["all"] = {"tokens": total_tok, "loss": round(total_nll / total_tok, 4),
                          "perplexity": round(math.exp(total_nll / total_tok), 3)}
    except Exception as exc:  # the checkpoint matters more: eval_lm.py can redo this
        log(f"held-out evaluation failed: {type(exc).__name__}: {str(exc)[:300]}")
    metrics = {
        "parameters": n_params, "scan_backend": backend,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "steps": step, "tokens": tokens, "train_seconds": round(train_seconds, 1),
        "tokens_per_second": round(tokens / train_seconds), "batch": batch, "context": ctx,
        "micro_batch": micro,
        "scan_backend_at_end": ("reference" if os.environ.get("MAMBA3_DISABLE_TRITON") == "1"
                                else backend),
        "peak_lr": args.lr, "warmup_fraction": args.warmup, "p_docs": args.p_docs,
        "weight_decay": args.weight_decay, "best_step": best[2],
        "train_tokens_available": {k: int(len(v)) for k, v in train.items()},
        "heldout": heldout, "curve": curve, "torch": torch.__version__,
        "init": str(args.init) if args.init else None,
    }
    save_checkpoint(model, args.out, "lm", metrics)
    log(f"saved to {args.out}; held-out {json.dumps(heldout.get('all'))}")


if __name__ == "__main__":
    main()
