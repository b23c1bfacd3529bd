import math
import random
import re
import time

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from mamba3_integrations.errors import ConfigError, InputError
from mamba3_integrations.text import (
    BREAKPOINT_DEFAULTS,
    Chunk,
    SemanticChunker,
    count_word_tokens,
    token_counter,
)
from tests.text.topics import TOPICS, topic_document, topic_embed, topic_sentence


def assert_chunks_rebuild(chunks: list[Chunk], text: str, chunker: SemanticChunker) -> None:
    """The invariants every chunking must satisfy."""
    assert "".join(chunk.text for chunk in chunks) == text
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    position = 0
    for chunk in chunks:
        assert chunk.start_char == position
        assert chunk.end_char == position + len(chunk.text)
        assert text[chunk.start_char : chunk.end_char] == chunk.text
        assert chunk.token_count == chunker.count_tokens(chunk.text) <= chunker.max_tokens
        position = chunk.end_char
    assert chunks[0].break_score is None
    assert all(chunk.break_score is not None for chunk in chunks[1:])


def shift_cuts(chunks: list[Chunk]) -> list[int]:
    return [chunk.start_char for chunk in chunks[1:]]


@pytest.mark.parametrize("breakpoint", sorted(BREAKPOINT_DEFAULTS))
def test_every_breakpoint_kind_cuts_exactly_at_topic_shifts(breakpoint):
    text, shifts = topic_document(["space", "cooking", "finance"], sentences=8)
    chunker = SemanticChunker(embed=topic_embed, breakpoint=breakpoint, buffer_size=0)
    chunks = chunker.chunk(text, doc_id="doc")
    assert shift_cuts(chunks) == shifts
    assert all(chunk.doc_id == "doc" for chunk in chunks)
    assert_chunks_rebuild(chunks, text, chunker)


def test_defaults_with_sentence_buffer_cut_at_topic_shifts():
    text, shifts = topic_document(["music", "space", "cooking"], sentences=10, seed=3)
    chunker = SemanticChunker(embed=topic_embed)
    assert (chunker.breakpoint, chunker.amount, chunker.buffer_size) == ("percentile", 95.0, 1)
    chunks = chunker.chunk(text)
    assert shift_cuts(chunks) == shifts
    assert min(chunk.break_score for chunk in chunks[1:]) > 0.1


def test_breakpoint_amount_changes_how_often_text_is_cut():
    text, _ = topic_document(["space", "cooking"], sentences=12, seed=5)
    strict = SemanticChunker(embed=topic_embed, breakpoint="threshold", breakpoint_amount=-1.0)
    loose = SemanticChunker(embed=topic_embed, breakpoint="threshold", breakpoint_amount=0.999)
    assert len(strict.chunk(text)) == 1
    assert len(loose.chunk(text)) > 2


def test_single_topic_text_is_one_chunk_and_one_sentence_needs_no_embedding():
    calls = []

    def embed(texts):
        calls.append(texts)
        return topic_embed(texts)

    chunker = SemanticChunker(embed=embed, breakpoint="threshold")
    text, _ = topic_document(["music"], sentences=6)
    assert len(chunker.chunk(text)) == 1
    calls.clear()
    assert [chunk.text for chunk in chunker.chunk("Just one sentence.")] == ["Just one sentence."]
    assert calls == []


def test_max_tokens_cuts_long_topics_and_bounds_every_chunk():
    text, shifts = topic_document(["space", "cooking"], sentences=30)
    chunker = SemanticChunker(embed=topic_embed, max_tokens=40, buffer_size=0)
    chunks = chunker.chunk(text)
    assert_chunks_rebuild(chunks, text, chunker)
    assert set(shifts) <= set(shift_cuts(chunks))
    assert len(chunks) > 2 * 30 * 12 // 40


def test_sentence_longer_than_max_tokens_is_cut_between_words():
    words = [f"word{i}" for i in range(200)]
    text = " ".join(words) + "."
    chunker = SemanticChunker(embed=topic_embed, max_tokens=15)
    chunks = chunker.chunk(text)
    assert_chunks_rebuild(chunks, text, chunker)
    assert all(chunk.text.endswith(" ") for chunk in chunks[:-1])
    assert [word for chunk in chunks for word in chunk.text.split()] == [*words[:-1], "word199."]


def test_word_longer_than_max_tokens_is_cut_between_characters():
    text = "x" * 1000 + " tail."
    chunker = SemanticChunker(embed=topic_embed, count_tokens=len, max_tokens=64)
    chunks = chunker.chunk(text)
    assert_chunks_rebuild(chunks, text, chunker)
    assert [len(chunk.text) for chunk in chunks[:-1]] == [64] * 15


def test_whitespace_pieces_under_a_tight_bound_are_never_embedded():
    text = "abc   de. fgh"
    chunker = SemanticChunker(
        embed=nonblank_topic_embed, count_tokens=len, max_tokens=3, buffer_size=0
    )
    assert [chunk.text for chunk in chunker.chunk(text)] == ["abc", "   ", "de.", " ", "fgh"]


