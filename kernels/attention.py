"""Attention for the hybrid layers: causal prefill (global or sliding window) and decode.

The reference path is PyTorch's ``scaled_dot_product_attention`` with explicit boolean
masks. A sliding window is computed block by block over the queries, so that its
cost and memory grow linearly with the sequence length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(b, h_kv, l, d) -> (b, h_kv * n_rep, l, d): query head h reads kv head h // n_rep."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None) -> Tensor:
    """q (b, h, lq, d), k/v (b, h_kv, lk, d), mask (b, lq, lk) True = attend."""
    n_rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(
        q, _repeat_kv(k, n_rep), _repeat_kv(v, n_rep), attn_mask=mask.unsqueeze(1), scale=scale
    )


def attention_mask(
    q_pos: Tensor, k_pos: Tensor, causal: bool, window: int | None, key_valid: Tensor | None
) -> Tensor:
    """Boolean (b, lq, lk) mask from absolute positions.

    A query may see key j when j <= i (causal), i - j < window (sliding window) and
    the key is not padding. Every query keeps itself, so that no row is empty.
    """
    diff = q_pos[:, None] - k_pos[None, :]
    allowed = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        allowed &= diff >= 0
    if window is not None:
        allowed &= diff < window
    allowed = allowed.unsqueeze(0)
    if key_valid is not None:
        allowed = allowed & key_valid[:, None, :]
    return allowed | (diff == 0).unsqueeze(0)


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    window: int | None = None,
    key_padding_mask: Tensor | None = None,
    softmax_scale: float | None = None,
) -> Tensor:
    """Attention of the last ``lq`` positions of a sequence over its ``lk`` positions.

    q (b, lq, h, d); k, v (b, lk, h_kv, d) with lq <= lk: query i sits at position
    ``lk - lq + i`` (prefill: lq = lk; decode: lq = 1). ``key_padding_mask`` (b, lk)
    is True for real tokens; ``window`` limits each query to the ``window`` most
    recent positions, itself included, at a cost linear in the length. Returns
    (b, lq, h, d).
    """
    lq, lk = q.shape[1], k.shape[1]
    offset = lk - lq
    if offset < 0:
        raise ValueError(f"more queries ({lq}) than keys ({lk})")
    if window is not None and not causal:
        raise ValueError("a sliding window needs causal attention")
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    k_pos = torch.arange(lk, device=q.device)
    block = lq if window is None else max(64, min(window, 1024))
    outs = []
    for start in range(0, lq, block):
        end = min(start + block, lq)
        k_start = 0 if window is None else max(0, offset + start - window + 1)
        k_end = offset + end if causal else lk
        valid = None if key_padding_mask is None else key_padding_mask[:, k_start:k_end]
        mask = attention_mask(k_pos[offset + start:offset + end], k_pos[k_start:k_end],
                              causal, window, valid)
        outs.append(_sdpa(qt[:, :, start:end], kt[:, :, k_start:k_end],
                          vt[:, :, k_start:k_end], mask, softmax_scale))
    return torch.cat(outs, dim=2).transpose(1, 2)
