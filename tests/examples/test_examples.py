"""Every example script runs end to end (``main(argv)``) on the session's embedded server:
it ingests the docs, stores one row per chunk, answers, and prints sources inside the docs."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import uuid
from pathlib import Path
from types import ModuleType

import psycopg
import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MIGRATION = EXAMPLES / "migration"
MODEL_OPTIONS = {"--hf-llm", "--lm", "--embedder"}

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def load(path: Path) -> ModuleType:
    """Import an example script as a module."""
    name = f"example_{path.parent.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def run(path: Path, argv: list[str], capsys) -> tuple[str, str]:
    """The example's answer and what it printed."""
    answer = load(path).main(argv)
    return answer, capsys.readouterr().out


def check_output(answer: str, out: str, docs_dir: Path) -> int:
    """Assert the answer is printed, followed by sources that name files of ``docs_dir`` with
    character ranges inside them; return the number of chunks the example said it stored."""
    assert answer
    assert f"\nA: {answer}\nsources:\n" in out
    chunks = int(re.search(r"^ingested 2 (?:documents|files) as (\d+) (?:chunks|nodes)$", out,
                           re.MULTILINE)[1])
    sources = out.split(f"\nA: {answer}\nsources:\n")[1].splitlines()
    assert 0 < len(sources) <= chunks
    for line in sources:
        match = re.fullmatch(r"\s+(?:-?\d+\.\d{3}\s+)?(\S+\.md)\s+chars (\d+)-(\d+)", line)
        assert match, line
        text = (docs_dir / match[1]).read_text(encoding="utf-8")
        assert 0 <= int(match[2]) < int(match[3]) <= len(text)
    return chunks


def count(dsn: str, query: str) -> int:
    """The first column of the first row of ``query``."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(query).fetchone()[0]


def name() -> str:
    """A table or collection name no other test uses."""
    return f"ex_{uuid.uuid4().hex[:12]}"


def test_llama_index_pipeline(postgres, docs_dir, our_model_args, capsys):
    table = name()
    answer, out = run(EXAMPLES / "llama_index_pipeline.py",
                      ["--docs", str(docs_dir), "--dsn", postgres.dsn, "--table", table,
                       "--max-new-tokens", "8", *our_model_args], capsys)
    chunks = check_output(answer, out, docs_dir)
    assert count(postgres.dsn, f'SELECT count(*) FROM "{table}"') == chunks


def test_langchain_chain(postgres, docs_dir, our_model_args, capsys):
    collection = name()
    answer, out = run(EXAMPLES / "langchain_chain.py",
                      ["--docs", str(docs_dir), "--dsn", postgres.dsn, "--collection",
                       collection, "--max-new-tokens", "8", *our_model_args], capsys)
    chunks = check_output(answer, out, docs_dir)
    assert count(postgres.dsn, f'SELECT count(*) FROM "{collection}"') == chunks


LANGCHAIN_V1_ROWS = ("SELECT count(*) FROM langchain_pg_embedding e JOIN langchain_pg_collection c"
                     " ON e.collection_id = c.uuid WHERE c.name = '{}'")

MIGRATIONS = {
    "before_llama_index": (
        "--table", 'SELECT count(*) FROM "data_{}"',
        {"llama_index": ["HuggingFaceLLM", "HuggingFaceEmbedding", "SentenceSplitter",
                         "PGVectorStore", "LongContextReorder"]}),
    "after_llama_index": (
        "--table", 'SELECT count(*) FROM "{}"',
        {"mamba3_integrations": ["Mamba3LLM", "Mamba3Embedding", "Mamba3SemanticNodeParser",
                                 "PGVectorStore", "OrderPreservingPostprocessor"]}),
    "before_langchain": (
        "--collection", LANGCHAIN_V1_ROWS,
        {"langchain_huggingface": ["ChatHuggingFace", "HuggingFaceEmbeddings"],
         "langchain_text_splitters": ["RecursiveCharacterTextSplitter"],
         "langchain_postgres": ["PGVector"],
         "langchain_classic": ["DocumentCompressorPipeline"]}),
    "after_langchain": (
        "--collection", 'SELECT count(*) FROM "{}"',
        {"mamba3_integrations": ["ChatMamba3", "Mamba3Embeddings", "Mamba3SemanticTextSplitter",
                                 "PGVector", "OrderPreservingCompressor"]}),
}


@pytest.mark.parametrize("script", sorted(MIGRATIONS))
def test_migration_script(script, postgres, docs_dir, our_model_args, hf_llm_dir, monkeypatch,
                          capsys):
    name_option, rows_query, components = MIGRATIONS[script]
    if script == "before_llama_index":
        model_args = ["--hf-llm", str(hf_llm_dir)]
    elif script == "before_langchain":  # the model from the environment variable
        monkeypatch.setenv("MIGRATION_HF_LLM", str(hf_llm_dir))
        model_args = []
    else:
        model_args = our_model_args
    collection = name()
    argv = ["--docs", str(docs_dir), "--dsn", postgres.dsn, name_option, collection,
            "--max-new-tokens", "8", *model_args]
    run(MIGRATION / f"{script}.py", argv, capsys)  # the second run replaces the first's rows
    answer, out = run(MIGRATION / f"{script}.py", argv, capsys)
    chunks = check_output(answer, out, docs_dir)
    assert count(postgres.dsn, rows_query.format(collection)) == chunks
    printed = re.search(r"^components: (.*)$", out, re.MULTILINE)[1].split(", ")
    assert sorted((qualified.split(".")[0], qualified.rsplit(".", 1)[1])
                  for qualified in printed) == sorted(
        (package, cls) for package, classes in components.items() for cls in classes)


def test_before_script_needs_a_model(monkeypatch):
    monkeypatch.delenv("MIGRATION_HF_LLM", raising=False)
    with pytest.raises(SystemExit):
        load(MIGRATION / "before_langchain.py").parse_args([])


def definitions(path: Path) -> dict[str, str]:
    """The module's top-level statements other than its docstring and imports, as AST dumps by
    name (definitions) or source (other statements); ``parse_args`` without the model options."""
    result = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)):
            continue
        if isinstance(node, ast.FunctionDef) and node.name == "parse_args":
            node.body = [statement for statement in node.body if not (
                "add_argument" in ast.unparse(statement)
                and statement.value.args[0].value in MODEL_OPTIONS)]
        result[getattr(node, "name", None) or ast.unparse(node)] = ast.dump(node)
    return result


@pytest.mark.parametrize("framework", ["llama_index", "langchain"])
def test_after_differs_from_before_in_imports_and_constructors_only(framework):
    before = definitions(MIGRATION / f"before_{framework}.py")
    after = definitions(MIGRATION / f"after_{framework}.py")
    assert set(before) - set(after) == {"sqlalchemy_url"}  # libpq -> SQLAlchemy URLs
    assert set(after) <= set(before)
    assert [key for key in after if before[key] != after[key]] == ["build"]
