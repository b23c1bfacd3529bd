"""Runtime: loading and saving, generation, sampling, streaming and stop strings."""

from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM
from mamba3_integrations.runtime.generation import GenerationConfig, generate, stream_tokens
from mamba3_integrations.runtime.sampling import SamplingParams

__all__ = [
    "GenerationConfig",
    "Mamba3ForCausalLM",
    "SamplingParams",
    "generate",
    "stream_tokens",
]
