import random
from itertools import pairwise

import pytest

from mamba3_integrations.text.sentences import split_sentences


def sentences(text: str) -> list[str]:
    return [text[start:end] for start, end in split_sentences(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three? Four", ["One. ", "Two! ", "Three? ", "Four"]),
        (
            "Dr. Smith met Mr. Jones. They talked.",
            ["Dr. Smith met Mr. Jones. ", "They talked."],
        ),
        (
            "Use tools, e.g. hammers, i.e. heavy ones. Done.",
            ["Use tools, e.g. hammers, i.e. heavy ones. ", "Done."],
        ),
        ("Apples, pears, etc. are fruit. Yes.", ["Apples, pears, etc. are fruit. ", "Yes."]),
        ("We sell apples, pears etc. The end.", ["We sell apples, pears etc. ", "The end."]),
        ("The U.S. economy grew. It did.", ["The U.S. economy grew. ", "It did."]),
        ("He moved to the U.S. He liked it.", ["He moved to the U.S. ", "He liked it."]),
        ("J. R. R. Tolkien wrote it. Fine.", ["J. R. R. Tolkien wrote it. ", "Fine."]),
        ("Pi is 3.14 roughly. Next.", ["Pi is 3.14 roughly. ", "Next."]),
        ("Install v1.2.3. Then run 2.0.1 again.", ["Install v1.2.3. ", "Then run 2.0.1 again."]),
        ("See example.com/a.b for more. Ok.", ["See example.com/a.b for more. ", "Ok."]),
        ("Wait... maybe not. Hmm... Yes.", ["Wait... maybe not. ", "Hmm... ", "Yes."]),
        ("Wait… what. Go.", ["Wait… what. ", "Go."]),
        ('He said "Stop." Then left.', ['He said "Stop." ', "Then left."]),
        ("(This is aside.) Then more.", ["(This is aside.) ", "Then more."]),
        ("Really?! Yes.", ["Really?! ", "Yes."]),
        ("First.   Second.\t Third.", ["First.   ", "Second.\t ", "Third."]),
        (
            "It was Jan. 5 when Fig. 3 appeared. End.",
            ["It was Jan. 5 when Fig. 3 appeared. ", "End."],
        ),
        ("日本語です。次の文。", ["日本語です。", "次の文。"]),
    ],
)
def test_sentence_boundaries(text, expected):
    assert sentences(text) == expected


def test_single_newline_inside_a_paragraph_is_not_a_break():
    text = "This sentence is wrapped\nover two lines. And a second\none."
    assert sentences(text) == ["This sentence is wrapped\nover two lines. ", "And a second\none."]


def test_blank_line_is_a_hard_break_and_whitespace_stays_with_the_sentence_before():
    text = "A paragraph without a period\n\n  Next paragraph"
    assert sentences(text) == ["A paragraph without a period\n\n", "  Next paragraph"]


def test_list_items_and_headings_start_new_units():
    text = "# Title\nIntro text\n- first item\n- second. Still second\n1. numbered\n## Sub\nBody."
    assert sentences(text) == [
        "# Title\n",
        "Intro text\n",
        "- first item\n",
        "- second. ",
        "Still second\n",
        "1. numbered\n",
        "## Sub\n",
        "Body.",
    ]


def test_fenced_code_is_one_unit_even_with_blank_lines_and_periods():
    code = "```python\nx = 1. \n\ny = obj.attr. Z\n```\n"
    text = f"Before code.\n{code}After code. Done."
    assert sentences(text) == ["Before code.\n", code, "After code. ", "Done."]


def test_unclosed_fence_runs_to_the_end():
    text = "Intro.\n~~~\ncode. More code.\n\nstill code."
    assert sentences(text) == ["Intro.\n", "~~~\ncode. More code.\n\nstill code."]


def test_indented_code_block_keeps_its_indentation_and_blank_lines():
    code = "    def f():\n        return 1. \n\n    f(). Again\n\n"
    text = f"Look at this.\n\n{code}Back to prose. Ok."
    assert sentences(text) == ["Look at this.\n\n", code, "Back to prose. ", "Ok."]


def test_indented_line_continuing_a_paragraph_is_not_code():
    text = "A paragraph line\n    continued here. Second sentence."
    assert sentences(text) == ["A paragraph line\n    continued here. ", "Second sentence."]


def test_tables_and_thematic_breaks_are_units():
    text = "Intro.\n| a. b | c. D |\n|---|---|\n| 1. X | 2 |\n---\nAfter."
    assert sentences(text) == [
        "Intro.\n",
        "| a. b | c. D |\n|---|---|\n| 1. X | 2 |\n",
        "---\n",
        "After.",
    ]


def test_crlf_line_endings():
    text = "First line.\r\n\r\nSecond. Third.\r\n"
    assert sentences(text) == ["First line.\r\n\r\n", "Second. ", "Third.\r\n"]


def test_leading_whitespace_belongs_to_the_first_sentence():
    assert sentences("  \n\n One. Two.  ") == ["  \n\n One. ", "Two.  "]


def test_empty_and_blank_texts():
    assert split_sentences("") == []
    assert sentences(" \n\t ") == [" \n\t "]


FRAGMENTS = [
    "Dr. Who said hi.",
    "Version 3.14.1 shipped.",
    "Wait...",
    "what?!",
    '"Quoted."',
    "(Aside.)",
    "e.g. this",
    "U.S.",
    "\n",
    "\n\n",
    "\n\n```\ncode. here\n\n",
    "```\n",
    "\n    indented. code\n",
    "\n# Heading. Yes\n",
    "\n- item. one\n",
    "\n| a. | b |\n",
    "日本。",
    "\r\n",
    "  ",
    "\t",
    "word",
    "ünïcödé.",
    "…",
    "\u3000",
]


@pytest.mark.parametrize("seed", range(300))
def test_spans_cover_random_texts_exactly_in_order(seed):
    rng = random.Random(seed)
    text = "".join(rng.choice(FRAGMENTS) + rng.choice(["", " "]) for _ in range(rng.randint(0, 40)))
    spans = split_sentences(text)
    assert "".join(text[start:end] for start, end in spans) == text
    assert all(start < end for start, end in spans)
    assert all(left[1] == right[0] for left, right in pairwise(spans))
    assert all(text[start:end].strip() for start, end in spans[1:])
