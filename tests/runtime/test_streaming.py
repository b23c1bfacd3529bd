"""Incremental decoding: multi-byte characters, stop strings, bounded decode windows."""

from __future__ import annotations

import pytest

from mamba3_integrations.runtime.streaming import IncrementalDecoder
from tests.fixtures import make_tokenizer

TEXT = "Ünïcödé café 🙂 日本語のテキスト. The end 🙂🙂"


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.mark.parametrize("stops", [[], ["テキ"], ["end 🙂"], ["é c"], ["not there"]])
def test_deltas_rebuild_the_text_up_to_the_first_stop(tokenizer, stops):
    decoder = IncrementalDecoder(tokenizer, stops)
    deltas = [decoder.add(i) for i in tokenizer(TEXT)["input_ids"]]
    deltas.append(decoder.flush())
    cut = min((TEXT.index(s) for s in stops if s in TEXT), default=len(TEXT))
    assert "".join(deltas) == TEXT[:cut]
    assert "\ufffd" not in "".join(deltas)
    assert decoder.finished == (cut < len(TEXT))


def test_decoding_window_stays_short(tokenizer):
    calls = []

    class Counting:
        def decode(self, ids, **kwargs):
            calls.append(len(ids))
            return tokenizer.decode(ids, **kwargs)

    decoder = IncrementalDecoder(Counting())
    ids = tokenizer(TEXT * 20)["input_ids"]
    for i in ids:
        decoder.add(i)
    decoder.flush()
    assert decoder.text() == TEXT * 20
    assert max(calls) <= 16  # never the whole output
