"""Attention layer of the hybrid model (official ``MHA`` options), optionally sliding-window."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mamba3_integrations.errors import ConfigError
from mamba3_integrations.kernels import attention, attention_decode
from mamba3_integrations.kernels.attention_decode_triton import (
    cache_attention_triton,
    fused_attention_decode_supported,
    rope_append_triton,
)
from mamba3_integrations.kernels.linear_decode import decode_linear
from mamba3_integrations.modeling.cache import KVCache, SlidingWindowCache
from mamba3_integrations.modeling.rotary import RotaryEmbedding


class Attention(nn.Module):
    """Multi-head self-attention with GQA, rotary, projection biases, a causal
    depthwise convolution on q/k/v (``d_conv``) and a gated ``mlp_dim`` side branch,
    as the official ``MHA``; ``window`` (our extension) makes it a causal
    sliding-window layer that sees only the ``window`` most recent tokens.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_heads_kv: int | None = None,
        head_dim: int | None = None,
        mlp_dim: int = 0,
        qkv_proj_bias: bool = True,
        out_proj_bias: bool = True,
        softmax_scale: float | None = None,
        causal: bool = False,
        d_conv: int = 0,
        rotary_emb_dim: int = 0,
        rotary_emb_base: float = 10000.0,
        rotary_emb_interleaved: bool = False,
        window: int | None = None,
        layer_idx: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.num_heads_kv = num_heads_kv or num_heads
        if num_heads % self.num_heads_kv:
            raise ConfigError(f"num_heads ({num_heads}) must be a multiple of num_heads_kv "
                              f"({self.num_heads_kv})")
        if head_dim is None and d_model % num_heads:
            raise ConfigError(f"d_model ({d_model}) must be divisible by num_heads ({num_heads})")
        if window is not None and not causal:
            raise ConfigError("a sliding-window attention layer must be causal (causal: true)")
        self.head_dim = head_dim or d_model // num_heads
        self.mlp_dim = math.ceil(mlp_dim / 256) * 256
        self.softmax_scale, self.causal, self.d_conv = softmax_scale, causal, d_conv
        self.window, self.layer_idx = window, layer_idx
        self.qkv_dim = self.head_dim * (num_heads + 2 * self.num_heads_kv)
        factory = {"device": device, "dtype": dtype}
        self.rotary = (RotaryEmbedding(rotary_emb_dim, rotary_emb_base, rotary_emb_interleaved)
                       if rotary_emb_dim > 0 else None)
        self.in_proj = nn.Linear(d_model, self.qkv_dim + self.mlp_dim, bias=qkv_proj_bias,
                                 **factory)
        if d_conv > 0:
            self.conv1d = nn.Conv1d(self.qkv_dim, self.qkv_dim, kernel_size=d_conv,
                                    padding=d_conv - 1, groups=self.qkv_dim, **factory)
        self.out_proj = nn.Linear(self.head_dim * num_heads + self.mlp_dim // 2, d_model,
                                  bias=out_proj_bias, **factory)

    def _conv(self, qkv: Tensor, cache: KVCache | SlidingWindowCache | None) -> Tensor:
        """Causal depthwise convolution over (b, l, qkv_dim), continuing the cache's inputs."""
        b, n = qkv.shape[0], self.d_conv - 1
        if cache is not None and cache.conv_state is not None:
            history = cache.conv_state
        else:
            history = qkv.new_zeros(b, self.qkv_dim, n)
        inputs = torch.cat((history, qkv.transpose(1, 2)), dim=-1)
        if cache is not None:
            tail = inputs[..., inputs.shape[-1] - n:]
            if cache.conv_state is not None and cache.conv_state.shape == tail.shape:
                cache.conv_state.copy_(tail)  # in place: the buffer may be in a CUDA graph
            else:
                cache.conv_state = tail.clone()
        out = F.conv1d(inputs, self.conv1d.weight, self.conv1d.bias, groups=self.qkv_dim)
        return out.transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        cache: KVCache | SlidingWindowCache | None = None,
        start: int = 0,
        pad_lengths: Tensor | None = None,
        token_mask: Tensor | None = None,
        projected: bool = False,
    ) -> Tensor:
        """x (b, l, d_model) at absolute positions ``[start, start + l)``.

        With a cache, the new keys/values are added to it and queries also see the
        cached ones. ``pad_lengths`` (b,) counts each row's left padding: padded
        positions are never attended to and rotary positions start after them.
        ``projected``: x is ``in_proj(x)`` already (decode: the block computes it together
        with its norm, ``modeling.block.decode_norm_linear``).
        """
        b, seqlen, _ = x.shape
        decode = cache is not None and seqlen == 1
        qkv = x if projected else self._project(self.in_proj, x, decode)
        if self.mlp_dim:
            qkv, side = qkv.split([self.qkv_dim, self.mlp_dim], dim=-1)
            up, gate = side.chunk(2, dim=-1)
            side = up * F.silu(gate)
        if self.d_conv:
            if token_mask is not None:
                qkv = qkv * token_mask.unsqueeze(-1).to(qkv.dtype)
            qkv = self._conv(qkv, cache)
        graph_decode = (cache is not None and cache.device_length is not None and seqlen == 1)
        if graph_decode and fused_attention_decode_supported(qkv, self.head_dim):
            context = self._decode_fused(qkv[:, 0], cache, pad_lengths).flatten(-2)[:, None]
            if self.mlp_dim:
                context = torch.cat((context, side), dim=-1)
            return self._project(self.out_proj, context, decode)
        q, k, v = qkv.split([self.num_heads * self.head_dim,
                             self.num_heads_kv * self.head_dim,
                             self.num_heads_kv * self.head_dim], dim=-1)
        q = q.unflatten(-1, (self.num_heads, self.head_dim))
        k = k.unflatten(-1, (self.num_heads_kv, self.head_dim))
        v = v.unflatten(-1, (self.num_heads_kv, self.head_dim))
        # CUDA-graph decode: the position lives on the device (see cache.device_length).
        if self.rotary is not None:
            if graph_decode:
                positions = cache.device_length.view(1, 1).expand(b, 1)
            else:
                positions = torch.arange(start, start + seqlen, device=x.device).expand(b, -1)
            if pad_lengths is not None:
                positions = (positions - pad_lengths.to(x.device)[:, None]).clamp_min(0)
            cos, sin = self.rotary.cos_sin(positions)
            q, k = self.rotary.apply(q, cos, sin), self.rotary.apply(k, cos, sin)

        if graph_decode:
            context = self._decode_graph_safe(q, k, v, cache, pad_lengths)
        else:
            context = self._attend(q, k, v, cache, start, pad_lengths)
        context = context.flatten(-2)
        if self.mlp_dim:
            context = torch.cat((context, side), dim=-1)
        return self._project(self.out_proj, context, decode)

    @staticmethod
    def _project(layer: nn.Linear, x: Tensor, decode: bool) -> Tensor:
        """``layer(x)``; one decode token through the GEMV kernel (``decode_linear``)."""
        return decode_linear(x, layer.weight, layer.bias) if decode else layer(x)

    def _decode_fused(self, qkv: Tensor, cache: KVCache | SlidingWindowCache,
                      pad_lengths: Tensor | None) -> Tensor:
        """One token (qkv (b, qkv_dim)) in three Triton launches: rotary and cache write,
        split-KV attention over the cache buffer, combine. Returns (b, h, d)."""
        window = cache.window if isinstance(cache, SlidingWindowCache) else None
        inv_freq, interleaved = None, False
        if self.rotary is not None:
            inv_freq, interleaved = self._inv_freq(qkv.device), self.rotary.interleaved
        pads = None if pad_lengths is None else pad_lengths.to(qkv.device)
        q = rope_append_triton(qkv, cache.keys, cache.values, cache.device_length, pads,
                               self.num_heads, inv_freq, interleaved, window)
        return cache_attention_triton(q, cache.keys, cache.values, cache.device_length,
                                      window, pads, self.softmax_scale)

    def _inv_freq(self, device: torch.device) -> Tensor:
        """The rotary frequencies (float32, as ``RotaryEmbedding.cos_sin``), kept per device."""
        cached = getattr(self, "_inv_freq_cache", None)
        if cached is None or cached.device != device:
            dim, base = self.rotary.dim, self.rotary.base
            cached = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32,
                                                  device=device) / dim))
            self._inv_freq_cache = cached
        return cached

    def _decode_graph_safe(self, q: Tensor, k: Tensor, v: Tensor,
                           cache: KVCache | SlidingWindowCache,
                           pad_lengths: Tensor | None) -> Tensor:
        """One token against the whole cache buffer, slots masked by position."""
        keys, values, slot_pos = cache.decode_append(k, v)
        valid = (slot_pos >= 0) & (slot_pos <= cache.device_length)
        if pad_lengths is not None:
            valid = valid & (slot_pos[None, :] >= pad_lengths.to(q.device)[:, None])
        return attention_decode(q, keys, values, valid, self.softmax_scale)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor,
                cache: KVCache | SlidingWindowCache | None, start: int,
                pad_lengths: Tensor | None) -> Tensor:
        """Queries at ``[start, start + l)`` over the cached and the new keys."""
        if isinstance(cache, KVCache):
            k_all, v_all = cache.append(k, v)
            k_start = 0
        elif isinstance(cache, SlidingWindowCache):
            k_old, v_old, k_start = cache.ordered()
            k_all, v_all = torch.cat((k_old, k), dim=1), torch.cat((v_old, v), dim=1)
            cache.write(k, v)
        else:
            k_all, v_all, k_start = k, v, start
        valid = None
        if pad_lengths is not None:
            positions = torch.arange(k_start, k_start + k_all.shape[1], device=q.device)
            valid = positions[None, :] >= pad_lengths.to(q.device)[:, None]
        return attention(q, k_all, v_all, causal=self.causal, window=self.window,
                         key_padding_mask=valid, softmax_scale=self.softmax_scale)

    def allocate_cache(self, batch: int, capacity: int = 0, device=None,
                       dtype=None) -> KVCache | SlidingWindowCache:
        """An empty cache: a ring of ``window`` slots, or a KV cache of ``capacity``."""
        weight = self.out_proj.weight
        size = self.window if self.window is not None else max(capacity, 1)
        shape = (batch, size, self.num_heads_kv, self.head_dim)
        factory = {"device": device or weight.device, "dtype": dtype or weight.dtype}
        keys, values = torch.zeros(shape, **factory), torch.zeros(shape, **factory)
        if self.window is not None:
            return SlidingWindowCache(keys, values, window=self.window)
        return KVCache(keys, values)
