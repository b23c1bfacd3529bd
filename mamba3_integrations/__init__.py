"""Mamba-3 hybrid language and embedding models for LlamaIndex and LangChain RAG pipelines."""

from mamba3_integrations.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    Mamba3IntegrationsError,
    StoreError,
)

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Mamba3IntegrationsError",
    "StoreError",
    "__version__",
]
