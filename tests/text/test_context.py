import logging
import math
import random

import pytest

from mamba3_integrations.errors import ConfigError, InputError
from mamba3_integrations.text import (
    ContextTemplate,
    ScoredChunk,
    render_context,
    render_pieces,
    scores_or_ranks,
    select_context,
)


def chunk(doc_id: str, index: int, score: float, tokens: int = 1, **extra) -> ScoredChunk:
    return ScoredChunk(
        text=f"{doc_id}{index}",
        score=score,
        doc_id=doc_id,
        index=index,
        token_count=tokens,
        **extra,
    )


def keys(chunks: list[ScoredChunk]) -> list[tuple[str, int]]:
    return [(c.doc_id, c.index) for c in chunks]


def test_documents_follow_their_best_score_and_chunks_their_position():
    chunks = [chunk("b", 7, 0.9), chunk("a", 3, 0.8), chunk("b", 2, 0.5), chunk("a", 1, 0.7)]
    assert keys(select_context(chunks)) == [("b", 2), ("b", 7), ("a", 1), ("a", 3)]


def test_ties_are_broken_by_document_id():
    chunks = [chunk("z", 0, 0.5), chunk("m", 1, 0.5), chunk("m", 0, 0.1), chunk("a", 0, 0.5)]
    assert keys(select_context(chunks)) == [("a", 0), ("m", 0), ("m", 1), ("z", 0)]


def test_min_score_drops_low_and_nan_scores():
    chunks = [chunk("a", 0, 0.2), chunk("a", 1, 0.5), chunk("b", 0, math.nan), chunk("b", 1, 0.6)]
    assert keys(select_context(chunks, min_score=0.5)) == [("b", 1), ("a", 1)]
    assert keys(select_context(chunks)) == [("b", 1), ("a", 0), ("a", 1)]


def test_duplicates_keep_the_best_score():
    chunks = [chunk("a", 0, 0.2), chunk("a", 0, 0.9), chunk("a", 1, 0.5)]
    selected = select_context(chunks)
    assert [(c.index, c.score) for c in selected] == [(0, 0.9), (1, 0.5)]


def test_token_budget_keeps_the_best_that_fit_and_skips_the_rest():
    chunks = [
        chunk("a", 0, 0.9, tokens=6),
        chunk("a", 1, 0.8, tokens=6),
        chunk("b", 0, 0.7, tokens=4),
        chunk("b", 1, 0.6, tokens=1),
    ]
    assert keys(select_context(chunks, token_budget=10)) == [("a", 0), ("b", 0)]
    assert keys(select_context(chunks, token_budget=11)) == [("a", 0), ("b", 0), ("b", 1)]
    assert select_context(chunks, token_budget=0) == []


def test_missing_token_counts_use_the_counter():
    chunks = [
        ScoredChunk(text="one two three", score=0.9, doc_id="a", index=0),
        ScoredChunk(text="four", score=0.8, doc_id="a", index=1),
    ]
    assert keys(select_context(chunks, token_budget=3)) == [("a", 0)]
    assert keys(select_context(chunks, token_budget=4, count_tokens=len)) == [("a", 1)]


def random_chunks(rng: random.Random) -> list[ScoredChunk]:
    return [
        chunk(
            rng.choice("abcde"),
            rng.randrange(12),
            rng.choice([0.1, 0.3, 0.5, 0.7, 0.9, rng.random()]),
            tokens=rng.randint(0, 9),
        )
        for _ in range(rng.randint(0, 30))
    ]


@pytest.mark.parametrize("seed", range(200))
def test_selection_is_independent_of_input_order_and_respects_its_limits(seed):
    rng = random.Random(seed)
    chunks = random_chunks(rng)
    budget = rng.choice([None, 0, 5, 20, 60])
    min_score = rng.choice([None, 0.3, 0.6])
    selected = select_context(chunks, token_budget=budget, min_score=min_score)
    shuffled = chunks[:]
    rng.shuffle(shuffled)
    assert select_context(shuffled, token_budget=budget, min_score=min_score) == selected
    assert len(set(keys(selected))) == len(selected)
    assert all(min_score is None or c.score >= min_score for c in selected)
    used = sum(c.token_count for c in selected)
    assert budget is None or used <= budget
    best: dict[tuple[str, int], ScoredChunk] = {}
    for c in chunks:
        if min_score is None or c.score >= min_score:
            key = (c.doc_id, c.index)
            if key not in best or (c.score, c.text) > (best[key].score, best[key].text):
                best[key] = c

    def rank(c: ScoredChunk) -> tuple:
        return (-c.score, c.doc_id, c.index)

    for left_out in (c for key, c in best.items() if key not in keys(selected)):
        before = sum(c.token_count for c in selected if rank(c) < rank(left_out))
        assert budget is not None and before + left_out.token_count > budget
    doc_order = list(dict.fromkeys(c.doc_id for c in selected))
    assert keys(selected) == sorted(keys(selected), key=lambda k: (doc_order.index(k[0]), k[1]))
    best_per_doc = [max(c.score for c in selected if c.doc_id == d) for d in doc_order]
    assert best_per_doc == sorted(best_per_doc, reverse=True)


