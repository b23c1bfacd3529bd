"""LlamaIndex node postprocessor around order-preserving context selection."""

from __future__ import annotations

import uuid
from typing import Any

from llama_index.core.bridge.pydantic import Field
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import (
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    TextNode,
)

from mamba3_integrations.errors import ConfigError
from mamba3_integrations.text.context import (
    DEFAULT_CHUNK_TEMPLATE,
    DEFAULT_DOCUMENT_TEMPLATE,
    ContextTemplate,
    ScoredChunk,
    render_pieces,
    scores_or_ranks,
    select_context,
)
from mamba3_integrations.text.tokens import TokenCounter, token_counter


class OrderPreservingPostprocessor(BaseNodePostprocessor):
    """Keep the most relevant nodes within a token budget and return them in reading order.

    The document of a node is ``node.ref_doc_id`` (the SOURCE relationship), else the node
    itself. Documents come in the order of their best node; inside a document, nodes follow
    ``start_char_idx``, else ``metadata[position_metadata_key]``; nodes with neither come
    first, in retrieval order. Nodes without a score are ranked by retrieval order (see
    ``scores_or_ranks``). The budget counts what the LLM sees of a node (text, LLM metadata).
    """

    min_score: float | None = Field(default=None, description="Drop nodes scoring below.")
    token_budget: int | None = Field(default=None, description="Token budget; None: no limit.")
    tokenizer: Any = Field(
        default=None,
        exclude=True,
        description="Counts tokens: None (words and punctuation), a tokenizer with .encode, "
        "or a callable text -> int or token list.",
    )
    merge_adjacent: bool = Field(
        default=False, description="Join touching or overlapping nodes of one document."
    )
    render: bool = Field(
        default=False,
        description="Rewrite node texts with document and chunk markers from the templates.",
    )
    document_template: str = Field(default=DEFAULT_DOCUMENT_TEMPLATE)
    chunk_template: str = Field(default=DEFAULT_CHUNK_TEMPLATE)
    position_metadata_key: str | None = Field(
        default=None, description="Metadata key holding a position when start_char_idx is None."
    )

    @classmethod
    def class_name(cls) -> str:
        return "OrderPreservingPostprocessor"

    def model_post_init(self, context: Any, /) -> None:
        self._template()
        if self.token_budget is not None and self.token_budget < 0:
            raise ConfigError(f"token_budget must be >= 0 or None, got {self.token_budget}")

    def _template(self) -> ContextTemplate:
        return ContextTemplate(document=self.document_template, chunk=self.chunk_template)

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        count_tokens = token_counter(self.tokenizer)
        scores = scores_or_ranks([node.score for node in nodes])
        # Position of a node without one: negative, in retrieval order, so it never collides
        # with a real offset; a node retrieved twice keeps its first.
        fallback: dict[str, int] = {}
        chunks = [
            self._scored_chunk(
                node, score, fallback.setdefault(node.node.node_id, rank - len(nodes)), count_tokens
            )
            for rank, (node, score) in enumerate(zip(nodes, scores, strict=True))
        ]
        selected = select_context(
            chunks,
            min_score=self.min_score,
            token_budget=self.token_budget,
            count_tokens=count_tokens,
            merge_adjacent=self.merge_adjacent,
        )
        results = [_node_with_score(chunk) for chunk in selected]
        if self.render:
            pieces = render_pieces(selected, self._template())
            results = [
                NodeWithScore(
                    node=result.node.model_copy(update={"text": piece}), score=result.score
                )
                for result, piece in zip(results, pieces, strict=True)
            ]
        return results

    def _scored_chunk(
        self, result: NodeWithScore, score: float, fallback: int, count_tokens: TokenCounter
    ) -> ScoredChunk:
        node = result.node
        start = node.start_char_idx if isinstance(node, TextNode) else None
        end = node.end_char_idx if isinstance(node, TextNode) else None
        position = start
        if position is None and self.position_metadata_key is not None:
            position = node.metadata.get(self.position_metadata_key)
        return ScoredChunk(
            text=node.get_content(metadata_mode=MetadataMode.NONE),
            score=score,
            doc_id=node.ref_doc_id or node.node_id,
            index=position if isinstance(position, int) else fallback,
            start_char=start,
            end_char=end,
            token_count=count_tokens(node.get_content(metadata_mode=MetadataMode.LLM)),
            metadata=node.metadata,
            source=result,
        )


def _node_with_score(chunk: ScoredChunk) -> NodeWithScore:
    if not chunk.parts:
        return chunk.source
    first: TextNode = chunk.parts[0].source.node
    last: TextNode = chunk.parts[-1].source.node
    relationships = {
        kind: info
        for kind, info in first.relationships.items()
        if kind is not NodeRelationship.NEXT
    }
    if NodeRelationship.NEXT in last.relationships:
        relationships[NodeRelationship.NEXT] = last.relationships[NodeRelationship.NEXT]
    part_ids = "|".join(part.source.node.node_id for part in chunk.parts)
    merged = first.model_copy(
        update={
            "id_": str(uuid.uuid5(uuid.NAMESPACE_OID, part_ids)),
            "text": chunk.text,
            "start_char_idx": chunk.start_char,
            "end_char_idx": chunk.end_char,
            "metadata": dict(first.metadata),
            "relationships": relationships,
            "embedding": None,
        }
    )
    part_scores = [part.source.score for part in chunk.parts if part.source.score is not None]
    return NodeWithScore(node=merged, score=max(part_scores) if part_scores else None)
