"""The residual block of the official model: add -> norm -> mixer, then add -> norm -> MLP.

In the decode step the add -> norm and the projection that the next module starts with
(the mixer's ``in_proj``, the MLP's ``fc1``; the LM head after the final norm) run as one
kernel where ``decode_norm_linear`` applies; the module then takes the projected row.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mamba3_integrations.kernels.add_rms_norm import add_rms_norm
from mamba3_integrations.kernels.fused_decode import fused_decode_enabled
from mamba3_integrations.kernels.linear_decode import (
    norm_linear_decode_supported,
    norm_linear_decode_triton,
)
from mamba3_integrations.modeling.attention import Attention
from mamba3_integrations.modeling.cache import LayerCache
from mamba3_integrations.modeling.mamba3_mixer import Mamba3Mixer
from mamba3_integrations.modeling.mlp import GatedMLP
from mamba3_integrations.modeling.norms import RMSNorm


def decode_norm_linear(hidden: Tensor, residual: Tensor | None, norm: nn.Module,
                       layer: nn.Linear, residual_in_fp32: bool,
                       prefetch: Tensor | None = None) -> tuple[Tensor, Tensor] | None:
    """``(layer(norm(hidden + residual)), hidden + residual)`` for one decode token in one
    kernel (``norm_linear_decode_triton``; the residual in float32 when
    ``residual_in_fp32``): an RMSNorm where ``norm_linear_decode_supported`` (fused decode
    on, one row); None elsewhere."""
    if isinstance(norm, RMSNorm) and norm_linear_decode_supported(
            hidden, residual, norm.weight, layer.weight, layer.bias):
        return norm_linear_decode_triton(hidden, residual, norm.weight, norm.eps, layer.weight,
                                         layer.bias, residual_in_fp32, prefetch=prefetch)
    return None


class Block(nn.Module):
    """One layer: ``residual = hidden + residual; hidden = mixer(norm(residual))`` and the
    same around the MLP when there is one. Returns ``(hidden, residual)``."""

    def __init__(self, mixer: Mamba3Mixer | Attention, norm: nn.Module,
                 mlp: nn.Module | None, norm2: nn.Module | None,
                 residual_in_fp32: bool) -> None:
        super().__init__()
        self.norm, self.mixer = norm, mixer
        if mlp is not None:
            self.norm2, self.mlp = norm2, mlp
        else:
            self.mlp = None
        self.residual_in_fp32 = residual_in_fp32

    def _add_norm(self, hidden: Tensor, residual: Tensor | None,
                  norm: nn.Module) -> tuple[Tensor, Tensor]:
        residual = hidden + residual if residual is not None else hidden
        hidden = norm(residual.to(norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.to(torch.float32)
        return hidden, residual

    def _mlp(self, hidden: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        if self.mlp is None:
            return hidden, residual
        hidden, residual = self._add_norm(hidden, residual, self.norm2)
        return self.mlp(hidden), residual

    def forward(self, hidden: Tensor, residual: Tensor | None, cache: LayerCache | None = None,
                start: int = 0, pad_lengths: Tensor | None = None,
                token_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Over a sequence (b, l, d); see the mixers' ``forward`` for the arguments."""
        hidden, residual = self._add_norm(hidden, residual, self.norm)
        if isinstance(self.mixer, Attention):
            hidden = self.mixer(hidden, cache, start=start, pad_lengths=pad_lengths,
                                token_mask=token_mask)
        else:
            hidden = self.mixer(hidden, cache, token_mask=token_mask)
        return self._mlp(hidden, residual)

    def _step_add_norm(self, hidden: Tensor, residual: Tensor | None,
                       norm: nn.Module) -> tuple[Tensor, Tensor]:
        """``_add_norm`` for decode: one fused kernel for RMSNorm where enabled."""
        if isinstance(norm, RMSNorm) and fused_decode_enabled(hidden):
            return add_rms_norm(hidden, residual, norm.weight, norm.eps, self.residual_in_fp32)
        return self._add_norm(hidden, residual, norm)

    def _step_input(self, hidden: Tensor, residual: Tensor | None, norm: nn.Module,
                    layer: nn.Linear | None,
                    prefetch: Tensor | None = None) -> tuple[Tensor, Tensor, bool]:
        """``_step_add_norm`` and the next module's first projection ``layer`` in one
        kernel where ``decode_norm_linear`` applies: ``(layer(normed), residual, True)``;
        else ``(normed, residual, False)``."""
        fused = None if layer is None else decode_norm_linear(
            hidden, residual, norm, layer, self.residual_in_fp32, prefetch)
        if fused is not None:
            return *fused, True
        return *self._step_add_norm(hidden, residual, norm), False

    def step(self, hidden: Tensor, residual: Tensor | None, cache: LayerCache, start: int,
             pad_lengths: Tensor | None) -> tuple[Tensor, Tensor]:
        """One token (b, d): the recurrent step for Mamba-3, cached attention otherwise."""
        prefetch = (self.mixer.step_prefetch(cache) if isinstance(self.mixer, Mamba3Mixer)
                    else None)
        hidden, residual, projected = self._step_input(hidden, residual, self.norm,
                                                       self.mixer.in_proj, prefetch)
        if isinstance(self.mixer, Attention):
            hidden = self.mixer(hidden.unsqueeze(1), cache, start=start,
                                pad_lengths=pad_lengths, projected=projected).squeeze(1)
        else:
            hidden = self.mixer.step(hidden, cache, projected=projected)
        if self.mlp is None:
            return hidden, residual
        gated = isinstance(self.mlp, GatedMLP)
        hidden, residual, projected = self._step_input(hidden, residual, self.norm2,
                                                       self.mlp.fc1 if gated else None)
        if projected:
            return self.mlp.step(hidden, projected=True), residual
        step = getattr(self.mlp, "step", self.mlp)
        return step(hidden), residual