def test_merge_adjacent_joins_touching_and_overlapping_spans_only():
    text = "0123456789abcdefghij"

    def span(index, start, end, score):
        return ScoredChunk(
            text=text[start:end],
            score=score,
            doc_id="d",
            index=index,
            start_char=start,
            end_char=end,
        )

    chunks = [
        span(0, 0, 5, 0.5),
        span(1, 5, 10, 0.9),  # touches the first
        span(2, 8, 13, 0.4),  # overlaps the second
        span(3, 15, 20, 0.3),  # gap before it
        ScoredChunk(text="other", score=0.8, doc_id="e", index=0, start_char=13, end_char=15),
        ScoredChunk(text="no offsets", score=0.7, doc_id="d", index=4),
    ]
    merged = select_context(chunks, merge_adjacent=True)
    assert [(c.doc_id, c.text, c.start_char, c.end_char, c.score) for c in merged] == [
        ("d", text[0:13], 0, 13, 0.9),
        ("d", text[15:20], 15, 20, 0.3),
        ("d", "no offsets", None, None, 0.7),
        ("e", "other", 13, 15, 0.8),
    ]
    assert [part.index for part in merged[0].parts] == [0, 1, 2]
    assert merged[0].token_count == 1 and merged[1].parts == ()


def test_scores_or_ranks(caplog):
    assert scores_or_ranks([0.5, 2]) == [0.5, 2.0]
    assert scores_or_ranks([None, None, None, None]) == [1.0, 0.5, 1 / 3, 0.25]
    with caplog.at_level(logging.WARNING):
        assert scores_or_ranks([0.9, None]) == [1.0, 0.5]
    assert "1 of 2 chunks have no relevance score" in caplog.text


def test_scored_chunk_rejects_wrong_types():
    with pytest.raises(InputError, match="score must be a number"):
        ScoredChunk(text="x", score=None, doc_id="a", index=0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="doc_id must be a str"):
        ScoredChunk(text="x", score=1.0, doc_id=3, index=0)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="index must be an int"):
        ScoredChunk(text="x", score=1.0, doc_id="a", index=0.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="token_budget must be >= 0"):
        select_context([], token_budget=-1)


def test_default_rendering():
    chunks = [
        ScoredChunk(text="Second part.\n", score=0.91234, doc_id="guide", index=4),
        ScoredChunk(text="Third part.", score=0.5, doc_id="guide", index=9),
        ScoredChunk(text="Other.", score=0.25, doc_id="faq", index=0),
    ]
    assert render_context(chunks) == (
        '<document id="guide" rank="1">\n'
        '<chunk index="4" score="0.912">\nSecond part.\n</chunk>\n\n'
        '<chunk index="9" score="0.500">\nThird part.\n</chunk>\n</document>\n\n'
        '<document id="faq" rank="2">\n'
        '<chunk index="0" score="0.250">\nOther.\n</chunk>\n</document>'
    )
    assert "\n\n".join(render_pieces(chunks)) == render_context(chunks)
    assert render_context([]) == ""


def test_custom_templates():
    template = ContextTemplate(
        document="## {doc_rank}. {doc_id}\n{chunks}",
        chunk="[{metadata[title]} @{start_char}] {text}",
        separator="\n",
    )
    chunks = [
        ScoredChunk(
            text=" body ", score=1.0, doc_id="a", index=0, start_char=7, metadata={"title": "T"}
        )
    ]
    assert render_context(chunks, template) == "## 1. a\n[T @7] body"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"document": "no chunk field"}, "exactly once"),
        ({"document": "{chunks}{chunks}"}, "exactly once"),
        ({"chunk": "{unknown}"}, "KeyError"),
        ({"chunk": "{score:d}"}, "ValueError"),
    ],
)
def test_bad_templates_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        ContextTemplate(**options)
