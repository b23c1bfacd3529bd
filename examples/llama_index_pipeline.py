"""A LlamaIndex RAG pipeline built from mamba3-integrations components only.

Semantic chunking -> Mamba-3 embeddings -> PostgreSQL + pgvector -> retrieval ->
order-preserving context -> Mamba-3 hybrid LLM, streamed. Offline, with the shipped
default models (or the folders given with --lm / --embedder) and an embedded PostgreSQL unless
--dsn (or $MAMBA3_PG_DSN) is given.

    python examples/llama_index_pipeline.py --question "What does a GIN index support?"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from llama_index.core import Settings, SimpleDirectoryReader, StorageContext, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline

from mamba3_integrations.llama_index import (
    Mamba3Embedding,
    Mamba3LLM,
    Mamba3SemanticNodeParser,
    OrderPreservingPostprocessor,
    PGVectorStore,
)

DOCS = Path(__file__).resolve().parents[1] / "mamba3_integrations" / "data" / "demo_docs"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default=str(DOCS / "postgresql"))
    parser.add_argument("--question", default="What does a GIN index support?")
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--table", default="llama_index_example")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lm", default=None, help="model folder (default: the shipped LM)")
    parser.add_argument("--embedder", default=None,
                        help="embedding model folder (default: the shipped embedder)")
    args = parser.parse_args(argv)

    Settings.llm = Mamba3LLM(model_path=args.lm, max_new_tokens=args.max_new_tokens)
    Settings.embed_model = Mamba3Embedding(model_path=args.embedder)
    dimension = len(Settings.embed_model.get_query_embedding("dimension probe"))
    vector_store = PGVectorStore(table_name=args.table, embed_dim=dimension,
                                 connection_string=args.dsn)
    vector_store.clear()

    documents = SimpleDirectoryReader(args.docs, required_exts=[".md"]).load_data()
    pipeline = IngestionPipeline(
        transformations=[Mamba3SemanticNodeParser(max_tokens=256), Settings.embed_model],
        vector_store=vector_store,
    )
    nodes = pipeline.run(documents=documents, show_progress=True)
    print(f"ingested {len(documents)} documents as {len(nodes)} nodes")

    index = VectorStoreIndex.from_vector_store(
        vector_store, storage_context=StorageContext.from_defaults(vector_store=vector_store))
    engine = index.as_query_engine(
        similarity_top_k=8, streaming=True,
        node_postprocessors=[OrderPreservingPostprocessor(token_budget=900)])
    response = engine.query(args.question)
    print(f"Q: {args.question}\nA: ", end="")
    answer = ""
    for delta in response.response_gen:
        answer += delta
        print(delta, end="", flush=True)
    print("\nsources:")
    for hit in response.source_nodes:
        print(f"  {hit.score:6.3f}  {hit.node.metadata.get('file_name')}  "
              f"chars {hit.node.start_char_idx}-{hit.node.end_char_idx}")
    vector_store.close()
    return answer


if __name__ == "__main__":
    main()
