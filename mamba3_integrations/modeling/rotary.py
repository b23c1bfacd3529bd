"""Rotary position embedding of the attention layers (GPT-NeoX or GPT-J pairing)."""

from __future__ import annotations

import torch
from torch import Tensor

from mamba3_integrations.kernels.rotary import rotate_channels


class RotaryEmbedding:
    """Rotates the first ``dim`` channels of q and k by position-dependent angles.

    ``inv_freq = 1 / base^(2i/dim)`` and the angles are computed in float32.
    ``interleaved`` pairs adjacent channels (GPT-J); otherwise channel i pairs with
    ``i + dim/2`` (GPT-NeoX).
    """

    def __init__(self, dim: int, base: float = 10000.0, interleaved: bool = False) -> None:
        if dim % 2:
            raise ValueError(f"rotary_emb_dim must be even, got {dim}")
        self.dim, self.base, self.interleaved = dim, base, interleaved

    def cos_sin(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (b, l) integer -> cos, sin (b, l, dim/2) float32."""
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.dim, 2, dtype=torch.float32,
                                                     device=positions.device) / self.dim))
        angles = positions.to(torch.float32).unsqueeze(-1) * inv_freq
        return angles.cos(), angles.sin()

    def apply(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """x (b, l, h, d); cos/sin (b, l, dim/2)."""
        cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)
        return rotate_channels(x, cos, sin, self.interleaved)
