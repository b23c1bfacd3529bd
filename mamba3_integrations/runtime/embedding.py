"""``Mamba3Encoder``: text embeddings from a Mamba-3 hybrid model.

An embedding checkpoint is a model folder in the LM format whose ``config.json`` has
an ``embedding`` section (``EmbeddingSettings``). Texts are tokenized, sorted by
length and run in left-padded batches; the last hidden states are pooled (mean over
the tokens, or the last token) and optionally L2-normalised. A text longer than
``max_segment_tokens`` is embedded whole, in segments that carry the inference
cache: activations stay bounded by the segment and the Mamba-3 and sliding-window
state is constant, so memory does not grow with the text except for the KV cache
of global attention layers (if the model has any).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba3_integrations.errors import CheckpointError, ConfigError, InputError
from mamba3_integrations.models import default_embedding_path
from mamba3_integrations.runtime import checkpoint
from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM
from mamba3_integrations.runtime.completion import check_text
from mamba3_integrations.runtime.generation import left_pad

POOLING_MODES = ("mean", "last")
DEFAULT_BATCH_SIZE = 32



@dataclass(frozen=True)
class EmbeddingSettings:
    """The ``embedding`` section of an embedding model's ``config.json``.

    - ``pooling``: "mean" (average of the last hidden states of all tokens) or "last"
      (the last token's hidden state).
    - ``normalize``: L2-normalise the embeddings (cosine similarity = dot product).
    - ``query_prefix`` / ``document_prefix``: prepended by ``embed_queries`` /
      ``embed_documents`` (e.g. "query: " and "passage: ").
    - ``max_segment_tokens``: longer texts are run in segments of this many tokens.
    """

    pooling: str = "mean"
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    max_segment_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.pooling not in POOLING_MODES:
            raise ConfigError(f"embedding.pooling must be one of {list(POOLING_MODES)}, "
                              f"got {self.pooling!r}")
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"embedding.normalize must be true or false, got {self.normalize!r}")
        for name in ("query_prefix", "document_prefix"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(f"embedding.{name} must be a string, got "
                                  f"{getattr(self, name)!r}")
        size = self.max_segment_tokens
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"embedding.max_segment_tokens must be a positive integer, "
                              f"got {size!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EmbeddingSettings:
        """Validate a config's ``embedding`` dict; unknown keys raise ConfigError."""
        if not isinstance(data, dict):
            raise ConfigError(f"embedding must be a JSON object, got {type(data).__name__}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in embedding; allowed keys are "
                              f"{sorted(allowed)}")
        return cls(**data)


def check_texts(texts: Sequence[str]) -> list[str]:
    """Raise InputError unless ``texts`` is a list of non-blank, valid Unicode strings."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InputError(f"texts must be a list of strings, got {type(texts).__name__}")
    return [check_text(t, f"text {i}", allow_blank=False) for i, t in enumerate(texts)]


def load_encoder(
    model_path: str | os.PathLike | None = None,
    encoder: Mamba3Encoder | None = None,
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Mamba3Encoder:
    """The encoder an adapter was given: ``encoder`` as is (``model_path`` then only names
    it), else loaded from ``model_path`` (or the shipped ``mamba3-embed-mini``)."""
    if encoder is not None:
        return encoder
    path = model_path if model_path is not None else default_embedding_path()
    return Mamba3Encoder.from_pretrained(path, dtype=dtype, device=device, batch_size=batch_size)


class Mamba3Encoder:
    """Embeds texts with a Mamba-3 hybrid model and its ``EmbeddingSettings``.

    ``embed`` / ``embed_queries`` / ``embed_documents`` take a list of strings and return
    one embedding per text, in order: ``list[list[float]]``, or a float32 tensor
    (n, dimension) on the model's device with ``as_tensor=True``. Empty or
    whitespace-only texts, non-strings and invalid Unicode raise InputError.
    """

    def __init__(self, model: Mamba3ForCausalLM, settings: EmbeddingSettings | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if model.tokenizer is None:
            raise CheckpointError("an embedding model needs its tokenizer: save one in the "
                                  "model folder or set model.tokenizer")
        if settings is None:
            if model.config.embedding is None:
                raise CheckpointError(
                    "this model is not an embedding model: its config has no 'embedding' "
                    "settings; pass EmbeddingSettings or use an embedding checkpoint")
            settings = EmbeddingSettings.from_dict(model.config.embedding)
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.settings, self.batch_size = model.eval(), settings, batch_size
        self.tokenizer = model.tokenizer

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        **overrides: Any,
    ) -> Mamba3Encoder:
        """Load an embedding model folder; ``overrides`` replace ``embedding`` settings
        (e.g. ``normalize=False``)."""
        path = checkpoint.resolve_folder(folder)
        config = checkpoint.load_config(path)
        if config.embedding is None:
            raise CheckpointError(
                f"{path} is not an embedding model: its config.json has no 'embedding' "
                "section. Use an embedding checkpoint, or use this folder as a language model "
                "(Mamba3ForCausalLM); a model trained for embeddings declares e.g. "
                '"embedding": {"pooling": "mean", "normalize": true}'
            )
        settings = EmbeddingSettings.from_dict({**config.embedding, **overrides})
        model = Mamba3ForCausalLM.from_pretrained(path, dtype=dtype, device=device)
        return cls(model, settings, batch_size)

    @property
    def dimension(self) -> int:
        """Length of each embedding (the model width)."""
        return self.model.config.d_model

    # ---------------------------------------------------------------- public
    def embed(self, texts: Sequence[str], prefix: str = "",
              as_tensor: bool = False) -> list[list[float]] | Tensor:
        """Embeddings of ``texts`` (``prefix`` prepended to each), in input order."""
        texts = check_texts(texts)
        device = next(self.model.parameters()).device
        out = torch.empty(len(texts), self.dimension, dtype=torch.float32, device=device)
        if texts:
            ids = self.tokenizer([prefix + t for t in texts],
                                 add_special_tokens=True)["input_ids"]
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
            limit = self.settings.max_segment_tokens
            long = [i for i in order if len(ids[i]) > limit]
            short = [i for i in order if len(ids[i]) <= limit]
            for i in long:
                out[i] = self._embed_segmented(ids[i], device)
            for start in range(0, len(short), self.batch_size):
                rows = short[start:start + self.batch_size]
                out[rows] = self._embed_batch([ids[i] for i in rows], device)
            if self.settings.normalize:
                out = F.normalize(out, dim=-1)
        return out if as_tensor else out.tolist()

    def embed_queries(self, texts: Sequence[str],
                      as_tensor: bool = False) -> list[list[float]] | Tensor:
        """Embeddings of search queries (with the model's ``query_prefix``)."""
        return self.embed(texts, self.settings.query_prefix, as_tensor)

    def embed_documents(self, texts: Sequence[str],
                        as_tensor: bool = False) -> list[list[float]] | Tensor:
        """Embeddings of documents (with the model's ``document_prefix``)."""
        return self.embed(texts, self.settings.document_prefix, as_tensor)

    # -------------------------------------------------------------- pooling
    @torch.inference_mode()
    def _embed_batch(self, rows: list[list[int]], device: torch.device) -> Tensor:
        """Pooled hidden states of texts that fit in one segment, as one padded batch."""
        pad = self.tokenizer.pad_token_id or 0
        ids, mask = left_pad(rows, pad, device)
        hidden = self.model.hidden_states(ids, mask).float()
        if self.settings.pooling == "last":
            return hidden[:, -1]
        weights = mask.unsqueeze(-1).float()
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)

    @torch.inference_mode()
    def _embed_segmented(self, ids: list[int], device: torch.device) -> Tensor:
        """Pooled hidden states of one long text, run in segments that carry the cache."""
        size = self.settings.max_segment_tokens
        cache = self.model.allocate_cache(1, capacity=len(ids), device=device)
        total = torch.zeros(self.dimension, dtype=torch.float32, device=device)
        for start in range(0, len(ids), size):
            segment = torch.tensor([ids[start:start + size]], dtype=torch.long, device=device)
            hidden = self.model.hidden_states(segment, cache=cache)[0].float()
            total = hidden[-1] if self.settings.pooling == "last" else total + hidden.sum(0)
        return total if self.settings.pooling == "last" else total / len(ids)
