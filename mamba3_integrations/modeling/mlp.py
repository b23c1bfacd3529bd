"""Gated MLP of the hybrid blocks: ``fc2(y * silu(gate))`` with ``[y, gate] = fc1(x)``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mamba3_integrations.kernels.linear_decode import decode_linear


class GatedMLP(nn.Module):
    """Official GatedMLP: hidden size rounded up to a multiple of 128, no biases."""

    def __init__(self, d_model: int, hidden: int, multiple_of: int = 128, device=None,
                 dtype=None) -> None:
        super().__init__()
        hidden = -(-hidden // multiple_of) * multiple_of
        self.fc1 = nn.Linear(d_model, 2 * hidden, bias=False, device=device, dtype=dtype)
        self.fc2 = nn.Linear(hidden, d_model, bias=False, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        y, gate = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(y * F.silu(gate))

    def step(self, x: Tensor, projected: bool = False) -> Tensor:
        """``forward`` for one decode token (b, d): one row through the GEMV kernel.
        ``projected``: x is ``fc1(x)`` already (the block's fused norm and ``fc1``)."""
        y, gate = (x if projected else decode_linear(x, self.fc1.weight)).chunk(2, dim=-1)
        return decode_linear(y * F.silu(gate), self.fc2.weight)