def test_code_block_is_kept_whole_when_it_fits_and_cut_at_lines_when_not():
    code = (
        "```python\n" + "".join(f"value_{i} = compute({i}). result\n" for i in range(12)) + "```\n"
    )
    text = "Some prose before.\n" + code + "Prose after."
    whole = SemanticChunker(embed=topic_embed, max_tokens=200, buffer_size=0)
    assert any(code in chunk.text for chunk in whole.chunk(text))
    cut = SemanticChunker(embed=topic_embed, max_tokens=30, buffer_size=0)
    chunks = cut.chunk(text)
    assert_chunks_rebuild(chunks, text, cut)
    code_start = text.index(code)
    inside = [c.start_char for c in chunks if code_start < c.start_char < code_start + len(code)]
    assert inside and all(text[start - 1] == "\n" for start in inside)


def test_min_tokens_merges_a_lone_heading_into_the_closer_neighbour():
    space, _ = topic_document(["space"], sentences=5, seed=1)
    cooking, _ = topic_document(["cooking"], sentences=5, seed=2)
    heading = "# A new part about an oven\n\n"
    text = space + "\n\n" + heading + cooking
    options = {"embed": topic_embed, "breakpoint": "threshold", "breakpoint_amount": 0.85}
    plain = SemanticChunker(**options, buffer_size=0)
    assert [chunk.text for chunk in plain.chunk(text)] == [space + "\n\n", heading, cooking]
    merging = SemanticChunker(**options, buffer_size=0, min_tokens=10)
    chunks = merging.chunk(text)
    assert_chunks_rebuild(chunks, text, merging)
    assert [chunk.text for chunk in chunks] == [space + "\n\n", heading + cooking]


def test_min_tokens_never_breaks_max_tokens():
    cooking, _ = topic_document(["cooking"], sentences=4)
    text = "# Rocket\n\n" + cooking
    bound = count_word_tokens(cooking)
    chunker = SemanticChunker(
        embed=topic_embed, breakpoint="threshold", buffer_size=0, max_tokens=bound, min_tokens=bound
    )
    chunks = chunker.chunk(text)
    assert_chunks_rebuild(chunks, text, chunker)
    assert [chunk.text for chunk in chunks] == ["# Rocket\n\n", cooking]


def test_embedding_calls_are_batched_across_documents():
    calls = []

    def embed(texts):
        calls.append(len(texts))
        return topic_embed(texts)

    documents = [topic_document(["space", "music"], sentences=7, seed=s)[0] for s in range(3)]
    chunker = SemanticChunker(embed=embed, embed_batch_size=10)
    batched = chunker.chunk_documents(documents, list("abc"))
    assert calls == [10] * 4 + [2]
    one_by_one = [
        chunker.chunk(text, doc_id) for text, doc_id in zip(documents, "abc", strict=True)
    ]
    assert batched == one_by_one
    assert [chunks[0].doc_id for chunks in batched] == ["a", "b", "c"]


def test_chunking_is_deterministic():
    text, _ = topic_document(["finance", "music", "space"], sentences=9, seed=11)
    chunker = SemanticChunker(embed=topic_embed, max_tokens=50, min_tokens=8)
    assert chunker.chunk(text) == chunker.chunk(text)


def test_hugging_face_tokenizer_counts_tokens():
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [topic_sentence(random.Random(i), topic) for i in range(50) for topic in TOPICS]
    tokenizer.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=120, special_tokens=["[UNK]"])
    )
    count = token_counter(tokenizer)
    assert count("rocket orbit") == len(tokenizer.encode("rocket orbit").ids)
    text, _ = topic_document(["space", "finance"], sentences=10)
    chunker = SemanticChunker(embed=topic_embed, count_tokens=count, max_tokens=25)
    chunks = chunker.chunk(text)
    assert_chunks_rebuild(chunks, text, chunker)
    assert max(chunk.token_count for chunk in chunks) > count_word_tokens(chunks[0].text)


def test_token_counter_accepts_callables_returning_counts_or_tokens():
    assert token_counter(None)("Hello, world!") == 4
    assert token_counter(lambda text: text.split())("a b c") == 3
    assert token_counter(len)("abcd") == 4
    with pytest.raises(ConfigError, match="tokenizer must be"):
        token_counter(42)


FRAGMENTS = [
    "Dr. Smith arrived.",
    "It cost 3.50 dollars, i.e. cheap.",
    "Version v2.1.0 is out!",
    "Why?",
    "Hmm...",
    "\n\n",
    "\n",
    "\n```\ncode = 1. more\n\nstill\n```\n",
    "\n# Heading\n",
    "\n- item one\n",
    "\n    indented code\n",
    " ",
    "\t",
    "ünïcödé wörds here.",
    "長い文です。",
    "averyveryveryveryveryverylongwordwithoutanyspaceatallreally",
]


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 60)):
        if rng.random() < 0.5:
            parts.append(topic_sentence(rng, rng.choice(list(TOPICS))) + " ")
        else:
            parts.append(rng.choice(FRAGMENTS))
    text = "".join(parts)
    return text if text.strip() else text + "x"


