"""``mamba3-rag`` command line (also ``python -m mamba3_integrations``).

- ``demo``: ingest the bundled documents (PostgreSQL and Python documentation pages)
  into PostgreSQL + pgvector (an embedded server unless a connection string is given),
  then answer a few questions, streaming each answer and listing its sources.
- ``ingest FOLDER``: the same ingestion for a folder of text, Markdown and HTML files.
- ``ask QUESTION``: answer over what was ingested.
- ``generate``: stream a completion from a model folder.

Models default to the ones shipped with the package (``mamba3-hybrid-mini`` and
``mamba3-embed-mini``); ``--lm`` and ``--embedder`` take other model folders.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mamba3_integrations.errors import Mamba3IntegrationsError

DEMO_DOCS = Path(__file__).resolve().parent / "data" / "demo_docs"
DEMO_COLLECTION = "mamba3_demo"
DEMO_QUESTIONS = [
    "How do I create a virtual environment in Python?",
    "What does a GIN index support in PostgreSQL?",
    "Why is full text search better than the LIKE operator?",
]


def build_pipeline(args: argparse.Namespace, collection: str):
    """Load the models and open the collection (starting the embedded server if needed)."""
    from mamba3_integrations.app.rag import RagPipeline, RagSettings
    from mamba3_integrations.models import default_embedding_path, default_lm_path
    from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM
    from mamba3_integrations.runtime.embedding import Mamba3Encoder

    lm = Mamba3ForCausalLM.from_pretrained(args.lm or default_lm_path())
    encoder = Mamba3Encoder.from_pretrained(args.embedder or default_embedding_path())
    settings = RagSettings(collection=collection, top_k=args.top_k,
                           max_new_tokens=args.max_new_tokens, hybrid=args.hybrid)
    return RagPipeline(lm, encoder, dsn=args.dsn, settings=settings)


def ingest_documents(pipeline, documents) -> None:
    from tqdm import tqdm

    t0 = time.perf_counter()
    bar = tqdm(documents, desc="chunk + embed + store", unit="doc")
    chunks = pipeline.ingest(documents, progress=bar)
    print(f"ingested {len(documents)} documents as {chunks} chunks into "
          f"'{pipeline.settings.collection}' in {time.perf_counter() - t0:.1f} s "
          f"({pipeline.count()} chunks stored)")


def answer(pipeline, question: str) -> None:
    result = pipeline.ask(question)
    print(f"\nQ: {question}\nA: ", end="", flush=True)
    for delta in result.deltas:
        print(delta, end="", flush=True)
    print("\nsources (in prompt order):")
    for s in result.sources:
        print(f"  {s.score:6.3f}  {s.doc_id} #{s.index}  {s.title}")


def run_demo(args: argparse.Namespace) -> None:
    from mamba3_integrations.app.documents import load_folder

    pipeline = build_pipeline(args, args.collection or DEMO_COLLECTION)
    try:
        ingest_documents(pipeline, load_folder(DEMO_DOCS))
        for question in args.question or DEMO_QUESTIONS:
            answer(pipeline, question)
    finally:
        pipeline.close()


def run_ingest(args: argparse.Namespace) -> None:
    from mamba3_integrations.app.documents import load_folder

    pipeline = build_pipeline(args, args.collection)
    try:
        ingest_documents(pipeline, load_folder(args.folder))
    finally:
        pipeline.close()


def run_ask(args: argparse.Namespace) -> None:
    pipeline = build_pipeline(args, args.collection)
    try:
        for question in args.question:
            answer(pipeline, question)
    finally:
        pipeline.close()


def run_generate(args: argparse.Namespace) -> None:
    from mamba3_integrations.models import default_lm_path
    from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM

    model = Mamba3ForCausalLM.from_pretrained(args.lm or default_lm_path(), dtype=args.dtype,
                                              device=args.device)
    print(args.prompt, end="", flush=True)
    for delta in model.stream_text(args.prompt, max_new_tokens=args.max_new_tokens,
                                   do_sample=args.temperature > 0,
                                   temperature=args.temperature or 1.0, stop_strings=args.stop):
        print(delta, end="", flush=True)
    print()


def add_rag_options(parser: argparse.ArgumentParser, collection: str | None) -> None:
    parser.add_argument("--dsn", default=None,
                        help="PostgreSQL connection string (default: $MAMBA3_PG_DSN, else an "
                             "embedded PostgreSQL + pgvector server)")
    parser.add_argument("--collection", default=collection, help="table of the collection")
    parser.add_argument("--lm", default=None, help="language model folder (default: shipped)")
    parser.add_argument("--embedder", default=None,
                        help="embedding model folder (default: shipped)")
    parser.add_argument("--top-k", type=int, default=8, help="chunks retrieved per question")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--hybrid", action="store_true",
                        help="fuse full-text and vector rankings (reciprocal-rank fusion)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="mamba3-rag", description=__doc__.split("\n")[0])
    sub = root.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="ingest the bundled documents and answer questions")
    add_rag_options(demo, None)
    demo.add_argument("--question", action="append", help="ask this instead (repeatable)")
    demo.set_defaults(run=run_demo)
    ingest = sub.add_parser("ingest", help="ingest a folder of text/Markdown/HTML files")
    ingest.add_argument("folder")
    add_rag_options(ingest, "mamba3_rag")
    ingest.set_defaults(run=run_ingest)
    ask = sub.add_parser("ask", help="answer questions over an ingested collection")
    ask.add_argument("question", nargs="+")
    add_rag_options(ask, "mamba3_rag")
    ask.set_defaults(run=run_ask)
    gen = sub.add_parser("generate", help="stream a completion from a model folder")
    gen.add_argument("--lm", default=None, help="model folder (default: shipped)")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    gen.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    gen.add_argument("--dtype", default=None)
    gen.add_argument("--device", default=None)
    gen.set_defaults(run=run_generate)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.run(args)
    except Mamba3IntegrationsError as exc:
        print(f"mamba3-rag: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
