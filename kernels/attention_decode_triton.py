"""Decode of the attention layers in two Triton launches plus a combine: capture-safe.

- ``rope_append``: rotary on the new q and k at the device-side position (left padding
  subtracted), the new k and v written into their cache slot (position ``p`` of a KV
  cache, ``p % window`` of a ring), q returned rotated. Rounded as ``RotaryEmbedding``.
- ``cache_attention``: one query per row over the cache buffer, split-KV ("flash
  decoding"): programs (row, kv head, key split) each reduce a slice of the slots for
  all query heads of their kv head (GQA) into a partial output, max and sum; a second
  kernel combines the splits. Which slots are valid comes from the device position
  (``slot <= p`` for a KV cache; the position a ring slot holds is ``>= 0``; both past
  the row's padding), so nothing depends on host integers; programs past the position
  stop early.

The PyTorch twins (``rope_append_reference``, ``cache_attention_reference``) are the
oracle and the CPU path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mamba3_integrations.kernels.attention import attention_decode
from mamba3_integrations.kernels.fused_decode import (
    decode_pdl,
    fused_decode_enabled,
    gdc_launch_dependents,
    gdc_wait,
    pdl_launch,
)
from mamba3_integrations.kernels.rotary import rotate_channels

try:
    import triton
    import triton.language as tl

    from mamba3_integrations.kernels.mamba3_siso_triton_fwd import _dot
except ImportError:  # Triton is an optional extra
    triton = None

# Key slots per inner iteration and the number of programs to aim for.
DECODE_CONFIG = {"block_n": 64, "target_programs": 264, "num_warps": 4}


def slot_positions(n_slots: int, position: Tensor, window: int | None) -> Tensor:
    """The absolute position each cache slot holds (negative: never written)."""
    slots = torch.arange(n_slots, device=position.device)
    if window is None:
        return slots
    return position - (position - slots) % window


def rope_append_reference(qkv: Tensor, keys: Tensor, values: Tensor, position: Tensor,
                          pad_lengths: Tensor | None, num_heads: int, inv_freq: Tensor | None,
                          interleaved: bool, window: int | None) -> Tensor:
    """qkv (b, (h + 2 h_kv) d) -> rotated q (b, h, d); k, v stored at ``position``."""
    b = qkv.shape[0]
    h_kv, d = keys.shape[2], keys.shape[3]
    q, k, v = qkv.split([num_heads * d, h_kv * d, h_kv * d], dim=-1)
    q, k, v = q.view(b, 1, num_heads, d), k.view(b, 1, h_kv, d), v.view(b, 1, h_kv, d)
    if inv_freq is not None:
        pos = position.view(1, 1).expand(b, 1)
        if pad_lengths is not None:
            pos = (pos - pad_lengths.to(pos.device)[:, None]).clamp_min(0)
        angles = pos.to(torch.float32).unsqueeze(-1) * inv_freq
        cos, sin = angles.cos().unsqueeze(2).to(q.dtype), angles.sin().unsqueeze(2).to(q.dtype)
        q, k = (rotate_channels(x, cos, sin, interleaved) for x in (q, k))
    slot = (position if window is None else position % window).view(1)
    keys.index_copy_(1, slot, k)
    values.index_copy_(1, slot, v)
    return q[:, 0]


def cache_attention_reference(q: Tensor, keys: Tensor, values: Tensor, position: Tensor,
                              window: int | None, pad_lengths: Tensor | None,
                              softmax_scale: float | None) -> Tensor:
    """q (b, h, d) over the cache buffer keys/values (b, S, h_kv, d) -> (b, h, d)."""
    slot_pos = slot_positions(keys.shape[1], position, window)
    valid = (slot_pos >= 0) & (slot_pos <= position)
    if pad_lengths is not None:
        valid = valid & (slot_pos[None, :] >= pad_lengths.to(q.device)[:, None])
    return attention_decode(q.unsqueeze(1), keys, values, valid, softmax_scale)[:, 0]


if triton is not None:

    @triton.jit
    def _rope_append_kernel(
        QKV, s_row, KEYS, VALUES, s_cb, s_cs, s_ch, Q_OUT, POS, PAD, INV_FREQ,
        num_heads, num_heads_kv, head_dim, window,
        BD: tl.constexpr, HALF: tl.constexpr, ROTARY: tl.constexpr,
        INTERLEAVED: tl.constexpr, HAS_PAD: tl.constexpr, RING: tl.constexpr,
        PDL: tl.constexpr,
    ):
        """Grid (batch, h + 2 h_kv): one head vector of q, k or v per program. HALF is
        rotary_dim / 2 (pairs); cache (b, S, h_kv, d) with unit last stride."""
        if PDL:  # everything read is written by the previous kernels (fused_decode)
            gdc_wait()
            gdc_launch_dependents()
        b = tl.program_id(0)
        j = tl.program_id(1)
        offs = tl.arange(0, BD)
        mask = offs < head_dim
        x_raw = tl.load(QKV + b.to(tl.int64) * s_row + j * head_dim + offs, mask=mask,
                        other=0.0)
        position = tl.load(POS)
        out = x_raw
        if ROTARY:  # noqa: SIM102 (a constexpr and a run-time condition)
            if j < num_heads + num_heads_kv:
                pos = position
                if HAS_PAD:
                    pos = tl.maximum(pos - tl.load(PAD + b), 0)
                if INTERLEAVED:
                    i = offs // 2
                    partner = offs ^ 1
                    first = (offs % 2) == 0
                else:
                    i = offs % HALF
                    partner = tl.where(offs < HALF, offs + HALF, offs - HALF)
                    first = offs < HALF
                rot = offs < 2 * HALF
                freq = tl.load(INV_FREQ + i, mask=rot, other=0.0)
                angle = pos.to(tl.float32) * freq
                dt = x_raw.dtype
                cos = tl.cos(angle).to(dt).to(tl.float32)
                sin = tl.sin(angle).to(dt).to(tl.float32)
                x = x_raw.to(tl.float32)
                xp = tl.load(QKV + b.to(tl.int64) * s_row + j * head_dim + partner,
                             mask=mask & rot, other=0.0).to(tl.float32)
                # x0 cos - x1 sin (first of a pair), x0 sin + x1 cos (second), each
                # product and the sum rounded to the input dtype as torch does.
                a = (x * cos).to(dt).to(tl.float32)
                c = (xp * sin).to(dt).to(tl.float32)
                r = tl.where(first, a - c, c + a).to(dt)
                out = tl.where(rot, r, x_raw)
        slot = position % window if RING else position
        if j < num_heads:
            tl.store(Q_OUT + (b.to(tl.int64) * num_heads + j) * head_dim + offs, out, mask=mask)
        elif j < num_heads + num_heads_kv:
            kv = j - num_heads
            ptr = b.to(tl.int64) * s_cb + slot * s_cs + kv * s_ch + offs
            tl.store(KEYS + ptr, out.to(KEYS.dtype.element_ty), mask=mask)
        else:
            kv = j - num_heads - num_heads_kv
            ptr = b.to(tl.int64) * s_cb + slot * s_cs + kv * s_ch + offs
            tl.store(VALUES + ptr, out.to(VALUES.dtype.element_ty), mask=mask)

    @triton.jit
    def _split_kv_kernel(
        Q, KEYS, VALUES, s_kb, s_ks, s_kh, s_vb, s_vs, s_vh, POS, PAD,
        O_PART, M_PART, L_PART,
        num_heads_kv, n_slots, head_dim, group, keys_per_split, nsplit, window, scale_log2,
        BLOCK_N: tl.constexpr, GP: tl.constexpr, BD: tl.constexpr, RING: tl.constexpr,
        HAS_PAD: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr,
    ):
        """Grid (batch * h_kv, nsplit). Q (b, h, d) contiguous; partials per (b, h, split):
        O (unnormalised, float32), M (running max, log2 units), L (sum)."""
        if PDL:  # everything read is written by the previous kernels (fused_decode)
            gdc_wait()
            gdc_launch_dependents()
        bk = tl.program_id(0)
        split = tl.program_id(1)
        b = bk // num_heads_kv
        kvh = bk % num_heads_kv
        offs_g = tl.arange(0, GP)
        offs_d = tl.arange(0, BD)
        mask_g = offs_g < group
        mask_d = offs_d < head_dim
        heads = kvh * group + offs_g
        q_ptr = Q + (b.to(tl.int64) * num_heads_kv * group + heads[:, None]) * head_dim
        q = tl.load(q_ptr + offs_d[None, :], mask=mask_g[:, None] & mask_d[None, :], other=0.0)
        position = tl.load(POS).to(tl.int32)
        pad = 0
        if HAS_PAD:
            pad = tl.load(PAD + b).to(tl.int32)
        lo = split * keys_per_split
        hi = tl.minimum(lo + keys_per_split, n_slots)
        if not RING:
            hi = tl.minimum(hi, position + 1)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], tl.float32)
        acc = tl.zeros([GP, BD], tl.float32)
        k_base = KEYS + b.to(tl.int64) * s_kb + kvh * s_kh
        v_base = VALUES + b.to(tl.int64) * s_vb + kvh * s_vh
        for start in range(lo, hi, BLOCK_N):
            slots = start + tl.arange(0, BLOCK_N)
            in_range = slots < hi
            # The position a ring slot holds (slots < window, so the sum is >= 0).
            slot_pos = position - (position - slots + window) % window if RING else slots
            valid = in_range & (slot_pos >= 0) & (slot_pos >= pad)
            m_kv = in_range[:, None] & mask_d[None, :]
            k = tl.load(k_base + slots[:, None] * s_ks + offs_d[None, :], mask=m_kv, other=0.0)
            s = _dot(q, tl.trans(k).to(q.dtype), IEEE) * scale_log2
            s = tl.where(valid[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp2(s - m_safe[:, None])
            corr = tl.exp2(m_i - m_safe)
            l_i = l_i * corr + tl.sum(p, 1)
            v = tl.load(v_base + slots[:, None] * s_vs + offs_d[None, :], mask=m_kv, other=0.0)
            acc = acc * corr[:, None] + _dot(p.to(v.dtype), v, IEEE)
            m_i = m_new
        row = (b.to(tl.int64) * num_heads_kv * group + heads) * nsplit + split
        tl.store(M_PART + row, m_i, mask=mask_g)
        tl.store(L_PART + row, l_i, mask=mask_g)
        tl.store(O_PART + row[:, None] * head_dim + offs_d[None, :], acc,
                 mask=mask_g[:, None] & mask_d[None, :])

    @triton.jit
    def _combine_kernel(O_PART, M_PART, L_PART, OUT, nsplit, head_dim,
                        SP: tl.constexpr, BD: tl.constexpr, PDL: tl.constexpr):
        """Grid (batch * h,): the splits' partial softmaxes merged; OUT (b, h, d)."""
        if PDL:  # everything read is written by the previous kernels (fused_decode)
            gdc_wait()
            gdc_launch_dependents()
        bh = tl.program_id(0).to(tl.int64)
        offs_s = tl.arange(0, SP)
        offs_d = tl.arange(0, BD)
        mask_s = offs_s < nsplit
        mask_d = offs_d < head_dim
        m = tl.load(M_PART + bh * nsplit + offs_s, mask=mask_s, other=float("-inf"))
        l_part = tl.load(L_PART + bh * nsplit + offs_s, mask=mask_s, other=0.0)
        m_max = tl.max(m, 0)
        w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))
        o = tl.load(O_PART + (bh * nsplit + offs_s[:, None]) * head_dim + offs_d[None, :],
                    mask=mask_s[:, None] & mask_d[None, :], other=0.0)
        out = tl.sum(o * w[:, None], 0) / tl.sum(l_part * w, 0)
        tl.store(OUT + bh * head_dim + offs_d, out.to(OUT.dtype.element_ty), mask=mask_d)


