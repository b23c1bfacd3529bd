"""LlamaIndex node parser around the semantic chunker."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from llama_index.core import Settings
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, SerializeAsAny
from llama_index.core.node_parser import NodeParser
from llama_index.core.node_parser.node_utils import build_nodes_from_splits
from llama_index.core.schema import BaseNode, Document, MetadataMode

from mamba3_integrations.text.chunking import SemanticChunker
from mamba3_integrations.text.tokens import token_counter

logger = logging.getLogger(__name__)


class Mamba3SemanticNodeParser(NodeParser):
    """Split documents into semantically coherent nodes of at most ``max_tokens`` tokens.

    Nodes of one source are contiguous and rebuild its text exactly; ``start_char_idx`` and
    ``end_char_idx`` are offsets into the source's text. Sources whose text is empty or
    whitespace-only are skipped with a warning.
    """

    embed_model: SerializeAsAny[BaseEmbedding] | None = Field(
        default=None,
        description="Embeds sentence windows; None uses Settings.embed_model at parse time.",
    )
    tokenizer: Any = Field(
        default=None,
        exclude=True,
        description="Counts tokens: None (words and punctuation), a tokenizer with .encode, "
        "or a callable text -> int or token list.",
    )
    breakpoint: str = Field(
        default="percentile",
        description="threshold, percentile, standard_deviation or interquartile.",
    )
    breakpoint_amount: float | None = Field(
        default=None, description="Amount for the breakpoint kind; None uses its default."
    )
    buffer_size: int = Field(default=1, description="Neighbour sentences embedded each side.")
    max_tokens: int = Field(default=512, description="Hard upper bound on a node's tokens.")
    min_tokens: int = Field(default=0, description="Smaller nodes are merged when they fit.")
    embed_batch_size: int = Field(default=256, description="Sentence windows per embed call.")

    @classmethod
    def class_name(cls) -> str:
        return "Mamba3SemanticNodeParser"

    def model_post_init(self, context: Any, /) -> None:
        self._chunker(show_progress=False)  # raises ConfigError on invalid options

    def _chunker(self, show_progress: bool) -> SemanticChunker:
        def embed(texts: list[str]) -> list[list[float]]:
            model = self.embed_model or Settings.embed_model
            return model.get_text_embedding_batch(texts, show_progress=show_progress)

        return SemanticChunker(
            embed=embed,
            count_tokens=token_counter(self.tokenizer),
            breakpoint=self.breakpoint,
            breakpoint_amount=self.breakpoint_amount,
            buffer_size=self.buffer_size,
            max_tokens=self.max_tokens,
            min_tokens=self.min_tokens,
            embed_batch_size=self.embed_batch_size,
        )

    def _parse_nodes(
        self, nodes: Sequence[BaseNode], show_progress: bool = False, **kwargs: Any
    ) -> list[BaseNode]:
        sources = []
        for node in nodes:
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if text.strip():
                sources.append((node, text))
            else:
                logger.warning("skipping node %s: its text is empty or whitespace-only", node.id_)
        chunked = self._chunker(show_progress).chunk_documents(
            [text for _, text in sources], [node.id_ for node, _ in sources]
        )
        parsed: list[BaseNode] = []
        for (source, _), chunks in zip(sources, chunked, strict=True):
            children = build_nodes_from_splits(
                [chunk.text for chunk in chunks], source, id_func=self.id_func
            )
            for child, chunk in zip(children, chunks, strict=True):
                child.start_char_idx = chunk.start_char
                child.end_char_idx = chunk.end_char
            parsed.extend(children)
        return parsed

    def _postprocess_parsed_nodes(
        self, nodes: list[BaseNode], parent_doc_map: dict[str, Document]
    ) -> list[BaseNode]:
        # The base class re-derives offsets with str.find, which picks the wrong occurrence
        # when a chunk's text repeats earlier in the source; keep the exact ones.
        offsets = [(node.start_char_idx, node.end_char_idx) for node in nodes]
        nodes = super()._postprocess_parsed_nodes(nodes, parent_doc_map)
        for node, (start, end) in zip(nodes, offsets, strict=True):
            node.start_char_idx, node.end_char_idx = start, end
        return nodes
