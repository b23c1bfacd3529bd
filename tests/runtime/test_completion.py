"""The completion core shared by the LlamaIndex and LangChain LLM components."""

from __future__ import annotations

import copy

import pytest

from mamba3_integrations.errors import InputError
from mamba3_integrations.runtime.completion import (
    DEFAULT_CHAT_TEMPLATE,
    CompletionStream,
    GenerationOptions,
    chat_prompt,
    load_lm,
    text_prompt,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]


def test_generation_options():
    greedy = GenerationOptions().model_kwargs()
    assert (greedy["do_sample"], greedy["temperature"], greedy["max_new_tokens"]) == (
        False, 1.0, 256)
    assert GenerationOptions(temperature=0).model_kwargs()["do_sample"] is False
    sampled = GenerationOptions(temperature=0.7, top_k=5).model_kwargs()
    assert (sampled["do_sample"], sampled["temperature"], sampled["top_k"]) == (True, 0.7, 5)
    assert GenerationOptions(temperature=0.7, do_sample=False).model_kwargs()["do_sample"] is False
    assert GenerationOptions(do_sample=True).model_kwargs()["temperature"] == 1.0
    options = GenerationOptions(stop=["a"], seed=1).update(stop=None, max_new_tokens=3)
    assert (options.stop, options.seed, options.max_new_tokens) == (("a",), 1, 3)
    with pytest.raises(InputError, match="do_sample=True needs temperature > 0"):
        GenerationOptions(temperature=0, do_sample=True)
    with pytest.raises(InputError, match="temperature must be >= 0"):
        GenerationOptions(temperature=-1)
    with pytest.raises(InputError, match=r"unknown generation option\(s\) \['n'\]"):
        GenerationOptions().update(n=2)


def test_chat_prompt_uses_the_template_without_adding_special_tokens(tiny_lm):
    tok = tiny_lm.tokenizer
    text = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert chat_prompt(tiny_lm, CHAT) == tok(text, add_special_tokens=False)["input_ids"]
    assert text == "<|system|>\nBe brief.\n<|user|>\nHello\n<|assistant|>\n"


def test_chat_prompt_default_template(tiny_lm, monkeypatch):
    tok = copy.deepcopy(tiny_lm.tokenizer)
    tok.chat_template = "{{ messages[0]['content'] }}"  # the tokenizer's own one wins
    monkeypatch.setattr(tiny_lm, "tokenizer", tok)
    assert tok.decode(chat_prompt(tiny_lm, CHAT)) == "Be brief."
    tok.chat_template = None
    expected = tok.apply_chat_template(CHAT, chat_template=DEFAULT_CHAT_TEMPLATE,
                                       tokenize=False, add_generation_prompt=True)
    assert tok.decode(chat_prompt(tiny_lm, CHAT)) == expected


def test_stream_reports_usage_and_finish_reason(tiny_lm, monkeypatch):
    prompt = chat_prompt(tiny_lm, CHAT)
    stream = CompletionStream(tiny_lm, prompt, GenerationOptions(max_new_tokens=5))
    deltas = list(stream)
    assert "".join(deltas) == stream.text and len(deltas) == 5
    assert stream.usage() == {"input_tokens": len(prompt), "output_tokens": 5,
                              "total_tokens": len(prompt) + 5}
    assert stream.finish_reason == "length"
    # Make the greedy model's first token the end-of-sequence token.
    first = tiny_lm.generate([prompt], max_new_tokens=1)[0][-1]
    original = tiny_lm.generation_config
    monkeypatch.setattr(tiny_lm, "generation_config",
                        lambda **kw: original(**kw, eos_token_id=first))
    stream = CompletionStream(tiny_lm, prompt, GenerationOptions(max_new_tokens=5))
    list(stream)
    assert (stream.completion_tokens, stream.finish_reason) == (1, "stop")


def test_load_lm_and_text_prompt(tiny_lm, monkeypatch):
    assert load_lm("ignored/when/a/model/is/given", tiny_lm) is tiny_lm
    assert text_prompt(tiny_lm, "hi") == tiny_lm.tokenizer("hi")["input_ids"]
    with pytest.raises(InputError, match="prompt has type int, expected str"):
        text_prompt(tiny_lm, 3)
    monkeypatch.setattr(tiny_lm, "tokenizer", None)
    with pytest.raises(InputError, match="has no tokenizer"):
        load_lm(lm=tiny_lm)
