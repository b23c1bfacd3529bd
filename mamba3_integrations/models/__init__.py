"""The default models shipped inside the package (see docs/default_models.md).

- ``mamba3-hybrid-mini``: a small Mamba-3 hybrid language model (Mamba-3 layers, one
  sliding-window and one global attention layer).
- ``mamba3-embed-mini``: a Mamba-3 text encoder (384 dimensions, mean pooling,
  L2-normalised) distilled from all-MiniLM-L6-v2.

Both folders load with ``Mamba3ForCausalLM.from_pretrained``; the embedder also with
``Mamba3Encoder.from_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

from mamba3_integrations.errors import CheckpointError

MODELS_DIR = Path(__file__).resolve().parent
LM_NAME = "mamba3-hybrid-mini"
EMBEDDING_NAME = "mamba3-embed-mini"


def _model_path(name: str) -> Path:
    folder = MODELS_DIR / name
    if not (folder / "config.json").is_file():
        raise CheckpointError(
            f"the default model {name!r} is not installed: {folder} has no config.json. "
            "Reinstall mamba3-integrations from a wheel or a checkout that includes "
            "mamba3_integrations/models/*, or pass the path of another model folder"
        )
    return folder


def default_lm_path() -> Path:
    """The folder of the shipped language model ``mamba3-hybrid-mini``."""
    return _model_path(LM_NAME)


def default_embedding_path() -> Path:
    """The folder of the shipped embedding model ``mamba3-embed-mini``."""
    return _model_path(EMBEDDING_NAME)


__all__ = ["EMBEDDING_NAME", "LM_NAME", "MODELS_DIR", "default_embedding_path",
           "default_lm_path"]
