"""Loading and saving model folders in the official ``mamba_ssm`` format.

A folder holds ``config.json`` and the weights as ``model.safetensors``,
``pytorch_model.bin`` or a sharded set with its ``*.index.json``; a tokenizer saved
beside them is picked up. Every mismatch raises ``CheckpointError`` naming it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mamba3_integrations.errors import CheckpointError, ConfigError
from mamba3_integrations.modeling.config import Mamba3Config

CONFIG_FILE = "config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model")


def resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """Accept a torch dtype or its name ("bfloat16", "float32", ...)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use e.g. 'float32' or 'bfloat16'")
    return resolved


def resolve_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder, or a hub snapshot when the name is not a folder and a hub answers."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; from_pretrained needs the model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path)))
    except Exception as exc:  # no hub client, no network, unknown repo: one clear message
        raise CheckpointError(
            f"{str(name_or_path)!r} is not a local folder and could not be fetched from a hub "
            f"({type(exc).__name__}: {exc}); pass the path of a folder with config.json"
        ) from exc


def _read_weight_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights from {path}: {exc}") from exc


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder, shards included, in load order."""
    for index_name in INDEX_FILES:
        index = folder / index_name
        if index.exists():
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not (folder / s).exists()]
            if missing:
                raise CheckpointError(f"{index} names shard(s) {missing} that are not in {folder}")
            return [folder / s for s in shards]
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            return [folder / name]
    raise CheckpointError(
        f"no weights in {folder}: expected one of {list(WEIGHT_FILES + INDEX_FILES)}"
    )


def load_state_dict(folder: Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for path in weight_files(folder):
        state.update(_read_weight_file(path))
    return state


def load_config(folder: Path) -> Mamba3Config:
    path = folder / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} has no {CONFIG_FILE}; is it a model folder?")
    try:
        return Mamba3Config.from_json_file(path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def check_state_dict(model: nn.Module, state: dict[str, Tensor], tied: Iterable[str] = ()) -> None:
    """Raise CheckpointError listing missing and unexpected tensors and bad shapes."""
    expected = model.state_dict()
    tied = set(tied)
    missing = sorted(k for k in expected if k not in state and k not in tied)
    unexpected = sorted(k for k in state if k not in expected)
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    if shapes:
        problems.append("shape mismatches: " + "; ".join(shapes))
    if problems:
        raise CheckpointError(
            "checkpoint does not match its config.json: " + " | ".join(problems)
        )


def load_tokenizer(folder: Path) -> Any | None:
    """The tokenizer saved in the folder (through transformers), or None if there is none."""
    if not any((folder / name).exists() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:
        raise CheckpointError(f"cannot load the tokenizer saved in {folder}: {exc}") from exc


def save_weights(state: dict[str, Tensor], folder: Path, safe_serialization: bool) -> None:
    """Write ``model.safetensors`` (shared tensors saved once) or ``pytorch_model.bin``."""
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if safe_serialization:
        from safetensors.torch import save_file

        seen: dict[int, str] = {}
        unique = {}
        for key, tensor in state.items():
            ptr = tensor.untyped_storage().data_ptr()
            if ptr in seen:
                continue
            seen[ptr] = key
            unique[key] = tensor
        save_file(unique, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
