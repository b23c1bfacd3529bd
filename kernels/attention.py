"""Attention for the hybrid layers: causal prefill (global or sliding window) and decode.

``attention`` picks the implementation:

- CUDA, no window and no padding: ``scaled_dot_product_attention`` (flash backend,
  GQA without copying keys), or plain SDPA for a single query.
- CUDA with a sliding window, padding or more keys than queries (at least 128 queries):
  FlexAttention with a block mask built directly from the window, so the cost grows
  linearly with the length.
- Otherwise (CPU, float64, head sizes FlexAttention does not take): the reference, SDPA
  with explicit boolean masks, a sliding window computed block by block over the queries.

``attention_decode`` attends one new query per row over a whole cache buffer with a
validity mask (a KV cache of fixed capacity or a ring buffer, in any slot order); it has
no data-dependent shapes, so it can be captured in a CUDA graph.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

FLEX_BLOCK = 128


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
    recent positions, itself included, at a cost linear in the length. Every query
    keeps at least itself. Returns (b, lq, h, d).
    """
    lq, lk = q.shape[1], k.shape[1]
    if lk < lq:
        raise ValueError(f"more queries ({lq}) than keys ({lk})")
    if window is not None and not causal:
        raise ValueError("a sliding window needs causal attention")
    if lq == 1:
        return _single_query(q, k, v, window, key_padding_mask, softmax_scale)
    if key_padding_mask is None and window is None and (lq == lk or not causal):
        return _sdpa_plain(q, k, v, causal, softmax_scale)  # fused kernels, O(L) memory
    # Fewer queries than a block: FlexAttention's decoding kernel found no valid
    # configuration for some of these on torch 2.11; the reference is cheap there.
    on_gpu = q.is_cuda and q.dtype in (torch.bfloat16, torch.float16, torch.float32)
    if on_gpu and lq >= FLEX_BLOCK and _flex_supported(q):
        return _flex_attention(q, k, v, causal, window, key_padding_mask, softmax_scale)
    return attention_reference(q, k, v, causal, window, key_padding_mask, softmax_scale)


def attention_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    causal: bool = True,
    window: int | None = None,
    key_padding_mask: Tensor | None = None,
    softmax_scale: float | None = None,
) -> Tensor:
    """``attention`` through SDPA with explicit masks: the CPU path and the oracle."""
    lq, lk = q.shape[1], k.shape[1]
    offset = lk - lq
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    k_pos = torch.arange(lk, device=q.device)
    # Query blocks bound the mask: O(block * keys) memory, O(L * window) work for windows.
    block = min(lq, 1024) if window is None else max(64, min(window, 1024))
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


def _sdpa_plain(q: Tensor, k: Tensor, v: Tensor, causal: bool, scale: float | None) -> Tensor:
    """No mask (causal with lq == lk is top-left aligned, which is then the same)."""
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    out = F.scaled_dot_product_attention(qt, kt, vt, is_causal=causal, scale=scale,
                                         enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def _single_query(q: Tensor, k: Tensor, v: Tensor, window: int | None,
                  key_padding_mask: Tensor | None, scale: float | None) -> Tensor:
    """One query at the last position: it sees the last ``window`` keys (or all)."""
    if window is not None and k.shape[1] > window:
        k, v = k[:, -window:], v[:, -window:]
        if key_padding_mask is not None:
            key_padding_mask = key_padding_mask[:, -window:]
    if key_padding_mask is not None:
        key_padding_mask = key_padding_mask.clone()
        key_padding_mask[:, -1] = True  # the query keeps itself
    return attention_decode(q, k, v, key_padding_mask, scale)


def attention_decode(q: Tensor, k: Tensor, v: Tensor, key_valid: Tensor | None,
                     softmax_scale: float | None = None) -> Tensor:
    """One query per row over a cache buffer: q (b, 1, h, d); k, v (b, S, h_kv, d);
    ``key_valid`` (b, S) or (S,) True for the slots to attend to (any order). Returns
    (b, 1, h, d). Shapes do not depend on how many slots are valid (CUDA-graph safe)."""
    b, _, h, d = q.shape
    h_kv = k.shape[2]
    # The h / h_kv query heads of a kv head become its query rows: no key copies for GQA.
    qt = q.reshape(b, h_kv, h // h_kv, d)
    mask = None if key_valid is None else key_valid.expand(b, -1)[:, None, None, :]
    out = F.scaled_dot_product_attention(qt, k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask, scale=softmax_scale)
    return out.reshape(b, 1, h, d)


def _flex_supported(q: Tensor) -> bool:
    d = q.shape[-1]
    return d >= 16 and d & (d - 1) == 0 and d <= 256 and _flex_function() is not None


@functools.cache
def _flex_function():
    """FlexAttention compiled once (None where this PyTorch has none)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError:
        return None
    return torch.compile(flex_attention)


def _block_mask(lq: int, lk: int, causal: bool, window: int | None,
                key_padding_mask: Tensor | None, device: torch.device):
    """FlexAttention BlockMask, built from the block ranges that the window allows.

    A block pair is "full" (no mask evaluation) when every query in it may see every key
    in it, "partial" when some may; the rest is skipped, so a window costs O(lq * window).
    """
    from torch.nn.attention.flex_attention import BlockMask

    offset, bs = lk - lq, FLEX_BLOCK
    nq, nk = -(-lq // bs), -(-lk // bs)
    qi = torch.arange(nq, device=device)[:, None]
    kj = torch.arange(nk, device=device)[None, :]
    q_first, q_last = offset + qi * bs, offset + torch.clamp((qi + 1) * bs, max=lq) - 1
    k_first, k_last = kj * bs, torch.clamp((kj + 1) * bs, max=lk) - 1
    some = torch.ones(nq, nk, dtype=torch.bool, device=device)
    every = some.clone()
    if causal:
        some &= k_first <= q_last
        every &= k_last <= q_first
    if window is not None:
        some &= q_first - k_last < window
        every &= q_last - k_first < window
    if key_padding_mask is not None:
        every &= False
    partial = some & ~every

    def blocks(sel: Tensor) -> tuple[Tensor, Tensor]:
        count = sel.sum(-1, dtype=torch.int32)
        index = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
        return count[None, None], index[None, None]

    offset_t = torch.tensor(offset, device=device)
    window_t = torch.tensor(window if window is not None else lk + 1, device=device)
    # Padded to whole blocks: the mask may be evaluated past the last key.
    valid = None if key_padding_mask is None else F.pad(key_padding_mask, (0, nk * bs - lk))

    def mask_mod(b, h, q_idx, kv_idx):
        pos = q_idx + offset_t
        ok = pos - kv_idx < window_t
        if causal:
            ok = ok & (kv_idx <= pos)
        if valid is not None:
            ok = ok & valid[b, kv_idx]
        return ok | (pos == kv_idx)

    return BlockMask.from_kv_blocks(*blocks(partial), *blocks(every), BLOCK_SIZE=bs,
                                    mask_mod=mask_mod, seq_lengths=(lq, lk))


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool, window: int | None,
                    key_padding_mask: Tensor | None, scale: float | None) -> Tensor:
    block_mask = _block_mask(q.shape[1], k.shape[1], causal, window, key_padding_mask,
                             q.device)
    flex = _flex_function() if q.is_cuda else _eager_flex()
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    out = flex(qt, kt, vt, block_mask=block_mask, scale=scale,
               enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2)


def _eager_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention
