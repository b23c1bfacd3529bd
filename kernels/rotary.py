"""Rotary embedding of attention q/k channels by given angles (PyTorch; the decode kernels'
reference and the model's rotary share it)."""

from __future__ import annotations

import torch
from torch import Tensor


def rotate_channels(x: Tensor, cos: Tensor, sin: Tensor, interleaved: bool) -> Tensor:
    """Rotate the first ``2 * cos.shape[-1]`` channels of ``x`` by the angles whose cos and
    sin are given (broadcast against ``x`` without its last axis); the rest pass through.

    ``interleaved`` pairs adjacent channels (GPT-J); otherwise channel i pairs with
    ``i + dim/2`` (GPT-NeoX)."""
    dim = 2 * cos.shape[-1]
    rot, rest = x[..., :dim], x[..., dim:]
    if interleaved:
        pairs = rot.unflatten(-1, (-1, 2))
        x0, x1 = pairs[..., 0], pairs[..., 1]
        rot = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    else:
        x0, x1 = rot.chunk(2, dim=-1)
        rot = torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)
    return torch.cat((rot, rest), dim=-1)