def rope_append_triton(qkv: Tensor, keys: Tensor, values: Tensor, position: Tensor,
                       pad_lengths: Tensor | None, num_heads: int, inv_freq: Tensor | None,
                       interleaved: bool, window: int | None) -> Tensor:
    """The Triton ``rope_append``; arguments as the reference."""
    if qkv.stride(-1) != 1:
        qkv = qkv.contiguous()
    if keys.stride(-1) != 1 or values.stride() != keys.stride():
        raise ValueError("rope_append needs key and value caches of one layout, unit last "
                         "stride")
    b = qkv.shape[0]
    h_kv, d = keys.shape[2], keys.shape[3]
    q = torch.empty(b, num_heads, d, device=qkv.device, dtype=qkv.dtype)
    half = 0 if inv_freq is None else inv_freq.numel()
    pdl = decode_pdl(qkv)
    _rope_append_kernel[(b, num_heads + 2 * h_kv)](
        qkv, qkv.stride(0), keys, values, *keys.stride()[:3], q, position,
        pad_lengths if pad_lengths is not None else position,
        inv_freq if inv_freq is not None else keys,
        num_heads, h_kv, d, window or 1,
        BD=triton.next_power_of_2(d), HALF=max(half, 1), ROTARY=half > 0,
        INTERLEAVED=interleaved, HAS_PAD=pad_lengths is not None, RING=window is not None,
        PDL=pdl, num_warps=1, **pdl_launch(pdl),
    )
    return q


