"""The RAG pipeline and the mamba3-rag command line, on real PostgreSQL + pgvector."""

from __future__ import annotations

import uuid

import pytest

from mamba3_integrations import Mamba3ForCausalLM
from mamba3_integrations.app.documents import SourceDocument
from mamba3_integrations.app.rag import STOP_STRINGS, RagPipeline, RagSettings
from mamba3_integrations.cli import main
from mamba3_integrations.runtime.embedding import Mamba3Encoder
from tests.fixtures import save_tiny_embedder

DOCS = [
    SourceDocument("pg.md", "PostgreSQL", "PostgreSQL stores rows in tables. "
                   "A GIN index supports full text search over tsvector columns. " * 3),
    SourceDocument("py.md", "Python", "Python creates virtual environments with venv. "
                   "Activate one before installing packages with pip. " * 3),
]


@pytest.fixture(scope="module")
def embedder_dir(tmp_path_factory):
    return save_tiny_embedder(tmp_path_factory.mktemp("embedder"))


@pytest.fixture
def pipeline(tiny_lm_dir, embedder_dir, postgres):
    settings = RagSettings(collection=f"rag_{uuid.uuid4().hex[:12]}", chunk_tokens=24,
                           top_k=4, context_tokens=60, max_new_tokens=8)
    rag = RagPipeline(Mamba3ForCausalLM.from_pretrained(tiny_lm_dir),
                      Mamba3Encoder.from_pretrained(embedder_dir), dsn=postgres.dsn,
                      settings=settings)
    yield rag
    rag.store.drop()
    rag.close()


def test_ingest_is_idempotent_per_document(pipeline):
    written = pipeline.ingest(DOCS)
    assert written == pipeline.count() > 2
    assert pipeline.ingest(DOCS[:1]) < written  # re-ingesting a document replaces it
    assert pipeline.count() == written


def test_ask_streams_an_answer_with_ordered_sources_within_budget(pipeline):
    pipeline.ingest(DOCS)
    chunks = pipeline.retrieve("What does a GIN index support?")
    assert chunks and sum(pipeline.count_tokens(c.text) for c in chunks) <= 60
    order = [(c.doc_id, c.index) for c in chunks]
    docs_in_order = list(dict.fromkeys(d for d, _ in order))
    assert order == sorted(order, key=lambda x: (docs_in_order.index(x[0]), x[1]))
    answer = pipeline.ask("What does a GIN index support?")
    assert [(s.doc_id, s.index) for s in answer.sources] == order
    text = "".join(answer.deltas)
    assert text == pipeline.lm.generate_text(
        pipeline.prompt("What does a GIN index support?", chunks), max_new_tokens=8,
        stop_strings=STOP_STRINGS)
    prompt = pipeline.prompt("Q?", chunks)
    assert all(c.text.strip() in prompt for c in chunks)
    assert prompt.endswith("Question: Q?\nAnswer:")


def test_empty_question_is_an_error(pipeline):
    with pytest.raises(Exception, match="question is empty"):
        pipeline.retrieve("  ")


def test_cli_ingest_and_ask(tmp_path, tiny_lm_dir, embedder_dir, postgres, capsys):
    folder = tmp_path / "docs"
    folder.mkdir()
    for doc in DOCS:
        (folder / doc.doc_id).write_text(f"# {doc.title}\n\n{doc.text}", encoding="utf-8")
    common = ["--dsn", postgres.dsn, "--collection", f"cli_{uuid.uuid4().hex[:12]}",
              "--lm", str(tiny_lm_dir), "--embedder", str(embedder_dir),
              "--max-new-tokens", "6"]
    assert main(["ingest", str(folder), *common]) == 0
    assert "ingested 2 documents" in capsys.readouterr().out
    assert main(["ask", "How do I make a virtual environment?", *common]) == 0
    out = capsys.readouterr().out
    assert "Q: How do I make a virtual environment?" in out and "sources" in out
    assert "py.md #" in out or "pg.md #" in out
    assert main(["ingest", str(tmp_path / "nope"), *common]) == 2
    assert "is not a folder" in capsys.readouterr().err
