"""Token counting: a dependency-free default and an adapter for tokenizer objects."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from mamba3_integrations.errors import ConfigError

TokenCounter = Callable[[str], int]

_WORD_OR_PUNCT = re.compile(r"\w+|[^\w\s]")


def count_word_tokens(text: str) -> int:
    """Count words and punctuation marks: a fast, model-free estimate of a token count."""
    return len(_WORD_OR_PUNCT.findall(text))


def token_counter(tokenizer: Any = None) -> TokenCounter:
    """Turn ``tokenizer`` into a ``str -> int`` counter.

    Accepts ``None`` (the word/punctuation counter), an object with ``encode`` (a Hugging Face
    ``tokenizers.Tokenizer`` or ``transformers`` tokenizer, counted without special tokens, or a
    tiktoken encoding), or a callable returning either an ``int`` or a list of tokens (the
    LlamaIndex ``Settings.tokenizer`` convention).
    """
    if tokenizer is None:
        return count_word_tokens
    encode = getattr(tokenizer, "encode", None)
    if callable(encode):
        return _encoder_counter(encode)
    if callable(tokenizer):
        return _callable_counter(tokenizer)
    raise ConfigError(
        f"tokenizer must be None, an object with .encode(text), or a callable text -> int; "
        f"got {type(tokenizer).__name__}"
    )


def _encoder_counter(encode: Callable[..., Any]) -> TokenCounter:
    try:
        encode("probe", add_special_tokens=False)
        kwargs: dict[str, Any] = {"add_special_tokens": False}
    except TypeError:
        kwargs = {}

    def count(text: str) -> int:
        encoded = encode(text, **kwargs)
        return len(getattr(encoded, "ids", encoded))

    return count


def _callable_counter(function: Callable[[str], Any]) -> TokenCounter:
    def count(text: str) -> int:
        result = function(text)
        return result if isinstance(result, int) else len(result)

    return count
