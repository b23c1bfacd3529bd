"""Whole-model decode captured in a CUDA graph: one replay per token.

``CudaGraphDecoder(model, cache)`` captures ``model.step`` for the cache's batch on the
cache's own tensors, which every replay updates in place: Mamba-3 states (constant
size), sliding-window ring buffers, and KV caches, which must already have room for
every token to come (``model.allocate_cache(batch, capacity=max_len)``). Positions are
read from one device tensor (``device_length`` of the attention caches) that the graph
advances itself, so a replay needs no Python integers.

    decoder = CudaGraphDecoder(model, cache)   # after the prefill filled ``cache``
    logits = decoder.step(token_ids)           # (b,) -> (b, vocab), per token

While a decoder holds the cache, advance it only through ``decoder.step``; ``close()``
hands it back to eager use (``model.step`` / ``model.forward``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba3_integrations.errors import InputError
from mamba3_integrations.modeling.cache import (
    InferenceCache,
    KVCache,
    Mamba3LayerCache,
    SlidingWindowCache,
)
from mamba3_integrations.modeling.lm import Mamba3LMHeadModel


class CudaGraphDecoder:
    """Replays a captured ``model.step`` on a fixed batch and a cache updated in place."""

    def __init__(self, model: Mamba3LMHeadModel, cache: InferenceCache,
                 warmup_steps: int = 2) -> None:
        device = model.lm_head.weight.device
        if device.type != "cuda":
            raise InputError(f"CUDA graphs need a model on a CUDA device, got {device}")
        self.model, self.cache = model, cache
        self.batch = cache.batch_size
        self.attention_caches = [c for c in cache.layers
                                 if isinstance(c, KVCache | SlidingWindowCache)]
        kv = [c.keys.shape[1] for c in cache.layers if isinstance(c, KVCache)]
        self.capacity = min(kv) if kv else None
        self.position = torch.full((), cache.seqlen, dtype=torch.int64, device=device)
        self.token_ids = torch.zeros(self.batch, dtype=torch.int64, device=device)
        self.graph = torch.cuda.CUDAGraph()
        self._warm_up(warmup_steps)
        for c in self.attention_caches:
            c.device_length = self.position
        with torch.inference_mode(), torch.cuda.graph(self.graph):
            self.logits = self._forward(self.token_ids, cache)
            self.position.add_(1)

    def _forward(self, token_ids: Tensor, cache: InferenceCache) -> Tensor:
        """``model.step`` without its input checks (they would synchronise)."""
        return self.model.step_logits(token_ids, cache)

    def _warm_up(self, steps: int) -> None:
        """Compile kernels and initialise libraries on a scratch copy of the cache's shape,
        on the side stream that captures, so that the real cache is not advanced."""
        scratch = InferenceCache([_scratch_like(c) for c in self.cache.layers], 0,
                                 self.cache.pad_lengths)
        scratch_position = torch.zeros((), dtype=torch.int64, device=self.position.device)
        for c in scratch.layers:
            if isinstance(c, KVCache | SlidingWindowCache):
                c.device_length = scratch_position
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(steps):
                self._forward(self.token_ids, scratch)
                scratch_position.add_(1)
        torch.cuda.current_stream().wait_stream(stream)

    def step(self, token_ids: Tensor) -> Tensor:
        """One token per row, (b,) -> logits (b, vocab); advances the cache."""
        if token_ids.shape != (self.batch,):
            raise InputError(f"step expects ({self.batch},) token ids, got "
                             f"{tuple(token_ids.shape)}")
        if self.capacity is not None and self.cache.seqlen >= self.capacity:
            raise InputError(f"the KV cache is full ({self.capacity} positions); allocate it "
                             "with a larger capacity before capturing")
        self.token_ids.copy_(token_ids)
        self.graph.replay()
        self.cache.seqlen += 1
        for c in self.attention_caches:
            c.length += 1
        return self.logits.clone()

    def close(self) -> None:
        """Detach from the cache, which eager calls may then use again."""
        for c in self.attention_caches:
            c.device_length = None
        self.graph.reset()


def _scratch_like(layer):
    """A zeroed layer cache of the same shapes (conv states included)."""
    if isinstance(layer, Mamba3LayerCache):
        return Mamba3LayerCache(*(torch.zeros_like(t) for t in layer.as_tuple()))
    conv = None if layer.conv_state is None else torch.zeros_like(layer.conv_state)
    keys, values = torch.zeros_like(layer.keys), torch.zeros_like(layer.values)
    if isinstance(layer, SlidingWindowCache):
        return SlidingWindowCache(keys, values, window=layer.window, conv_state=conv)
    return KVCache(keys, values, conv_state=conv)
