"""The Mamba-3 hybrid language model (official ``MambaLMHeadModel`` layout and names)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mamba3_integrations.errors import InputError
from mamba3_integrations.kernels.add_rms_norm import add_rms_norm
from mamba3_integrations.kernels.fused_decode import fused_decode_enabled
from mamba3_integrations.kernels.linear_decode import decode_linear
from mamba3_integrations.modeling.attention import Attention
from mamba3_integrations.modeling.block import Block, decode_norm_linear
from mamba3_integrations.modeling.cache import InferenceCache
from mamba3_integrations.modeling.config import Mamba3Config
from mamba3_integrations.modeling.mamba3_mixer import Mamba3Mixer
from mamba3_integrations.modeling.mlp import GatedMLP
from mamba3_integrations.modeling.norms import RMSNorm, make_norm


@dataclass
class CausalLMOutput:
    """``logits`` (b, l, vocab) and the last hidden states after ``norm_f`` (b, l, d)."""

    logits: Tensor
    hidden_states: Tensor


class MixerModel(nn.Module):
    """Embedding, the stack of blocks and the final norm (``backbone``)."""

    def __init__(self, config: Mamba3Config, device=None, dtype=None) -> None:
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        d, eps = config.d_model, config.norm_epsilon
        self.embedding = nn.Embedding(config.padded_vocab_size, d, **factory)
        blocks = []
        for i in range(config.n_layer):
            if i in config.attn_layer_idx:
                mixer = Attention(d, layer_idx=i, **config.attention_kwargs(i), **factory)
            else:
                mixer = Mamba3Mixer(d, layer_idx=i, **config.mixer_kwargs(), **factory)
            mlp = GatedMLP(d, config.d_intermediate, **factory) if config.d_intermediate else None
            norm2 = make_norm(d, config.rms_norm, eps, **factory) if mlp is not None else None
            blocks.append(Block(mixer, make_norm(d, config.rms_norm, eps, **factory), mlp, norm2,
                                config.residual_in_fp32))
        self.layers = nn.ModuleList(blocks)
        self.norm_f = make_norm(d, config.rms_norm, eps, **factory)

    def final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:
        residual = hidden + residual
        return self.norm_f(residual.to(self.norm_f.weight.dtype))

    def step_final_norm(self, hidden: Tensor, residual: Tensor) -> Tensor:
        """``final_norm`` for decode: one fused kernel for RMSNorm where enabled."""
        if isinstance(self.norm_f, RMSNorm) and fused_decode_enabled(hidden):
            return add_rms_norm(hidden, residual, self.norm_f.weight, self.norm_f.eps,
                                residual_in_fp32=False)[0]
        return self.final_norm(hidden, residual)


class Mamba3LMHeadModel(nn.Module):
    """Mamba-3 hybrid causal LM: ``backbone`` (MixerModel) and ``lm_head``.

    ``forward`` runs a sequence (and fills a cache when given one); ``step`` runs one
    token against a filled cache. Pure PyTorch; loading and generation live in
    ``mamba3_integrations.runtime``.
    """

    def __init__(self, config: Mamba3Config, device=None, dtype=None) -> None:
        super().__init__()
        self.config = config
        self.backbone = MixerModel(config, device=device, dtype=dtype)
        self.lm_head = nn.Linear(config.d_model, config.padded_vocab_size, bias=False,
                                 device=device, dtype=dtype)
        self.tie_weights()

    def tie_weights(self) -> None:
        if self.config.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight

    def init_weights(self, initializer_range: float = 0.02) -> None:
        """The official initialisation (GPT-2 style residual rescaling), for training."""
        n_residuals = 2 if self.config.d_intermediate else 1
        for module in self.modules():
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=initializer_range)
        for name, p in self.backbone.named_parameters():
            if name.endswith(("out_proj.weight", "fc2.weight")):
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
                with torch.no_grad():
                    p /= math.sqrt(n_residuals * self.config.n_layer)
        self.tie_weights()

    # ---------------------------------------------------------------- cache
    def allocate_cache(self, batch: int, capacity: int = 0, device=None,
                       dtype=None) -> InferenceCache:
        """An empty cache for ``batch`` sequences; ``capacity`` pre-sizes KV caches."""
        layers = [
            block.mixer.allocate_cache(batch, capacity, device=device, dtype=dtype)
            if isinstance(block.mixer, Attention)
            else block.mixer.allocate_cache(batch, device=device, dtype=dtype)
            for block in self.backbone.layers
        ]
        return InferenceCache(layers)

    # -------------------------------------------------------------- forward
    def _check_ids(self, input_ids: Tensor) -> None:
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"input_ids must be integer token ids, got {input_ids.dtype}")
        if input_ids.numel() and (input_ids.min() < 0
                                  or input_ids.max() >= self.config.padded_vocab_size):
            raise InputError(
                f"input_ids must lie in [0, {self.config.padded_vocab_size}); got values in "
                f"[{int(input_ids.min())}, {int(input_ids.max())}]"
            )

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: InferenceCache | None = None,
        num_last_tokens: int = 0,
    ) -> CausalLMOutput:
        """input_ids (b, l) -> logits (b, l, vocab).

        ``attention_mask`` (b, l), 1 for real tokens, allows left padding (only on
        the first call with a cache). With ``cache``, the sequence continues from its
        state and the cache is advanced past it. ``num_last_tokens`` > 0 keeps only the
        logits of the last tokens.
        """
        hidden = self.hidden_states(input_ids, attention_mask, cache)
        if num_last_tokens > 0:
            hidden = hidden[:, -num_last_tokens:]
        return CausalLMOutput(logits=self.lm_head(hidden), hidden_states=hidden)

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: InferenceCache | None = None,
    ) -> Tensor:
        """The last hidden states after ``norm_f`` (b, l, d), without the LM head (e.g. for
        embeddings); arguments as ``forward``."""
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise InputError(f"input_ids must be (batch, seqlen) with seqlen >= 1, got "
                             f"{tuple(input_ids.shape)}")
        self._check_ids(input_ids)
        start = 0 if cache is None else cache.seqlen
        token_mask, pad_lengths = self._padding(input_ids, attention_mask, cache)
        hidden, residual = self.backbone.embedding(input_ids), None
        for i, block in enumerate(self.backbone.layers):
            hidden, residual = block(hidden, residual, None if cache is None else cache.layers[i],
                                     start=start, pad_lengths=pad_lengths, token_mask=token_mask)
        hidden = self.backbone.final_norm(hidden, residual)
        if cache is not None:
            cache.seqlen += input_ids.shape[1]
        return hidden

    def _padding(self, input_ids: Tensor, attention_mask: Tensor | None,
                 cache: InferenceCache | None) -> tuple[Tensor | None, Tensor | None]:
        """Validate a left-padding mask; return (token_mask, pad_lengths)."""
        if attention_mask is None:
            return None, None if cache is None else cache.pad_lengths
        if attention_mask.shape != input_ids.shape:
            raise InputError(f"attention_mask shape {tuple(attention_mask.shape)} differs from "
                             f"input_ids shape {tuple(input_ids.shape)}")
        token_mask = attention_mask.to(torch.bool)
        pad_lengths = (~token_mask).sum(dim=1)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        if not torch.equal(token_mask, positions[None, :] >= pad_lengths[:, None]):
            raise InputError("attention_mask must be left padding: zeros, then only ones")
        if bool((pad_lengths == input_ids.shape[1]).any()):
            raise InputError("a row of attention_mask has no real token")
        if cache is not None:
            if cache.seqlen > 0 and bool(pad_lengths.any()):
                raise InputError("padding is only allowed in the first call with a cache")
            if cache.seqlen == 0:
                cache.pad_lengths = pad_lengths
        if not bool(pad_lengths.any()):
            return None, None if cache is None else cache.pad_lengths
        return token_mask, pad_lengths

    @torch.inference_mode()
    def step(self, input_ids: Tensor, cache: InferenceCache) -> Tensor:
        """One token per row: input_ids (b,) -> logits (b, vocab); advances ``cache``."""
        if input_ids.dim() != 1:
            raise InputError(f"step expects one token per row, shape (batch,), got "
                             f"{tuple(input_ids.shape)}")
        self._check_ids(input_ids)
        logits = self.step_logits(input_ids, cache)
        cache.seqlen += 1
        return logits

    def step_logits(self, input_ids: Tensor, cache: InferenceCache) -> Tensor:
        """``step`` without input checks and without advancing ``cache.seqlen`` (what a
        CUDA graph captures): fused decode kernels where enabled (the final norm and the
        LM head in one, ``decode_norm_linear``)."""
        hidden, residual = self.backbone.embedding(input_ids), None
        for block, layer_cache in zip(self.backbone.layers, cache.layers, strict=True):
            hidden, residual = block.step(hidden, residual, layer_cache, cache.seqlen,
                                          cache.pad_lengths)
        fused = decode_norm_linear(hidden, residual, self.backbone.norm_f, self.lm_head,
                                   residual_in_fp32=False)
        if fused is not None:
            return fused[0]
        hidden = self.backbone.step_final_norm(hidden, residual)
        return decode_linear(hidden, self.lm_head.weight, self.lm_head.bias)
