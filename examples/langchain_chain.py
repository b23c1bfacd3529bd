"""A LangChain LCEL RAG chain built from mamba3-integrations components only.

Mamba-3 semantic splitter -> Mamba-3 embeddings -> PGVector (PostgreSQL + pgvector) ->
ContextualCompressionRetriever with the order-preserving compressor -> ChatMamba3,
streamed, then the sources. Offline, with the shipped default models (or the folders given
with --lm / --embedder) and an embedded PostgreSQL unless --dsn (or $MAMBA3_PG_DSN) is given.

    python examples/langchain_chain.py --question "How do I create a virtual environment?"
"""

from __future__ import annotations

import argparse
from operator import itemgetter
from pathlib import Path

from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnableParallel, RunnablePassthrough

from mamba3_integrations.langchain import (
    ChatMamba3,
    Mamba3Embeddings,
    Mamba3SemanticTextSplitter,
    OrderPreservingCompressor,
    PGVector,
)

DOCS = Path(__file__).resolve().parents[1] / "mamba3_integrations" / "data" / "demo_docs"
PROMPT = ChatPromptTemplate.from_messages([
    ("system", "Answer the question using only the documents below.\n\n{context}"),
    ("human", "{question}"),
])


def format_docs(docs: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['source']}] {d.page_content}" for d in docs)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", default=str(DOCS / "python"))
    parser.add_argument("--question", default="How do I create a virtual environment?")
    parser.add_argument("--dsn", default=None)
    parser.add_argument("--collection", default="langchain_example")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--lm", default=None, help="model folder (default: the shipped LM)")
    parser.add_argument("--embedder", default=None,
                        help="embedding model folder (default: the shipped embedder)")
    args = parser.parse_args(argv)

    embeddings = Mamba3Embeddings(model_path=args.embedder)
    splitter = Mamba3SemanticTextSplitter(embeddings=embeddings, max_tokens=256,
                                          add_start_index=True)
    paths = sorted(Path(args.docs).glob("*.md"))
    docs = splitter.create_documents([p.read_text(encoding="utf-8") for p in paths],
                                     metadatas=[{"source": p.name} for p in paths])
    store = PGVector(embeddings, collection_name=args.collection, connection=args.dsn)
    store.delete_collection()
    store = PGVector(embeddings, collection_name=args.collection, connection=args.dsn)
    store.add_documents(docs)
    print(f"ingested {len(paths)} files as {len(docs)} chunks")

    retriever = ContextualCompressionRetriever(
        base_compressor=OrderPreservingCompressor(token_budget=900),
        base_retriever=store.as_retriever(search_kwargs={"k": 8}))
    answer_chain = ({"context": itemgetter("docs") | RunnableLambda(format_docs),
                     "question": itemgetter("question")}
                    | PROMPT | ChatMamba3(model_path=args.lm, max_tokens=args.max_new_tokens)
                    | StrOutputParser())
    chain = RunnableParallel(question=RunnablePassthrough(), docs=retriever).assign(
        answer=answer_chain)
    print(f"Q: {args.question}\nA: ", end="")
    answer, sources = "", []
    for part in chain.stream(args.question):
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
