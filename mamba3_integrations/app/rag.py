"""The README's main job as a library: ingest documents into pgvector, answer with sources.

Framework-free: semantic chunking (``text``), Mamba-3 embeddings and generation
(``runtime``), PostgreSQL + pgvector (``stores``), order-preserving context (``text``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from mamba3_integrations.app.documents import SourceDocument
from mamba3_integrations.errors import InputError
from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM
from mamba3_integrations.runtime.embedding import Mamba3Encoder
from mamba3_integrations.stores import CollectionConfig, ConnectionOptions, PgVectorCore, Record
from mamba3_integrations.text.chunking import SemanticChunker
from mamba3_integrations.text.context import (
    ContextTemplate,
    ScoredChunk,
    render_context,
    select_context,
)
from mamba3_integrations.text.tokens import token_counter

# Plain Markdown context and a completion prompt: the shipped LM is a base model trained on
# documentation, not a chat model.
CONTEXT_TEMPLATE = ContextTemplate(document="## {doc_id}\n\n{chunks}", chunk="{text}",
                                   separator="\n\n")
PROMPT = ("Use the documents below to answer the question.\n\n{context}\n\n"
          "Question: {question}\nAnswer:")
STOP_STRINGS = ["\nQuestion:", "\n\n\n"]


@dataclass(frozen=True)
class RagSettings:
    """Knobs of the pipeline (chunk size, retrieval depth, context budget, answer length)."""

    collection: str = "mamba3_rag"
    chunk_tokens: int = 200
    top_k: int = 8
    context_tokens: int = 900
    min_score: float | None = None
    max_new_tokens: int = 160
    hybrid: bool = False


@dataclass(frozen=True)
class Source:
    """A chunk that went into the prompt, with its retrieval score."""

    doc_id: str
    title: str
    index: int
    score: float
    text: str


@dataclass
class Answer:
    """A streamed answer: iterate ``deltas`` for the text; ``sources`` are known up front."""

    question: str
    sources: list[Source]
    deltas: Iterator[str]


class RagPipeline:
    """Ingest documents into one pgvector collection and answer questions over it."""

    def __init__(self, lm: Mamba3ForCausalLM, encoder: Mamba3Encoder,
                 dsn: str | None = None, settings: RagSettings | None = None) -> None:
        self.lm, self.encoder = lm, encoder
        self.settings = settings or RagSettings()
        self.count_tokens = token_counter(encoder.tokenizer)
        # Sentences embedded alone (buffer 0): sharper similarity drops, a third of the work.
        self.chunker = SemanticChunker(embed=encoder.embed_documents,
                                       count_tokens=self.count_tokens, buffer_size=0,
                                       max_tokens=self.settings.chunk_tokens)
        config = CollectionConfig(self.settings.collection, encoder.dimension)
        self.store = PgVectorCore(config, ConnectionOptions(dsn=dsn))

    def close(self) -> None:
        self.store.close()

    # ---------------------------------------------------------------- ingest
    def ingest(self, documents: Sequence[SourceDocument],
               progress: Iterable[SourceDocument] | None = None) -> int:
        """Chunk, embed and store documents (replacing earlier versions); returns chunks written.

        ``progress`` may wrap ``documents`` (e.g. in a tqdm bar).
        """
        written = 0
        for doc in progress if progress is not None else documents:
            # Whitespace-only pieces (possible between code blocks) carry nothing to retrieve.
            chunks = [c for c in self.chunker.chunk(doc.text, doc.doc_id) if c.text.strip()]
            vectors = self.encoder.embed_documents([c.text for c in chunks])
            records = [
                Record(id=f"{doc.doc_id}#{c.index}", embedding=v, text=c.text,
                       document_id=doc.doc_id,
                       metadata={"title": doc.title, "index": c.index,
                                 "start_char": c.start_char, "end_char": c.end_char,
                                 "tokens": c.token_count})
                for c, v in zip(chunks, vectors, strict=True)
            ]
            self.store.delete(document_ids=[doc.doc_id])
            written += self.store.upsert(records)
        return written

    def count(self) -> int:
        return self.store.count()

    # ------------------------------------------------------------------- ask
    def retrieve(self, question: str) -> list[ScoredChunk]:
        """The most relevant chunks, chosen within the token budget and put back in
        document order."""
        if not isinstance(question, str) or not question.strip():
            raise InputError("the question is empty")
        query = self.encoder.embed_queries([question])[0]
        k = self.settings.top_k
        hits = (self.store.hybrid_search(query, question, k) if self.settings.hybrid
                else self.store.search(query, k))
        chunks = [
            ScoredChunk(text=h.record.text, score=h.score, doc_id=h.record.document_id or "",
                        index=int(h.record.metadata.get("index", 0)),
                        start_char=h.record.metadata.get("start_char"),
                        end_char=h.record.metadata.get("end_char"),
                        metadata=dict(h.record.metadata))
            for h in hits
        ]
        return select_context(chunks, min_score=self.settings.min_score,
                              token_budget=self.settings.context_tokens,
                              count_tokens=self.count_tokens, merge_adjacent=True)

    def prompt(self, question: str, chunks: Sequence[ScoredChunk]) -> str:
        """The completion prompt: instructions, the ordered context, the question."""
        return PROMPT.format(context=render_context(chunks, CONTEXT_TEMPLATE),
                             question=question.strip())

    def ask(self, question: str, **generation: object) -> Answer:
        """Retrieve, then stream the answer (greedy unless sampling options are given)."""
        chunks = self.retrieve(question)
        sources = [Source(c.doc_id, str(c.metadata.get("title", c.doc_id)), c.index, c.score,
                          c.text) for c in chunks]
        options = {"max_new_tokens": self.settings.max_new_tokens,
                   "stop_strings": STOP_STRINGS, **generation}
        deltas = self.lm.stream_text(self.prompt(question, chunks), **options)
        return Answer(question, sources, deltas)
