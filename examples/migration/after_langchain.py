"""RAG with LangChain, after the migration: mamba3-integrations components.

Mamba3SemanticTextSplitter -> Mamba-3 embeddings -> PGVector (PostgreSQL + pgvector) ->
top-k retrieval -> OrderPreservingCompressor -> ChatMamba3 (the Mamba-3 hybrid LM), streamed.
docs/migration.md compares it with before_langchain.py: only imports and constructors differ.

    python examples/migration/after_langchain.py

The shipped default models are used unless --lm / --embedder name other model folders. The
database is the embedded PostgreSQL unless --dsn (a libpq connection string) or
$MAMBA3_PG_DSN is given.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from langchain_core.language_models import BaseChatModel
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from langchain_core.vectorstores import VectorStore
from langchain_text_splitters import TextSplitter

from mamba3_integrations.langchain import (
    ChatMamba3,
    Mamba3Embeddings,
    Mamba3SemanticTextSplitter,
    OrderPreservingCompressor,
    PGVector,
)

DOCS = Path(__file__).resolve().parents[2] / "mamba3_integrations" / "data" / "demo_docs"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the documents below.\n\n{context}"),
    ("human", "{question}"),
])


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
    parser.add_argument("--lm", default=None, help="model folder (default: the shipped LM)")
    parser.add_argument("--embedder", default=None,
                        help="embedding model folder (default: the shipped embedder)")
    parser.add_argument("--docs", default=str(DOCS / "python"), help="folder of *.md files")
    parser.add_argument("--question", default="How do I create a virtual environment?")
    parser.add_argument("--dsn", default=None, help="libpq connection string")
    parser.add_argument("--collection", default="migration_langchain")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    return parser.parse_args(argv)


def build(args: argparse.Namespace) -> RAG:
    """Create the components."""
    embeddings = Mamba3Embeddings(model_path=args.embedder)
    store = PGVector(embeddings, collection_name=args.collection, connection=args.dsn)
    store.delete_collection()  # as pre_delete_collection=True: the next write recreates it
    return RAG(
        chat=ChatMamba3(model_path=args.lm, max_tokens=args.max_new_tokens),
        embeddings=embeddings,
        splitter=Mamba3SemanticTextSplitter(embeddings, max_tokens=256, add_start_index=True),
        store=store,
        compressor=OrderPreservingCompressor(token_budget=900),
        top_k=8,
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
