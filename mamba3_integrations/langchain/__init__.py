"""LangChain components. Names load lazily: importing one does not import the others."""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "ChatMamba3": "chat_models",
    "Mamba3Embeddings": "embeddings",
    "Mamba3LLM": "llms",
    "Mamba3SemanticTextSplitter": "text_splitter",
    "OrderPreservingCompressor": "compressor",
    "PGVector": "vectorstores",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