def split_kv_plan(batch: int, num_heads_kv: int, n_slots: int) -> tuple[int, int]:
    """(keys per split, number of splits) for a cache of ``n_slots`` slots."""
    block_n = DECODE_CONFIG["block_n"]
    want = max(1, DECODE_CONFIG["target_programs"] // max(1, batch * num_heads_kv))
    per_split = max(block_n, triton.next_power_of_2(triton.cdiv(n_slots, want)))
    return per_split, triton.cdiv(n_slots, per_split)


def cache_attention_triton(q: Tensor, keys: Tensor, values: Tensor, position: Tensor,
                           window: int | None, pad_lengths: Tensor | None,
                           softmax_scale: float | None) -> Tensor:
    """The split-KV kernels; arguments as the reference."""
    b, h, d = q.shape
    n_slots, h_kv = keys.shape[1], keys.shape[2]
    group = h // h_kv
    q = q.contiguous()
    per_split, nsplit = split_kv_plan(b, h_kv, n_slots)
    o_part = torch.empty(b, h, nsplit, d, device=q.device, dtype=torch.float32)
    m_part = torch.empty(b, h, nsplit, device=q.device, dtype=torch.float32)
    l_part = torch.empty_like(m_part)
    scale = softmax_scale if softmax_scale is not None else 1.0 / math.sqrt(d)
    bd = max(16, triton.next_power_of_2(d))
    pdl = decode_pdl(q)
    _split_kv_kernel[(b * h_kv, nsplit)](
        q, keys, values, *keys.stride()[:3], *values.stride()[:3], position,
        pad_lengths if pad_lengths is not None else position, o_part, m_part, l_part,
        h_kv, n_slots, d, group, per_split, nsplit, window or 1, scale * math.log2(math.e),
        BLOCK_N=DECODE_CONFIG["block_n"], GP=max(16, triton.next_power_of_2(group)), BD=bd,
        RING=window is not None, HAS_PAD=pad_lengths is not None,
        IEEE=q.dtype == torch.float32, PDL=pdl, num_warps=DECODE_CONFIG["num_warps"],
        **pdl_launch(pdl),
    )
    out = torch.empty_like(q)
    _combine_kernel[(b * h,)](o_part, m_part, l_part, out, nsplit, d,
                              SP=max(2, triton.next_power_of_2(nsplit)), BD=bd, PDL=pdl,
                              num_warps=4, **pdl_launch(pdl))
    return out


def fused_attention_decode_supported(x: Tensor, head_dim: int) -> bool:
    """Whether the Triton decode kernels take a layer's decode: fused decode enabled
    (``fused_decode.fused_decode_enabled``), a 16/32-bit dtype, head_dim <= 256."""
    return (triton is not None and fused_decode_enabled(x)
            and x.dtype in (torch.bfloat16, torch.float16, torch.float32) and head_dim <= 256)
