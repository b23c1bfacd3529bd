"""Pure PyTorch modules of the Mamba-3 hybrid model."""

from mamba3_integrations.modeling.attention import Attention
from mamba3_integrations.modeling.cache import (
    InferenceCache,
    KVCache,
    Mamba3LayerCache,
    SlidingWindowCache,
)
from mamba3_integrations.modeling.config import Mamba3Config
from mamba3_integrations.modeling.lm import CausalLMOutput, Mamba3LMHeadModel
from mamba3_integrations.modeling.mamba3_mixer import Mamba3Mixer
from mamba3_integrations.modeling.mlp import GatedMLP
from mamba3_integrations.modeling.norms import GatedRMSNorm, RMSNorm

__all__ = [
    "Attention",
    "CausalLMOutput",
    "GatedMLP",
    "GatedRMSNorm",
    "InferenceCache",
    "KVCache",
    "Mamba3Config",
    "Mamba3LMHeadModel",
    "Mamba3LayerCache",
    "Mamba3Mixer",
    "RMSNorm",
    "SlidingWindowCache",
]
