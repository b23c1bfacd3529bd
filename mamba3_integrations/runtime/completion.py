"""Completions and chat for the framework adapters.

One core for LlamaIndex and LangChain: loading the model an adapter names, prompts
from text or from chat messages (the tokenizer's chat template), generation options,
and ``CompletionStream``, which yields text deltas while the model generates and then
reports token usage and why it stopped.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from mamba3_integrations.errors import InputError
from mamba3_integrations.models import default_lm_path
from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM
from mamba3_integrations.runtime.generation import as_batch, stream_steps
from mamba3_integrations.runtime.streaming import IncrementalDecoder

# Context window reported when ``config.json`` has no ``context_length``.
DEFAULT_CONTEXT_WINDOW = 4096

# Used when the tokenizer has no chat template: "<|role|>\ncontent\n" per message.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def check_text(text: Any, name: str = "prompt", allow_blank: bool = True) -> str:
    """Raise InputError unless ``text`` is a non-empty, valid Unicode ``str``."""
    if isinstance(text, (bytes, bytearray)):
        raise InputError(f"{name} is bytes; decode it first, e.g. data.decode('utf-8')")
    if not isinstance(text, str):
        raise InputError(f"{name} has type {type(text).__name__}, expected str")
    if not (text if allow_blank else text.strip()):
        raise InputError(f"{name} is empty{'' if allow_blank else ' or only whitespace'}; "
                         "give it some text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"{name} is not valid Unicode: {text[exc.start:exc.end]!r} at position {exc.start} "
            "(bytes that were not valid UTF-8, kept as surrogate escapes); decode the source "
            "with errors='replace' or fix its encoding"
        ) from exc
    return text


def load_lm(model_path: str | os.PathLike | None = None, lm: Mamba3ForCausalLM | None = None,
            dtype: torch.dtype | str | None = None,
            device: torch.device | str | None = None) -> Mamba3ForCausalLM:
    """The model an adapter was given: ``lm`` as is (``model_path`` then only names it),
    else loaded from ``model_path`` (or the shipped ``mamba3-hybrid-mini``). It needs a
    tokenizer."""
    if lm is None:
        path = model_path if model_path is not None else default_lm_path()
        lm = Mamba3ForCausalLM.from_pretrained(path, dtype=dtype, device=device)
    if lm.tokenizer is None:
        raise InputError("the model has no tokenizer: save one in its folder or set "
                         "model.tokenizer")
    return lm.eval()


def model_name(model_path: str | os.PathLike | None) -> str:
    """A display name: the model folder's name, or "mamba3"."""
    return Path(model_path).name if model_path is not None else "mamba3"


def context_window(lm: Mamba3ForCausalLM) -> int:
    """``config.context_length`` if set, else ``DEFAULT_CONTEXT_WINDOW``."""
    return lm.config.context_length or DEFAULT_CONTEXT_WINDOW


@dataclass(frozen=True)
class GenerationOptions:
    """How a completion is generated.

    Greedy unless sampling is asked for: ``do_sample=None`` samples when
    ``temperature`` > 0. ``stop`` strings end the text (they are not included).
    """

    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop or ()))
        if self.temperature is not None and self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.do_sample and not self.temperature and self.temperature is not None:
            raise InputError("do_sample=True needs temperature > 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError(f"stop strings must be non-empty strings, got {list(self.stop)}")

    def update(self, **changes: Any) -> GenerationOptions:
        """A copy with ``changes`` (None values ignored); unknown names raise InputError."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise InputError(f"unknown generation option(s) {unknown}; known options are "
                             f"{sorted(known)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def model_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Mamba3ForCausalLM.generation_config``."""
        sample = self.do_sample if self.do_sample is not None else bool(self.temperature)
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": sample,
            "temperature": self.temperature if sample and self.temperature else 1.0,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "stop_strings": list(self.stop),
            "seed": self.seed,
        }


def text_prompt(lm: Mamba3ForCausalLM, prompt: str) -> list[int]:
    """Token ids of a plain-text prompt (with the tokenizer's special tokens)."""
    return lm.tokenizer(check_text(prompt), add_special_tokens=True)["input_ids"]


def chat_prompt(lm: Mamba3ForCausalLM, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """Token ids of chat messages ({"role", "content"} dicts) through the tokenizer's chat
    template, or ``DEFAULT_CHAT_TEMPLATE``, ending with the assistant's turn."""
    if not messages:
        raise InputError("a chat needs at least one message")
    for i, message in enumerate(messages):
        check_text(message["content"], f"the content of message {i}")
    tokenizer = lm.tokenizer
    text = tokenizer.apply_chat_template(
        [dict(m) for m in messages], chat_template=tokenizer.chat_template or DEFAULT_CHAT_TEMPLATE,
        tokenize=False, add_generation_prompt=True,
    )
    # The template writes the special tokens it wants; do not add them twice.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


class CompletionStream:
    """Iterating yields the completion's text deltas as the model produces them
    (held back only while they may be part of a stop string or of a UTF-8 character).

    Afterwards: ``text``, ``prompt_tokens``, ``completion_tokens`` (tokens generated,
    an end-of-sequence token included) and ``finish_reason`` ("stop": end of sequence
    or a stop string; "length": ``max_new_tokens`` reached).
    """

    def __init__(self, lm: Mamba3ForCausalLM, prompt_ids: list[int],
                 options: GenerationOptions) -> None:
        self.lm, self.prompt_ids = lm, prompt_ids
        self.config = lm.generation_config(**options.model_kwargs())  # bad options raise here
        self.text = ""
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.finish_reason: str | None = None

    def __iter__(self) -> Iterator[str]:
        lm, config = self.lm, self.config
        device = next(lm.parameters()).device
        ids, mask = as_batch([self.prompt_ids], None, config.pad_token_id, device)
        decoder = IncrementalDecoder(lm.tokenizer, config.stop_strings)
        last = None
        for tokens, _ in stream_steps(lm, ids, mask, config, lm.tokenizer):
            last = int(tokens[0])
            self.completion_tokens += 1
            yield from self._emit(decoder.add(last))
            if decoder.finished:
                break
        yield from self._emit(decoder.flush())
        stopped = decoder.finished or last in config.eos_token_id
        self.finish_reason = ("stop" if stopped or self.completion_tokens < config.max_new_tokens
                              else "length")

    def _emit(self, delta: str) -> Iterator[str]:
        if delta:
            self.text += delta
            yield delta

    def usage(self) -> dict[str, int]:
        """{"input_tokens", "output_tokens", "total_tokens"}."""
        return {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}
