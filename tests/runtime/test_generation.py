"""Generation: greedy and sampling, EOS, stop strings, streaming, batching, bad input."""

from __future__ import annotations

import pytest
import torch

from mamba3_integrations import InputError, Mamba3ForCausalLM
from mamba3_integrations.runtime.sampling import SamplingParams, filter_logits


@pytest.fixture(scope="module")
def model(tiny_lm_dir) -> Mamba3ForCausalLM:
    return Mamba3ForCausalLM.from_pretrained(tiny_lm_dir)


def prompts(model, texts=("The quick brown fox", "Mamba", "PostgreSQL stores rows in")):
    return model.encode(list(texts))


def test_greedy_equals_argmax_of_full_forward(model):
    ids = torch.tensor([prompts(model)[0]])
    out = model.generate(ids, max_new_tokens=8, eos_token_id=[])
    assert out.shape == (1, ids.shape[1] + 8) and torch.equal(out[:, : ids.shape[1]], ids)
    for t in range(ids.shape[1], out.shape[1]):
        logits = model(out[:, :t]).logits[0, -1, : model.config.vocab_size]
        assert int(logits.argmax()) == int(out[0, t])


def test_batch_of_different_lengths_equals_one_by_one(model):
    rows = prompts(model)
    batched = model.generate(rows, max_new_tokens=10, eos_token_id=[])
    assert batched == [model.generate([r], max_new_tokens=10, eos_token_id=[])[0] for r in rows]


def test_batch_with_sampling_and_eos_rows_leaving(model):
    rows = prompts(model)
    free = model.generate(rows, max_new_tokens=12, eos_token_id=[])
    # Make row 1's fourth new token its EOS: that row stops there, the others go on.
    eos = free[1][len(rows[1]) + 3]
    stopped = model.generate(rows, max_new_tokens=12, eos_token_id=eos)
    cut = free[1].index(eos, len(rows[1]))
    assert stopped[1] == free[1][: cut + 1]
    for i in (0, 2):
        expected = free[i]
        if eos in expected[len(rows[i]):]:
            expected = expected[: expected.index(eos, len(rows[i])) + 1]
        assert stopped[i] == expected


def test_tensor_output_pads_finished_rows(model):
    rows = prompts(model)
    free = model.generate(rows, max_new_tokens=6, eos_token_id=[])
    eos = free[0][len(rows[0])]  # row 0 stops at its first new token
    ids, mask = (torch.tensor(x) for x in _left_pad(rows, model.tokenizer.pad_token_id))
    out = model.generate(ids, attention_mask=mask, max_new_tokens=6, eos_token_id=eos,
                         pad_token_id=1)
    assert out.shape[0] == 3 and int(out[0, ids.shape[1]]) == eos
    assert (out[0, ids.shape[1] + 1:] == 1).all()


def _left_pad(rows, pad):
    width = max(map(len, rows))
    return ([[pad] * (width - len(r)) + r for r in rows],
            [[0] * (width - len(r)) + [1] * len(r) for r in rows])


def test_sampling_is_reproducible_with_a_seed_and_varies_without(model):
    row = prompts(model)[:1]
    a = model.generate(row, max_new_tokens=16, do_sample=True, temperature=1.5, seed=3,
                       eos_token_id=[])
    b = model.generate(row, max_new_tokens=16, do_sample=True, temperature=1.5, seed=3,
                       eos_token_id=[])
    c = model.generate(row, max_new_tokens=16, do_sample=True, temperature=1.5, seed=4,
                       eos_token_id=[])
    assert a == b and a != c


def test_top_k_and_top_p_filtering():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = filter_logits(logits, SamplingParams(True, top_k=2)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = logits.softmax(-1)[0]  # 0.64, 0.24, 0.09, ...
    kept = filter_logits(logits, SamplingParams(True, top_p=0.7)).isfinite()
    assert kept.tolist() == [[True, True, False, False, False]]
    assert probs[0] < 0.7 < probs[0] + probs[1]
    kept = filter_logits(logits, SamplingParams(True, top_p=0.5)).isfinite()
    assert kept.tolist() == [[True, False, False, False, False]]
    hot = filter_logits(logits, SamplingParams(True, temperature=0.5))
    torch.testing.assert_close(hot, logits * 2)


def test_stop_strings_cut_the_text_and_stop_generation(model):
    text = model.generate_text("The quick brown fox", max_new_tokens=24, eos_token_id=[])
    assert len(text) > 6
    stop = text[3:6]
    cut = model.generate_text("The quick brown fox", max_new_tokens=24, eos_token_id=[],
                              stop_strings=[stop])
    assert cut == text[: text.index(stop)]
    tokens = model.generate(prompts(model)[:1], max_new_tokens=24, eos_token_id=[],
                            stop_strings=[stop])[0]
    generated = model.tokenizer.decode(tokens[len(prompts(model)[0]):])
    assert generated.endswith(stop) or stop in generated[-len(stop) - 8:]
    assert len(tokens) < len(prompts(model)[0]) + 24


def test_stream_text_equals_generate_text(model):
    for stops in ([], ["xyz"]):
        pieces = list(model.stream_text("Mamba", max_new_tokens=20, stop_strings=stops,
                                        eos_token_id=[]))
        assert len(pieces) > 1
        assert "".join(pieces) == model.generate_text("Mamba", max_new_tokens=20,
                                                      stop_strings=stops, eos_token_id=[])


def test_stream_yields_tokens_one_step_at_a_time(model):
    row = prompts(model)[:1]
    steps = list(model.stream(row, max_new_tokens=5, eos_token_id=[]))
    assert len(steps) == 5 and all(s.shape == (1,) for s in steps)
    assert [int(s[0]) for s in steps] == model.generate(row, max_new_tokens=5,
                                                        eos_token_id=[])[0][len(row[0]):]


def test_max_new_tokens_zero_returns_the_prompt(model):
    row = prompts(model)[:1]
    assert model.generate(row, max_new_tokens=0) == row


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: m.generate([[]]), "at least one token"),
        (lambda m: m.generate_text(""), "prompt is empty"),
        (lambda m: m.generate(torch.tensor([[1, 2, 10_000]])), r"input_ids must lie in"),
        (lambda m: m.generate(torch.tensor([[1.0, 2.0]])), "integer token ids"),
        (lambda m: m.generate(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 0, 1]])),
         "left padding"),
        (lambda m: m.generate([[1, 2]], temperature=0.0, do_sample=True), "temperature"),
        (lambda m: m.generate([[1, 2]], top_p=1.5, do_sample=True), "top_p"),
        (lambda m: m.generate([[1, 2]], max_new_tokens=-1), "max_new_tokens"),
        (lambda m: m.generate([[1, 2]], stop_strings=[""]), "non-empty"),
    ],
)
def test_bad_input_is_reported(model, call, message):
    with pytest.raises(InputError, match=message):
        call(model)