def nonblank_topic_embed(texts: list[str]) -> list[list[float]]:
    assert all(text.strip() for text in texts), "blank text sent to embed"
    return topic_embed(texts)


@pytest.mark.parametrize("seed", range(150))
def test_chunks_rebuild_random_texts_under_random_options(seed):
    rng = random.Random(seed)
    text = random_text(rng)
    max_tokens = rng.randint(1, 80)
    chunker = SemanticChunker(
        embed=nonblank_topic_embed,
        count_tokens=rng.choice([count_word_tokens, len]),
        breakpoint=rng.choice(sorted(BREAKPOINT_DEFAULTS)),
        buffer_size=rng.randint(0, 3),
        max_tokens=max_tokens,
        min_tokens=rng.randint(0, max_tokens),
        embed_batch_size=rng.randint(1, 64),
    )
    assert_chunks_rebuild(chunker.chunk(text), text, chunker)


def test_one_megabyte_document_finishes_quickly_with_bounded_chunks():
    rng = random.Random(0)
    topics = list(TOPICS)
    sentences = []
    while sum(map(len, sentences)) < 1_000_000:
        topic = rng.choice(topics)
        sentences.extend(topic_sentence(rng, topic) + " " for _ in range(rng.randint(3, 12)))
        if rng.random() < 0.2:
            sentences.append("\n\n")
    text = "".join(sentences)
    chunker = SemanticChunker(embed=topic_embed, max_tokens=256, min_tokens=32)
    started = time.perf_counter()
    chunks = chunker.chunk(text.encode())
    assert time.perf_counter() - started < 60
    assert_chunks_rebuild(chunks, text, chunker)


def test_one_megabyte_of_unpunctuated_text_and_of_one_long_word():
    words = " ".join(f"w{i % 977}" for i in range(200_000))
    chunker = SemanticChunker(embed=topic_embed, max_tokens=300)
    assert_chunks_rebuild(chunker.chunk(words), words, chunker)
    blob = "ab" * 500_000
    by_chars = SemanticChunker(embed=topic_embed, count_tokens=len, max_tokens=4096)
    chunks = by_chars.chunk(blob)
    assert len(chunks) == math.ceil(len(blob) / 4096)
    assert_chunks_rebuild(chunks, blob, by_chars)


@pytest.mark.parametrize("text", ["", " ", "\n\n\t", "\u3000\u00a0", b"", b"  \n"])
def test_empty_or_whitespace_only_text_is_rejected(text):
    with pytest.raises(InputError, match="empty or whitespace-only"):
        SemanticChunker(embed=topic_embed).chunk(text, doc_id="blank")


def test_bytes_are_decoded_strictly_and_errors_name_the_byte_offset():
    chunker = SemanticChunker(embed=topic_embed)
    assert chunker.chunk("Grüße. Ça va.".encode())[0].text == "Grüße. Ça va."
    with pytest.raises(InputError, match=r"not valid UTF-8: byte offset 6") as error:
        chunker.chunk(b"Hello \xff world.", doc_id="bad")
    assert "'bad'" in str(error.value)


def test_lone_surrogates_and_wrong_types_are_rejected():
    chunker = SemanticChunker(embed=topic_embed)
    with pytest.raises(InputError, match="lone surrogate at character offset 3"):
        chunker.chunk("abc\udcff def")
    with pytest.raises(InputError, match="must be str or bytes, got int"):
        chunker.chunk(42)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="2 texts but 1 doc_ids"):
        chunker.chunk_documents(["a.", "b."], ["only-one"])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"breakpoint": "gradient"}, "unknown breakpoint 'gradient'"),
        ({"breakpoint": "threshold", "breakpoint_amount": 1.5}, r"in \[-1, 1\]"),
        ({"breakpoint": "percentile", "breakpoint_amount": 101}, r"in \[0, 100\]"),
        ({"breakpoint": "interquartile", "breakpoint_amount": -1}, "must be >= 0"),
        ({"max_tokens": 0}, "max_tokens must be >= 1"),
        ({"max_tokens": 10, "min_tokens": 11}, "min_tokens must be between 0 and max_tokens"),
        ({"buffer_size": -1}, "buffer_size must be >= 0"),
        ({"embed_batch_size": 0}, "embed_batch_size must be >= 1"),
    ],
)
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        SemanticChunker(embed=topic_embed, **options)


def test_misbehaving_embed_is_reported():
    text = "One sentence. Another one. A third."
    with pytest.raises(ConfigError, match="one vector per text"):
        SemanticChunker(embed=lambda texts: topic_embed(texts)[:-1]).chunk(text)
    with pytest.raises(ConfigError, match="different sizes"):
        SemanticChunker(
            embed=lambda texts: [[1.0] * len(texts)] * len(texts), embed_batch_size=2
        ).chunk(text)


def test_a_character_over_the_bound_is_a_config_error():
    chunker = SemanticChunker(
        embed=topic_embed, count_tokens=lambda text: 2 * len(re.findall(r"\S", text)), max_tokens=1
    )
    with pytest.raises(ConfigError, match="raise max_tokens"):
        chunker.chunk("ab")
