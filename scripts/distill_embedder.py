"""Train ``mamba3-embed-mini``: a Mamba-3 text encoder (width 384, mean pooling, L2
normalised) distilled from all-MiniLM-L6-v2 on the train subset of the corpus.

Training pairs come from real structure: dictionary headword -> its entry,
documentation section title -> the section's text, and nested section title -> a
window of up to ~1000 tokens of the enclosing section in which that subsection lies.
Per batch of pairs the loss is

- distillation: 1 - cos(student, teacher) for queries and documents; a document longer
  than the teacher's 256-token window gets as target the normalised mean of the
  teacher's embeddings of its 256-token windows (the teacher alone would truncate it);
- score distillation: KL between the teacher's and the student's softmax over the
  in-batch query-document similarities;
- contrastive: InfoNCE of each query against the batch's documents.

The student's word embeddings start from the teacher's (pruned vocabulary, see
``prepare_device_data.py``); its Mamba-3 layers start from ``init_weights``. The
schedule follows the wall clock; the checkpoint with the best validation nDCG@10 (2 %
of the train split) is saved as bf16 safetensors shards, config and figures in the
first shard's metadata.

    python scripts/distill_embedder.py --bundle .data/device --out runs/embed --minutes 8.5
    python scripts/distill_embedder.py --tiny --max-steps 3 --out /tmp/embed  # CPU smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teacher as teacher_lib  # noqa: E402
from corpus_io import (  # noqa: E402
    check_scan_backend,
    cosine_lr,
    read_jsonl,
    recover,
    release_graphs,
    save_checkpoint,
    sections,
    subset,
)
from eval_embeddings import ndcg_at_10  # noqa: E402

from mamba3_integrations import Mamba3Config, Mamba3ForCausalLM  # noqa: E402

EMBEDDING = {"pooling": "mean", "normalize": True, "max_segment_tokens": 2048}
DOC_TEACHER_TOKENS = 1016  # documents are cut to this many teacher tokens (4 windows)
MAX_STUDENT_TOKENS = 1280
LONG_CHARS = 6000  # a long-pair window, in characters, before the token cut


def model_config(vocab_size: int, tiny: bool) -> Mamba3Config:
    """Pure Mamba-3, 7 layers of width 384 (the teacher's dimension)."""
    if tiny:
        return Mamba3Config(
            d_model=384, n_layer=2, vocab_size=vocab_size,
            ssm_cfg={"layer": "Mamba3", "d_state": 16, "headdim": 64, "chunk_size": 16},
            fused_add_norm=False, embedding=dict(EMBEDDING))
    return Mamba3Config(
        d_model=384, n_layer=7, vocab_size=vocab_size,
        ssm_cfg={"layer": "Mamba3", "d_state": 64, "headdim": 64, "expand": 2,
                 "chunk_size": 64},
        fused_add_norm=False, embedding=dict(EMBEDDING))


def build_pairs(records: list[dict], rng: random.Random) -> dict[str, list[tuple[str, str]]]:
    """(query, document) pairs of the train subset, by kind: 'dict', 'section', 'long'."""
    pairs: dict[str, list[tuple[str, str]]] = {"dict": [], "section": [], "long": []}
    for r in records:
        if subset(r) != "train":
            continue
        if "sections" not in r:
            pairs["dict"].append((r["headword"], r["text"]))
            continue
        for s in sections(r):
            if len(s.own.split()) >= 8:
                pairs["section"].append((s.title, s.own))
            for title, offset in s.nested:
                if offset < 400 or rng.random() < 0.5:
                    continue  # windows where the subsection lies deep are the point
                start = max(0, offset - rng.randint(800, LONG_CHARS - 300))
                start = s.body.rfind("\n", 0, start) + 1 if start else 0
                window = s.body[start:start + LONG_CHARS]
                if offset - start < len(window) - 200:
                    pairs["long"].append((title, window))
    return pairs


def cut_documents(docs: list[str], tokenizer) -> list[str]:
    """Cut each document after DOC_TEACHER_TOKENS teacher tokens (at a token end)."""
    out = []
    for text, enc in zip(docs, tokenizer.encode_batch(docs, add_special_tokens=False),
                         strict=True):
        if len(enc.ids) > DOC_TEACHER_TOKENS:
            text = text[:enc.offsets[DOC_TEACHER_TOKENS - 1][1]]
        out.append(text)
    return out


class PairData:
    """Tokenized pairs of one kind, batched by document length."""

    def __init__(self, pairs: list[tuple[str, str]], student_tok, teacher_tok,
                 batch_tokens: int, max_batch: int) -> None:
        queries = [q for q, _ in pairs]
        docs = cut_documents([d for _, d in pairs], teacher_tok)
        self.q = student_tok(queries, add_special_tokens=True)["input_ids"]
        self.d = [ids[:MAX_STUDENT_TOKENS] for ids in
                  student_tok(docs, add_special_tokens=True)["input_ids"]]
        self.queries, self.docs = queries, docs
        self.order = np.argsort([len(ids) for ids in self.d], kind="stable")
        self.batch_tokens, self.max_batch = batch_tokens, max_batch

    def __len__(self) -> int:
        return len(self.d)

    def sample(self, rng: random.Random) -> list[int]:
        """Indices of about ``batch_tokens`` worth of pairs with documents of similar
        length: a random draw from the neighbourhood of a random document."""
        pos = rng.randrange(len(self.order))
        width = len(self.d[self.order[pos]])
        n = max(8, min(self.max_batch, self.batch_tokens // max(width, 1)))
        lo = min(max(0, pos - 2 * n), max(0, len(self.order) - 4 * n))
        window = [int(i) for i in self.order[lo:lo + 4 * n]]
        return rng.sample(window, min(n, len(window)))


def left_pad(rows: list[list[int]], device, multiple: int = 32
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids and mask, the width rounded up to ``multiple`` (fewer shapes)."""
    width = -(-max(len(r) for r in rows) // multiple) * multiple
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def student_embed(model, rows: list[list[int]], device) -> torch.Tensor:
    """Mean-pooled, normalised last hidden states (as Mamba3Encoder computes them)."""
    ids, mask = left_pad(rows, device)
    hidden = model.hidden_states(ids, mask if bool((mask == 0).any()) else None).float()
    weights = mask.unsqueeze(-1).float()
    return F.normalize((hidden * weights).sum(1) / weights.sum(1), dim=-1)


@torch.no_grad()
def student_encode(model, rows: list[list[int]], device, batch_tokens: int = 32768,
                   autocast=None) -> torch.Tensor:
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), model.config.d_model, device=device)
    i = 0
    while i < len(order):
        n = max(1, min(512, batch_tokens // len(rows[order[min(len(order) - 1, i + 511)]])))
        idx = order[i:i + n]
        with autocast:
            out[idx] = student_embed(model, [rows[j] for j in idx], device)
        i += n
    return out


def dev_sets(records: list[dict], rng: random.Random, size: int) -> dict[str, tuple]:
    """Retrieval sets from the validation subset: headword -> entry, title -> section."""
    entries = [r for r in records if "sections" not in r and subset(r) == "valid"]
    secs = [s for r in records if "sections" in r and subset(r) == "valid" for s in sections(r)
            if len(s.own.split()) >= 8]
    titles: dict[str, int] = {}
    for s in secs:
        titles[s.title.lower()] = titles.get(s.title.lower(), 0) + 1
    secs = [s for s in secs if titles[s.title.lower()] == 1]
    out = {}
    for name, items in (("dict", [(e["headword"], e["text"]) for e in entries]),
                        ("section", [(s.title, s.own) for s in secs])):
        items = rng.sample(items, min(size, len(items)))
        if items:
            out[name] = ([q for q, _ in items], [d for _, d in items])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=Path, default=Path(".data/device"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--minutes", type=float, default=8.5, help="whole-run budget")
    parser.add_argument("--reserve", type=float, default=30, help="seconds kept for the end")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embedding-lr", type=float, default=3e-4)
    parser.add_argument("--warmup", type=float, default=0.05)
    parser.add_argument("--batch-tokens", type=int, default=16384,
                        help="document tokens per batch, at most")
    parser.add_argument("--max-batch", type=int, default=256)
    parser.add_argument("--mix", default="dict:0.45,section:0.3,long:0.25")
    parser.add_argument("--w-score", type=float, default=1.0)
    parser.add_argument("--w-contrast", type=float, default=0.3)
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--eval-every", type=float, default=60, help="seconds")
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
        print(f"[embed {time.time() - start:6.1f}s] {msg}", flush=True)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and args.memory_fraction:
        torch.cuda.set_per_process_memory_fraction(args.memory_fraction)
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cuda.matmul.allow_tf32 = True
    from transformers import AutoTokenizer

    student_tok = AutoTokenizer.from_pretrained(str(args.bundle / "embed_tokenizer"))
    vocab_map = json.loads((args.bundle / "embed_tokenizer" / "vocab_map.json").read_text())
    teacher_dtype = torch.float16 if device.type == "cuda" else torch.float32
    teacher, teacher_tok = teacher_lib.load_teacher(args.bundle / "teacher", device,
                                                    teacher_dtype)
    records = list(read_jsonl(args.bundle / "corpus.jsonl.xz"))
    if args.limit_records:
        records = records[::max(1, len(records) // args.limit_records)]
    pairs = build_pairs(records, rng)
    data = {k: PairData(v, student_tok, teacher_tok, args.batch_tokens, args.max_batch)
            for k, v in pairs.items() if v}
    log("pairs: " + ", ".join(f"{k} {len(v):,}" for k, v in data.items()))
    dev = dev_sets(records, rng, 2000 if not args.tiny else 50)
    del records
    mix = {k: float(v) for k, v in (item.split(":") for item in args.mix.split(","))
           if k in data}
    kinds, weights = list(mix), list(mix.values())

    config = model_config(len(student_tok), args.tiny)
    model = Mamba3ForCausalLM(config, device=device, tokenizer=student_tok)
    model.init_weights()
    with torch.no_grad():  # the teacher's word embeddings for the kept vocabulary
        rows = teacher.embeddings.word_embeddings.weight[torch.tensor(vocab_map, device=device)]
        model.backbone.embedding.weight[:len(vocab_map)] = rows.float()
    n_params = sum(p.numel() for p in model.parameters())
    log(f"student: {n_params / 1e6:.2f}M parameters; {json.dumps(config.to_dict())}")
    backend = check_scan_backend(device, config, log)
    log(f"Mamba-3 scan: {backend}")
    emb = model.backbone.embedding.weight
    others = [p for p in model.parameters() if p is not emb]
    optimizer = torch.optim.AdamW(
        [{"params": [emb], "lr_scale": args.embedding_lr / args.lr, "weight_decay": 0.0},
         {"params": others, "lr_scale": 1.0, "weight_decay": 0.01}],
        lr=args.lr, betas=(0.9, 0.98), fused=device.type == "cuda")
    amp = torch.autocast(device.type, dtype=torch.bfloat16)

    @torch.no_grad()
    def teacher_targets(kind: str, idx: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        d = data[kind]
        tq = teacher_lib.encode(teacher, teacher_tok, [d.queries[i] for i in idx])
        td = teacher_lib.encode(teacher, teacher_tok, [d.docs[i] for i in idx], whole=True)
        return tq, td

    def train_step(lr: float) -> dict[str, float]:
        kind = rng.choices(kinds, weights)[0]
        d = data[kind]
        idx = d.sample(rng)
        tq, td = teacher_targets(kind, idx)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        with amp:
            sq = student_embed(model, [d.q[i] for i in idx], device)
            sd = student_embed(model, [d.d[i] for i in idx], device)
        distill = (1 - (sq * tq).sum(-1)).mean() + (1 - (sd * td).sum(-1)).mean()
        s_scores = sq @ sd.T / args.temperature
        t_scores = tq @ td.T / args.temperature
        score = F.kl_div(F.log_softmax(s_scores, -1), F.log_softmax(t_scores, -1),
                         log_target=True, reduction="batchmean")
        labels = torch.arange(len(idx), device=device)
        contrast = F.cross_entropy(s_scores, labels)
        loss = distill + args.w_score * score + args.w_contrast * contrast
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        release_graphs()
        return {"kind": kind, "pairs": len(idx), "distill": distill.detach(),
                "score": score.detach(), "contrast": contrast.detach()}

    teacher_dev = {}
    for name, (queries, docs) in dev.items():
        docs = cut_documents(docs, teacher_tok)
        tq = teacher_lib.encode(teacher, teacher_tok, queries)
        td = teacher_lib.encode(teacher, teacher_tok, docs)
        teacher_dev[name] = ndcg_at_10(tq @ td.T)
    log(f"teacher dev nDCG@10: {json.dumps({k: round(v, 4) for k, v in teacher_dev.items()})}")

    def dev_score() -> dict[str, float]:
        model.eval()
        out = {}
        for name, (queries, docs) in dev.items():
            q = student_tok(queries, add_special_tokens=True)["input_ids"]
            dd = [ids[:MAX_STUDENT_TOKENS] for ids in
                  student_tok(cut_documents(docs, teacher_tok),
                              add_special_tokens=True)["input_ids"]]
            sq, sd = student_encode(model, q, device, autocast=amp), student_encode(
                model, dd, device, autocast=amp)
            out[name] = ndcg_at_10(sq @ sd.T)
        model.train()
        return out

    def robust_step(lr: float) -> dict:
        while True:
            try:
                return train_step(lr)
            except Exception as exc:
                optimizer.zero_grad(set_to_none=True)
                action = recover(exc, log)
                if action == "smaller" and args.batch_tokens > 1024:
                    args.batch_tokens //= 2
                    for d in data.values():
                        d.batch_tokens = args.batch_tokens
                    log(f"batch tokens now {args.batch_tokens}")
                elif action != "retry":
                    raise

    gc.collect()
    gc.freeze()  # the tokenized pairs stay out of every later collection
    model.train()
    train_start = time.time()
    budget = max(1.0, deadline - args.reserve - train_start)
    step, next_eval, best, curve = 0, train_start + args.eval_every, (-1.0, None, 0), []
    sums: dict[str, list] = {}
    pairs_seen = 0
    try:
        while True:
            progress = (time.time() - train_start) / budget
            if progress >= 1 or (args.max_steps and step >= args.max_steps):
                break
            out = robust_step(cosine_lr(progress, args.lr, args.warmup))
            step += 1
            kind = out.pop("kind")
            pairs_seen += out.pop("pairs")
            for k, v in out.items():
                sums.setdefault(f"{kind}_{k}", []).append(v)
            if time.time() >= next_eval or step == args.max_steps:
                scores = dev_score()
                point = {"step": step, "pairs": pairs_seen,
                         "seconds": round(time.time() - train_start, 1),
                         **{k: round(float(torch.stack(v).mean()), 4) for k, v in sums.items()},
                         **{f"dev_ndcg_{k}": round(v, 4) for k, v in scores.items()}}
                curve.append(point)
                log(json.dumps(point))
                sums = {}
                mean = float(np.mean(list(scores.values()))) if scores else 0.0
                if mean > best[0]:
                    best = (mean, {k: v.detach().cpu().clone()
                                   for k, v in model.state_dict().items()}, step)
                    save_checkpoint(model, args.out, "embed", {"partial": True, "curve": curve})
                next_eval = time.time() + args.eval_every
    except Exception as exc:  # keep what was learnt: save the best checkpoint so far
        log(f"training stopped early: {type(exc).__name__}: {str(exc)[:300]}")
    train_seconds = time.time() - train_start
    gc.unfreeze()
    if best[1] is not None:
        model.load_state_dict(best[1])
    log(f"{step} steps, {pairs_seen:,} pairs in {train_seconds:.0f}s; best dev nDCG at step "
        f"{best[2]}")
    metrics = {
        "parameters": n_params, "scan_backend": backend, "steps": step, "pairs_seen": pairs_seen,
        "train_seconds": round(train_seconds, 1),
        "best_step": best[2], "pairs": {k: len(v) for k, v in data.items()},
        "teacher_dev_ndcg": teacher_dev, "curve": curve,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "args": {k: str(v) for k, v in vars(args).items()}, "torch": torch.__version__,
    }
    save_checkpoint(model, args.out, "embed", metrics)
    log(f"saved to {args.out}")


if __name__ == "__main__":
    main()
