"""Framework-free text processing: sentences, semantic chunks, order-preserving context."""

from mamba3_integrations.text.chunking import BREAKPOINT_DEFAULTS, Chunk, SemanticChunker
from mamba3_integrations.text.context import (
    ContextTemplate,
    ScoredChunk,
    render_context,
    render_pieces,
    scores_or_ranks,
    select_context,
)
from mamba3_integrations.text.sentences import split_sentences
from mamba3_integrations.text.tokens import TokenCounter, count_word_tokens, token_counter

__all__ = [
    "BREAKPOINT_DEFAULTS",
    "Chunk",
    "ContextTemplate",
    "ScoredChunk",
    "SemanticChunker",
    "TokenCounter",
    "count_word_tokens",
    "render_context",
    "render_pieces",
    "scores_or_ranks",
    "select_context",
    "split_sentences",
    "token_counter",
]
