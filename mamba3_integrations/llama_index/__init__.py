"""LlamaIndex components. Names load lazily: importing one does not import the others."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Mamba3Embedding": "embedding",
    "Mamba3LLM": "llm",
    "Mamba3SemanticNodeParser": "node_parser",
    "OrderPreservingPostprocessor": "postprocessor",
    "PGVectorStore": "vector_store",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
