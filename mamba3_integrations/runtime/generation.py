"""Cached generation: prefill once, then one O(1) recurrent step per token.

Prompts of different lengths run as one left-padded batch; each row's output
equals its one-by-one output. Rows that finish (EOS or a stop string) leave the
running batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mamba3_integrations.errors import InputError
from mamba3_integrations.modeling.cache import InferenceCache
from mamba3_integrations.modeling.lm import Mamba3LMHeadModel
from mamba3_integrations.runtime.sampling import SamplingParams, next_tokens
from mamba3_integrations.runtime.stopping import StopStringMatcher

TokenIds = Tensor | Sequence[Sequence[int]] | Sequence[int]


@dataclass
class GenerationConfig:
    """Everything that controls one generation."""

    max_new_tokens: int = 64
    sampling: SamplingParams = field(default_factory=SamplingParams)
    eos_token_id: list[int] = field(default_factory=list)
    pad_token_id: int = 0
    stop_strings: list[str] = field(default_factory=list)
    seed: int | None = None
    use_cuda_graph: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise InputError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")


def left_pad(rows: Sequence[Sequence[int]], pad_id: int,
             device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """Ragged token lists -> left-padded ids (b, L) and attention mask (b, L)."""
    if not rows or any(len(r) == 0 for r in rows):
        raise InputError("every prompt needs at least one token")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def as_batch(input_ids: TokenIds, attention_mask: Tensor | None, pad_id: int,
             device: torch.device) -> tuple[Tensor, Tensor | None]:
    """Normalise prompts to (ids (b, L), mask or None) on ``device``."""
    if isinstance(input_ids, Tensor):
        ids = input_ids.unsqueeze(0) if input_ids.dim() == 1 else input_ids
        if ids.dim() != 2 or ids.shape[1] == 0:
            raise InputError(f"input_ids must be (batch, seqlen) with seqlen >= 1, got "
                             f"{tuple(input_ids.shape)}")
        mask = attention_mask
        if mask is not None and mask.dim() == 1:
            mask = mask.unsqueeze(0)
        return ids.to(device), None if mask is None else mask.to(device)
    if attention_mask is not None:
        raise InputError("attention_mask goes with tensor input_ids, not with token lists")
    rows = list(input_ids)
    if rows and isinstance(rows[0], int):
        rows = [rows]
    return left_pad(rows, pad_id, device)


def _step_function(model: Mamba3LMHeadModel, cache: InferenceCache,
                   use_cuda_graph: bool) -> Callable[[Tensor], Tensor]:
    if use_cuda_graph and cache.layers and next(model.parameters()).is_cuda:
        from mamba3_integrations.runtime.cuda_graph import CudaGraphDecoder

        return CudaGraphDecoder(model, cache).step
    return lambda ids: model.step(ids, cache)


def stream_tokens(
    model: Mamba3LMHeadModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    config: GenerationConfig,
    tokenizer: Any = None,
) -> Iterator[Tensor]:
    """Yield the next token of every row, (b,), once per step.

    Rows that have finished yield ``pad_token_id``; the iterator ends when every
    row has finished or ``max_new_tokens`` were produced.
    """
    for tokens, _ in stream_steps(model, input_ids, attention_mask, config, tokenizer):
        yield tokens


@torch.inference_mode()
def stream_steps(
    model: Mamba3LMHeadModel,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    config: GenerationConfig,
    tokenizer: Any = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Like ``stream_tokens``, also yielding which rows produced a real token (b,) bool."""
    batch = input_ids.shape[0]
    device = input_ids.device
    generator = None
    if config.seed is not None:
        generator = torch.Generator(device=device).manual_seed(config.seed)
    matchers = ([StopStringMatcher(tokenizer, config.stop_strings) for _ in range(batch)]
                if config.stop_strings else None)
    eos = torch.as_tensor(config.eos_token_id, dtype=torch.long, device=device)
    vocab = model.config.vocab_size
    if config.max_new_tokens == 0:
        return

    capacity = input_ids.shape[1] + config.max_new_tokens
    cache = model.allocate_cache(batch, capacity=capacity)
    logits = model(input_ids, attention_mask, cache=cache, num_last_tokens=1).logits[:, -1]
    step = _step_function(model, cache, config.use_cuda_graph)
    rows = torch.arange(batch, device=device)  # original row of each cache row
    alive = torch.ones(batch, dtype=torch.bool, device=device)
    for produced in range(config.max_new_tokens):
        logits[:, vocab:] = -torch.inf  # rows of the padded vocabulary are not tokens
        chosen = next_tokens(logits, config.sampling, generator)
        tokens = torch.full((batch,), config.pad_token_id, dtype=torch.long, device=device)
        real = torch.zeros(batch, dtype=torch.bool, device=device)
        tokens[rows[alive]] = chosen[alive]
        real[rows[alive]] = True
        yield tokens, real
        done = torch.isin(chosen, eos) if eos.numel() else torch.zeros_like(alive)
        if matchers is not None:
            for j in alive.nonzero().squeeze(-1).tolist():
                done[j] |= matchers[int(rows[j])].add(int(chosen[j]))
        alive &= ~done
        if produced + 1 == config.max_new_tokens or not bool(alive.any()):
            return
        if bool(done.any()) and not config.use_cuda_graph:
            keep = alive.nonzero().squeeze(-1)
            cache = cache.select(keep.cpu())
            rows, chosen, alive = rows[keep], chosen[keep], alive[keep]
            step = _step_function(model, cache, False)
        logits = step(chosen)


def generate(
    model: Mamba3LMHeadModel,
    input_ids: TokenIds,
    attention_mask: Tensor | None,
    config: GenerationConfig,
    tokenizer: Any = None,
) -> Tensor | list[list[int]]:
    """Prompts plus generated tokens.

    A tensor in gives a tensor out, (b, L + n), rows that stop early padded on the
    right with ``pad_token_id``. Token lists in give token lists out, one per
    prompt, without padding.
    """
    device = next(model.parameters()).device
    ids, mask = as_batch(input_ids, attention_mask, config.pad_token_id, device)
    steps = list(stream_steps(model, ids, mask, config, tokenizer))
    if steps:
        new, real = (torch.stack(t, dim=1) for t in zip(*steps, strict=True))
    else:
        new = real = ids.new_zeros(ids.shape[0], 0)
    if isinstance(input_ids, Tensor):
        full = torch.cat((ids, new), dim=1)
        return full.squeeze(0) if input_ids.dim() == 1 else full
    prompts = [ids[i][mask[i].bool()] if mask is not None else ids[i] for i in range(len(ids))]
    return [torch.cat((p, n[r.bool()])).tolist()
            for p, n, r in zip(prompts, new, real, strict=True)]
