"""Mamba-3 hybrid language and embedding models for LlamaIndex and LangChain RAG pipelines."""

from mamba3_integrations.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    Mamba3IntegrationsError,
    StoreError,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    """Lazy top-level access to the models, so that importing the package stays cheap."""
    if name == "Mamba3ForCausalLM":
        from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM

        return Mamba3ForCausalLM
    if name == "Mamba3Config":
        from mamba3_integrations.modeling.config import Mamba3Config

        return Mamba3Config
    raise AttributeError(f"module 'mamba3_integrations' has no attribute {name!r}")


__all__ = [
    "CheckpointError",
    "ConfigError",
    "InputError",
    "Mamba3Config",
    "Mamba3ForCausalLM",
    "Mamba3IntegrationsError",
    "StoreError",
    "__version__",
]
