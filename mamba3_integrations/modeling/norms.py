"""Normalisation layers with the official semantics (RMSNorm, gated RMSNorm, LayerNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def rms_norm(
    x: Tensor, weight: Tensor, eps: float, group_size: int | None = None, z: Tensor | None = None
) -> Tensor:
    """RMS-normalise the last axis (or groups of ``group_size`` within it), times weight,
    then optionally times ``silu(z)``.

    Half-precision inputs are computed in float32; the result has the input dtype.
    """
    xf = x if x.dtype == torch.float64 else x.float()
    grouped = group_size is not None and group_size != x.shape[-1]
    if grouped:
        xf = xf.unflatten(-1, (-1, group_size))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    if grouped:
        xf = xf.flatten(-2)
    out = xf * weight.to(xf.dtype)
    if z is not None:
        out = out * F.silu(z.to(xf.dtype))
    return out.to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last axis: ``x / rms(x) * weight``."""

    def __init__(self, dim: int, eps: float = 1e-5, device=None, dtype=None) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class GatedRMSNorm(nn.Module):
    """Grouped RMSNorm then gate: ``rmsnorm_per_group(y) * weight * silu(z)``."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5, device=None,
                 dtype=None) -> None:
        super().__init__()
        self.eps, self.group_size = eps, group_size
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, y: Tensor, z: Tensor) -> Tensor:
        return rms_norm(y, self.weight, self.eps, self.group_size, z=z)


def make_norm(dim: int, rms: bool, eps: float, device=None, dtype=None) -> nn.Module:
    """The block norm of the official model: RMSNorm or LayerNorm."""
    if rms:
        return RMSNorm(dim, eps=eps, device=device, dtype=dtype)
    return nn.LayerNorm(dim, eps=eps, device=device, dtype=dtype)
