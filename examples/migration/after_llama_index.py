"""RAG with LlamaIndex, after the migration: mamba3-integrations components.

Mamba3SemanticNodeParser -> Mamba-3 embeddings -> PGVectorStore (PostgreSQL + pgvector) ->
top-k retrieval -> OrderPreservingPostprocessor -> the Mamba-3 hybrid LM, streamed.
docs/migration.md compares it with before_llama_index.py: only imports and constructors differ.

    python examples/migration/after_llama_index.py

The shipped default models are used unless --lm / --embedder name other model folders. The
database is the embedded PostgreSQL unless --dsn (a libpq connection string) or
$MAMBA3_PG_DSN is given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.core.vector_stores.types import BasePydanticVectorStore

from mamba3_integrations.llama_index import (
    Mamba3Embedding,
    Mamba3LLM,
    Mamba3SemanticNodeParser,
    OrderPreservingPostprocessor,
    PGVectorStore,
)

DOCS = Path(__file__).resolve().parents[2] / "mamba3_integrations" / "data" / "demo_docs"


@dataclass
class RAG:
    """The components of the pipeline."""

    llm: LLM
    embed_model: BaseEmbedding
    splitter: TransformComponent
    vector_store: BasePydanticVectorStore
    postprocessor: BaseNodePostprocessor
    top_k: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lm", default=None, help="model folder (default: the shipped LM)")
    parser.add_argument("--embedder", default=None,
                        help="embedding model folder (default: the shipped embedder)")
    parser.add_argument("--docs", default=str(DOCS / "postgresql"), help="folder of *.md files")
    parser.add_argument("--question", default="What does a GIN index support?")
    parser.add_argument("--dsn", default=None, help="libpq connection string")
    parser.add_argument("--table", default="migration_llama_index")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> RAG:
    """Create the components."""
    embed_model = Mamba3Embedding(model_path=args.embedder)
    return RAG(
        llm=Mamba3LLM(model_path=args.lm, max_new_tokens=args.max_new_tokens),
        embed_model=embed_model,
        splitter=Mamba3SemanticNodeParser(embed_model=embed_model, max_tokens=256),
        vector_store=PGVectorStore(
            connection_string=args.dsn,
            table_name=args.table,
            embed_dim=len(embed_model.get_query_embedding("dimension probe"))),
        postprocessor=OrderPreservingPostprocessor(token_budget=900),
        top_k=8,
    )


def ingest(rag: RAG, paths: list[Path]) -> list[BaseNode]:
    """Replace the table's rows with the chunks of ``paths``, embedded."""
    documents = SimpleDirectoryReader(input_files=paths).load_data()
    rag.vector_store.clear()
    pipeline = IngestionPipeline(transformations=[rag.splitter, rag.embed_model],
                                 vector_store=rag.vector_store)
    return pipeline.run(documents=documents)


def query_engine(rag: RAG) -> BaseQueryEngine:
    """A streaming query engine over the table."""
    index = VectorStoreIndex.from_vector_store(rag.vector_store, embed_model=rag.embed_model)
    return index.as_query_engine(llm=rag.llm, similarity_top_k=rag.top_k, streaming=True,
                                 node_postprocessors=[rag.postprocessor])


def main(argv: list[str] | None = None) -> str:
    """Ingest the documents, answer the question (streamed), print the sources."""
    args = parse_args(argv)
    rag = build(args)
    print("components:", ", ".join(f"{type(c).__module__}.{type(c).__name__}" for c in (
        rag.llm, rag.embed_model, rag.splitter, rag.vector_store, rag.postprocessor)))
    paths = sorted(Path(args.docs).glob("*.md"))
    nodes = ingest(rag, paths)
    print(f"ingested {len(paths)} documents as {len(nodes)} chunks")
    response = query_engine(rag).query(args.question)
    print(f"Q: {args.question}\nA: ", end="")
    answer = ""
    for delta in response.response_gen:
        answer += delta
        print(delta, end="", flush=True)
    print("\nsources:")
    for hit in response.source_nodes:
        print(f"  {hit.score:6.3f}  {hit.node.metadata['file_name']}  "
              f"chars {hit.node.start_char_idx}-{hit.node.end_char_idx}")
    return answer


if __name__ == "__main__":
    main()
