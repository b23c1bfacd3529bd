"""``Mamba3ForCausalLM``: the model plus loading, saving, generation and streaming."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mamba3_integrations.errors import InputError
from mamba3_integrations.modeling.config import Mamba3Config
from mamba3_integrations.modeling.lm import Mamba3LMHeadModel
from mamba3_integrations.runtime import checkpoint
from mamba3_integrations.runtime.generation import (
    GenerationConfig,
    TokenIds,
    as_batch,
    generate,
    stream_steps,
)
from mamba3_integrations.runtime.sampling import SamplingParams
from mamba3_integrations.runtime.streaming import IncrementalDecoder, iter_text


class Mamba3ForCausalLM(Mamba3LMHeadModel):
    """Mamba-3 hybrid LM with ``from_pretrained``/``save_pretrained`` in the official
    format and cached generation (``generate``, ``stream``, ``generate_text``,
    ``stream_text``). ``tokenizer`` is the tokenizer saved with the model, if any.
    """

    def __init__(self, config: Mamba3Config, device=None, dtype=None,
                 tokenizer: Any = None) -> None:
        super().__init__(config, device=device, dtype=dtype)
        self.tokenizer = tokenizer

    # ------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        load_tokenizer: bool = True,
    ) -> Mamba3ForCausalLM:
        """Load a model folder (official checkpoints unchanged) and its tokenizer."""
        folder = checkpoint.resolve_folder(name_or_path)
        config = checkpoint.load_config(folder)
        state = checkpoint.load_state_dict(folder)
        with torch.device("meta"):
            model = cls(config, dtype=checkpoint.resolve_dtype(dtype))
        model = model.to_empty(device=device or "cpu")
        tied = ["lm_head.weight"] if config.tie_embeddings else []
        checkpoint.check_state_dict(model, state, tied=tied)
        model.load_state_dict(state, strict=False)
        model.tie_weights()
        if load_tokenizer:
            model.tokenizer = checkpoint.load_tokenizer(folder)
        return model.eval()

    def save_pretrained(self, folder: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write ``config.json``, the weights and the tokenizer (if any) to ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.to_json_file(folder / checkpoint.CONFIG_FILE)
        checkpoint.save_weights(self.state_dict(), folder, safe_serialization)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(folder))

    # -------------------------------------------------------------- generation
    def generation_config(
        self,
        max_new_tokens: int = 64,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int | None = None,
        stop_strings: Sequence[str] | str | None = None,
        seed: int | None = None,
        use_cuda_graph: bool = False,
    ) -> GenerationConfig:
        """Build a GenerationConfig; EOS and padding default to the tokenizer's."""
        tok = self.tokenizer
        if eos_token_id is None and tok is not None and tok.eos_token_id is not None:
            eos_token_id = tok.eos_token_id
        eos = [] if eos_token_id is None else (
            [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id))
        if pad_token_id is None:
            pad_token_id = (tok.pad_token_id if tok is not None and tok.pad_token_id is not None
                            else eos[0] if eos else 0)
        stops = [stop_strings] if isinstance(stop_strings, str) else list(stop_strings or [])
        return GenerationConfig(
            max_new_tokens=max_new_tokens,
            sampling=SamplingParams(do_sample, temperature, top_k, top_p),
            eos_token_id=eos, pad_token_id=pad_token_id, stop_strings=stops, seed=seed,
            use_cuda_graph=use_cuda_graph,
        )

    def generate(self, input_ids: TokenIds, attention_mask: Tensor | None = None,
                 **kwargs: Any) -> Tensor | list[list[int]]:
        """Prompt plus new tokens; keyword arguments as ``generation_config``.

        Tensor in, tensor out (rows that stop early padded on the right); token
        lists in, token lists out.
        """
        config = self.generation_config(**kwargs)
        return generate(self, input_ids, attention_mask, config, self.tokenizer)

    def stream(self, input_ids: TokenIds, attention_mask: Tensor | None = None,
               **kwargs: Any) -> Iterator[Tensor]:
        """Yield each step's new token per row, (b,), as soon as it is chosen."""
        config = self.generation_config(**kwargs)
        ids, mask = as_batch(input_ids, attention_mask, config.pad_token_id, self._device())
        for tokens, _ in stream_steps(self, ids, mask, config, self.tokenizer):
            yield tokens

    # ----------------------------------------------------------------- text
    def _tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise InputError("this model has no tokenizer: save one in its folder or set "
                             "model.tokenizer")
        return self.tokenizer

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each prompt (with the tokenizer's special tokens, if any)."""
        tok = self._tokenizer()
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("prompts must be a list of strings")
        if any(not t for t in texts):
            raise InputError("a prompt is empty; give at least one character")
        return [tok(t, add_special_tokens=True)["input_ids"] for t in texts]

    def generate_text(self, prompts: str | Sequence[str], **kwargs: Any) -> str | list[str]:
        """Completions of one prompt or a batch of prompts, cut at a stop string."""
        single = isinstance(prompts, str)
        batch = [prompts] if single else list(prompts)
        config = self.generation_config(**kwargs)
        ids, mask = as_batch(self.encode(batch), None, config.pad_token_id, self._device())
        decoders = [IncrementalDecoder(self._tokenizer(), config.stop_strings) for _ in batch]
        for tokens, real in stream_steps(self, ids, mask, config, self.tokenizer):
            for row in real.nonzero().squeeze(-1).tolist():
                decoders[row].add(int(tokens[row]))
        for d in decoders:
            d.flush()
        texts = [d.text()[: d.emitted] for d in decoders]
        return texts[0] if single else texts

    def stream_text(self, prompt: str, **kwargs: Any) -> Iterator[str]:
        """Yield the completion of one prompt as text deltas, while it is generated."""
        config = self.generation_config(**kwargs)
        ids, mask = as_batch(self.encode([prompt]), None, config.pad_token_id, self._device())
        tokens = (int(t[0]) for t, real in stream_steps(self, ids, mask, config, self.tokenizer)
                  if bool(real[0]))
        yield from iter_text(tokens, self._tokenizer(), config.stop_strings)

    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` (no special tokens)."""
        return len(self._tokenizer()(text, add_special_tokens=False)["input_ids"])
