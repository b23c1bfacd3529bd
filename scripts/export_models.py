"""Turn the shards of a training run into a shipped model folder.

Reads ``<run>/<prefix>-*-of-*.safetensors`` (config and training figures in the first
shard's metadata), writes ``config.json``, bf16 shards of at most 15 MB named
``model-0000i-of-0000n.safetensors`` with ``model.safetensors.index.json``, and the
tokenizer; checks that the folder loads with ``Mamba3ForCausalLM.from_pretrained``;
writes the training figures to ``benchmarks/results/training_<name>.json``. The model
card (``README.md``) of the folder is left as it is.

    python scripts/export_models.py --lm-run runs/lm --embed-run runs/embed
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_io import load_shards, save_shards  # noqa: E402

from mamba3_integrations import Mamba3Config, Mamba3ForCausalLM  # noqa: E402
from mamba3_integrations.models import EMBEDDING_NAME, LM_NAME, MODELS_DIR  # noqa: E402

SHARD_BYTES = 15_000_000
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt", "chat_template.jinja")


def export(run: Path, prefix: str, tokenizer: Path, dest: Path, results: Path) -> None:
    state, metadata = load_shards(run, prefix)
    config = Mamba3Config.from_dict(json.loads(metadata["config"]))
    for old in dest.glob("model*.safetensors*"):
        old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    config.to_json_file(dest / "config.json")
    save_shards(state, dest, "model", SHARD_BYTES)
    for name in TOKENIZER_FILES:
        if (tokenizer / name).exists():
            shutil.copy(tokenizer / name, dest / name)
    model = Mamba3ForCausalLM.from_pretrained(dest)
    ids = torch.tensor([model.tokenizer("Hello world")["input_ids"]])
    assert torch.isfinite(model(ids).logits).all()
    metrics = json.loads(metadata.get("metrics", "{}"))
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({"model": dest.name, "config": config.to_dict(),
                                   **metrics}, indent=2) + "\n")
    size = sum(p.stat().st_size for p in dest.glob("model-*.safetensors"))
    print(f"{dest}: {sum(t.numel() for t in state.values()) / 1e6:.2f}M parameters, "
          f"{size / 1e6:.1f} MB of weights in {len(list(dest.glob('model-*')))} shards")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lm-run", type=Path)
    parser.add_argument("--embed-run", type=Path)
    parser.add_argument("--bundle", type=Path, default=Path(".data/device"))
    parser.add_argument("--dest", type=Path, default=MODELS_DIR)
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.lm_run:
        export(args.lm_run, "lm", args.bundle / "lm_tokenizer", args.dest / LM_NAME,
               args.results / "training_lm.json")
    if args.embed_run:
        export(args.embed_run, "embed", args.bundle / "embed_tokenizer",
               args.dest / EMBEDDING_NAME, args.results / "training_embed.json")


if __name__ == "__main__":
    main()
