"""``rotate_channels``: the pairing of both rotary styles and the channels left alone."""

from __future__ import annotations

import math

import torch

from mamba3_integrations.kernels.rotary import rotate_channels


def test_neox_and_interleaved_pairings_and_pass_through():
    x = torch.arange(1.0, 7.0)  # 6 channels, the first 4 rotated (2 angles)
    angles = torch.tensor([math.pi / 2, math.pi])
    cos, sin = angles.cos(), angles.sin()
    neox = rotate_channels(x, cos, sin, interleaved=False)  # pairs (0, 2), (1, 3)
    gptj = rotate_channels(x, cos, sin, interleaved=True)  # pairs (0, 1), (2, 3)
    torch.testing.assert_close(neox, torch.tensor([-3.0, -2.0, 1.0, -4.0, 5.0, 6.0]))
    torch.testing.assert_close(gptj, torch.tensor([-2.0, 1.0, -3.0, -4.0, 5.0, 6.0]))


def test_rotation_keeps_norms_and_inverts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, 16, generator=g, dtype=torch.float64)
    angles = torch.randn(2, 3, 1, 6, generator=g, dtype=torch.float64)
    for interleaved in (False, True):
        y = rotate_channels(x, angles.cos(), angles.sin(), interleaved)
        torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
        back = rotate_channels(y, angles.cos(), -angles.sin(), interleaved)
        torch.testing.assert_close(back, x)
