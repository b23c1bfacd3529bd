"""Shared helpers of the training and evaluation scripts: reading the corpus written by
``build_corpus.py``, turning it into LM text, section trees, and sharded checkpoints."""

from __future__ import annotations

import gc
import hashlib
import json
import lzma
import math
import os
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

VALID_PERCENT = 2  # of the train split, set aside to pick the best checkpoint


def read_jsonl(path: Path) -> Iterator[dict]:
    """Records of a ``.jsonl`` or ``.jsonl.xz`` file."""
    opener = lzma.open if path.suffix == ".xz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def find(folder: Path, stem: str) -> Path:
    """``folder/stem.jsonl`` or ``folder/stem.jsonl.xz``, whichever exists."""
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.xz"):
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"no {stem}.jsonl(.xz) in {folder}; run scripts/build_corpus.py")


def is_valid(key: str) -> bool:
    """Whether a train-split record belongs to the validation subset (by hash)."""
    digest = hashlib.sha1(f"valid:{key}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < VALID_PERCENT


def doc_key(record: dict) -> str:
    return record["id"] if "id" in record else f"dict:{record['headword'].lower()}"


def subset(record: dict) -> str:
    """'heldout', 'valid' or 'train'."""
    if record["split"] == "heldout":
        return "heldout"
    return "valid" if is_valid(doc_key(record)) else "train"


def doc_text(doc: dict) -> str:
    """A documentation page as Markdown-like text: headings, then their text."""
    parts = []
    for s in doc["sections"]:
        if s["title"]:
            parts.append("#" * max(1, s["level"]) + " " + s["title"])
        if s["text"]:
            parts.append(s["text"])
    return "\n\n".join(parts)


def entry_text(entry: dict) -> str:
    """A dictionary entry as text: the headword, then the entry."""
    return f"{entry['headword']}\n{entry['text']}"


def record_text(record: dict) -> str:
    return doc_text(record) if "sections" in record else entry_text(record)


@dataclass
class Section:
    """A section with everything nested under it, headings removed from ``body``."""

    doc_id: str
    title: str
    level: int
    own: str  # the text directly under the heading
    body: str  # own text plus the text of every nested subsection
    nested: list[tuple[str, int]]  # (title, character offset in body) of nested sections


def sections(doc: dict) -> list[Section]:
    """Every titled section of a document with its nested text (document order)."""
    secs = doc["sections"]
    out = []
    for i, s in enumerate(secs):
        if not s["title"]:
            continue
        parts, nested, length = [s["text"]] if s["text"] else [], [], len(s["text"])
        for t in secs[i + 1:]:
            if t["level"] <= s["level"]:
                break
            if t["title"]:
                nested.append((t["title"], length + 2 if parts else 0))
            if t["text"]:
                parts.append(t["text"])
                length += len(t["text"]) + (2 if len(parts) > 1 else 0)
        out.append(Section(doc["id"], s["title"], s["level"], s["text"], "\n\n".join(parts),
                           nested))
    return out


def page_body(doc: dict) -> tuple[str, list[tuple[str, int]]]:
    """A whole document without headings, and (title, character offset) of its sections."""
    parts, offsets, length = [], [], 0
    for s in doc["sections"]:
        if s["title"]:
            offsets.append((s["title"], length + 2 if parts else 0))
        if s["text"]:
            length += len(s["text"]) + (2 if parts else 0)
            parts.append(s["text"])
    return "\n\n".join(parts), offsets


def token_streams(records: list[dict], tokenizer) -> dict[tuple[str, str], tuple[np.ndarray, int]]:
    """``(subset, kind) -> (token ids, UTF-8 bytes of the text)`` with kind 'docs' or 'dict';
    each text is followed by EOS."""
    eos = tokenizer.eos_token_id
    texts: dict[tuple[str, str], list[str]] = {}
    for r in records:
        kind = "docs" if "sections" in r else "dict"
        texts.setdefault((subset(r), kind), []).append(record_text(r))
    streams = {}
    for key, group in sorted(texts.items()):
        ids: list[int] = []
        for i in range(0, len(group), 4096):
            for row in tokenizer(group[i:i + 4096], add_special_tokens=False)["input_ids"]:
                ids.extend(row)
                ids.append(eos)
        nbytes = sum(len(t.encode()) + 1 for t in group)
        streams[key] = (np.asarray(ids, dtype=np.int32), nbytes)
    return streams


# ----------------------------------------------------------------- checkpoints
def save_shards(state: dict[str, torch.Tensor], folder: Path, prefix: str,
                max_bytes: int, metadata: dict[str, str] | None = None,
                index: bool = True) -> list[Path]:
    """Write ``state`` as safetensors shards ``<prefix>-0000i-of-0000n.safetensors`` of at
    most ``max_bytes`` (a tensor is never split), ``metadata`` in the first, and with
    ``index`` the ``<prefix>.safetensors.index.json``; return the shard paths."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    groups: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state, key=lambda k: -state[k].numel() * state[k].element_size()):
        nbytes = state[key].numel() * state[key].element_size()
        if nbytes > max_bytes:
            raise ValueError(f"{key} has {nbytes} bytes, more than a shard may hold")
        if size + nbytes > max_bytes and groups[-1]:
            groups.append({})
            size = 0
        groups[-1][key] = state[key].detach().contiguous().cpu()
        size += nbytes
    n = len(groups)
    paths, weight_map = [], {}
    for i, group in enumerate(groups):
        name = f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
        meta = {"format": "pt", **(metadata or {})} if i == 0 else {"format": "pt"}
        save_file(group, str(folder / name), metadata=meta)
        paths.append(folder / name)
        weight_map.update({k: name for k in group})
    if index:
        total = sum(t.numel() * t.element_size() for t in state.values())
        content = {"metadata": {"total_size": total},
                   "weight_map": dict(sorted(weight_map.items()))}
        (folder / f"{prefix}.safetensors.index.json").write_text(
            json.dumps(content, indent=2) + "\n")
    return paths


def unique_state(model: torch.nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The state dict on the CPU with tied tensors stored once; matrices cast to ``dtype``
    (vectors and ``B_bias``/``C_bias``, which the model keeps in float32, stay float32)."""
    state, seen = {}, set()
    for key, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        keep_fp32 = tensor.dim() < 2 or key.endswith(("B_bias", "C_bias"))
        state[key] = tensor.detach().cpu().to(torch.float32 if keep_fp32 else dtype)
    return state


def save_checkpoint(model: torch.nn.Module, folder: Path, prefix: str, metrics: dict) -> None:
    """bf16 shards of at most 15 MB without an index (a device call returns at most 8
    files); the config and ``metrics`` go in the first shard's metadata."""
    save_shards(unique_state(model, torch.bfloat16), folder, prefix, 15_000_000,
                {"config": json.dumps(model.config.to_dict()), "metrics": json.dumps(metrics)},
                index=False)


def release_graphs() -> None:
    """Free autograd graphs kept alive only by reference cycles (the Triton scan's
    autograd context holds one of its outputs), which otherwise pile up on the GPU
    between the collector's rare full passes. Cheap after ``gc.freeze()``."""
    gc.collect()


def check_scan_backend(device: torch.device, config, log) -> str:
    """Use the Triton scan on CUDA when it runs and matches the reference on a mixer of
    the model's shape (forward and gradients); otherwise force the PyTorch reference."""
    if device.type != "cuda":
        return "reference (CPU)"
    from mamba3_integrations.kernels import mamba3_siso
    from mamba3_integrations.modeling import Mamba3Mixer

    if mamba3_siso._triton is None:
        os.environ["MAMBA3_DISABLE_TRITON"] = "1"
        return "reference (Triton not importable)"
    torch.manual_seed(0)
    mixer = Mamba3Mixer(config.d_model, **config.mixer_kwargs(), device=device)
    u = torch.randn(2, 300, config.d_model, device=device)
    results = []
    try:
        for disable in ("1", "0"):
            os.environ["MAMBA3_DISABLE_TRITON"] = disable
            mixer.zero_grad()
            x = u.clone().requires_grad_(True)
            out = mixer(x)
            out.square().mean().backward()
            grads = [x.grad] + [p.grad for p in mixer.parameters()]
            results.append([out.detach()] + [g.detach() for g in grads])
    except Exception as exc:  # a kernel that does not compile or run here
        os.environ["MAMBA3_DISABLE_TRITON"] = "1"
        log(f"Triton scan failed: {type(exc).__name__}: {str(exc)[:300]}")
        return "reference (Triton failed)"
    errors = [float((b - a).norm() / a.norm().clamp_min(1e-12))
              for a, b in zip(*results, strict=True)]
    log(f"Triton vs reference scan on a mixer: max relative error {max(errors):.2e}")
    if max(errors) < 2e-2:
        os.environ["MAMBA3_DISABLE_TRITON"] = "0"
        return "triton"
    os.environ["MAMBA3_DISABLE_TRITON"] = "1"
    return f"reference (Triton differed by {max(errors):.2e})"


def recover(exc: BaseException, log) -> str:
    """After a failed training step: 'smaller' when out of memory (the caller shrinks its
    batch), 'retry' after switching a failing GPU path to its PyTorch fallback
    (FlexAttention -> SDPA, Triton scan -> reference), else 'stop'."""
    log(f"step failed: {type(exc).__name__}: {str(exc)[:300]}")
    if isinstance(exc, torch.OutOfMemoryError):
        release_graphs()
        torch.cuda.empty_cache()
        return "smaller"
    where = "".join(traceback.format_exception(exc)).lower()
    from mamba3_integrations.kernels import attention

    if "flex" in where and attention._flex_supported is not _no_flex:
        attention._flex_supported = _no_flex
        log("attention falls back to SDPA with explicit masks")
        return "retry"
    if "triton" in where and os.environ.get("MAMBA3_DISABLE_TRITON") != "1":
        os.environ["MAMBA3_DISABLE_TRITON"] = "1"
        log("the Mamba-3 scan falls back to the PyTorch reference")
        return "retry"
    return "stop"


def _no_flex(q: torch.Tensor) -> bool:
    return False


def cosine_lr(progress: float, peak: float, warmup: float, floor: float = 0.1) -> float:
    """Linear warmup over the first ``warmup`` fraction, then cosine down to ``floor*peak``."""
    if progress < warmup:
        return peak * max(progress / warmup, 0.01)
    t = min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def load_shards(folder: Path, prefix: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors of shards written by ``save_shards`` and the first shard's metadata."""
    from safetensors import safe_open

    state, metadata = {}, {}
    shards = sorted(folder.glob(f"{prefix}-*-of-*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"no {prefix}-*-of-*.safetensors shards in {folder}")
    for i, path in enumerate(shards):
        with safe_open(str(path), framework="pt") as f:
            if i == 0:
                metadata = f.metadata() or {}
            state.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    return state, metadata
