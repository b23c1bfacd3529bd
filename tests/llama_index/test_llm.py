"""Mamba3LLM (LlamaIndex): complete/chat, streaming, async, stop strings, metadata, errors."""

from __future__ import annotations

import pytest
from llama_index.core.base.llms.types import ChatMessage, ImageBlock, MessageRole, TextBlock
from llama_index.core.prompts import PromptTemplate

from mamba3_integrations.errors import CheckpointError, InputError
from mamba3_integrations.llama_index.llm import Mamba3LLM
from mamba3_integrations.runtime.completion import DEFAULT_CONTEXT_WINDOW
from tests.fixtures import hybrid_config, make_tokenizer, save_tiny_lm

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# A high sampling temperature makes the random-weight model's text varied (greedy
# decoding repeats one token); the seed makes it reproducible.
SAMPLED = {"temperature": 20.0, "seed": 0, "max_new_tokens": 24}
MESSAGES = [ChatMessage(role=MessageRole.SYSTEM, content="Be brief."),
            ChatMessage(role=MessageRole.USER, content="What is Mamba-3?")]


@pytest.fixture
def llm(tiny_lm) -> Mamba3LLM:
    return Mamba3LLM(lm=tiny_lm, **SAMPLED)


def test_metadata(tiny_lm, tiny_lm_dir, tmp_path):
    meta = Mamba3LLM(model_path=str(tiny_lm_dir), max_new_tokens=7).metadata
    assert (meta.context_window, meta.num_output, meta.is_chat_model, meta.model_name) == (
        DEFAULT_CONTEXT_WINDOW, 7, True, tiny_lm_dir.name)
    folder = save_tiny_lm(tmp_path, hybrid_config(len(make_tokenizer()), context_length=1234))
    assert Mamba3LLM(model_path=str(folder)).metadata.context_window == 1234
    assert Mamba3LLM(lm=tiny_lm, context_window=99).metadata.context_window == 99


def test_complete_and_stream_complete(llm, tiny_lm):
    response = llm.complete("The quick brown fox")
    expected = tiny_lm.generate_text("The quick brown fox", max_new_tokens=24, do_sample=True,
                                     temperature=20.0, seed=0)
    assert response.text == expected
    assert response.additional_kwargs["completion_tokens"] == 24
    assert response.additional_kwargs["finish_reason"] == "length"
    assert response.additional_kwargs["total_tokens"] == (
        response.additional_kwargs["prompt_tokens"] + 24)
    parts = list(llm.stream_complete("The quick brown fox"))
    assert len(parts) >= 3
    assert "".join(p.delta for p in parts) == parts[-1].text == expected
    wrapped = Mamba3LLM(lm=tiny_lm, completion_to_prompt=lambda p: f"Q: {p}\nA:", **SAMPLED)
    assert wrapped.complete("x").text == llm.complete("Q: x\nA:", formatted=True).text


def test_streaming_yields_tokens_as_they_are_produced(llm, tiny_lm, monkeypatch):
    steps = []
    original = tiny_lm.step
    monkeypatch.setattr(tiny_lm, "step", lambda ids, cache: steps.append(1) or original(ids,
                                                                                      cache))
    seen_at = [len(steps) for _ in llm.stream_chat(MESSAGES)]
    assert len(seen_at) >= 3 and seen_at[0] < seen_at[-1]


def test_chat_uses_the_chat_template(llm, tiny_lm):
    response = llm.chat(MESSAGES)
    prompt = tiny_lm.tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is "
                                                      "Mamba-3?"}],
        tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>\n")
    assert response.message.role == MessageRole.ASSISTANT
    assert response.message.content == llm.complete(prompt, formatted=True).text
    parts = list(llm.stream_chat(MESSAGES))
    assert "".join(p.delta for p in parts) == parts[-1].message.content == response.message.content
    custom = Mamba3LLM(lm=tiny_lm, messages_to_prompt=lambda ms: "|".join(m.content for m in ms),
                       **SAMPLED)
    assert custom.chat(MESSAGES).message.content == llm.complete(
        "Be brief.|What is Mamba-3?", formatted=True).text


async def test_async_forms_match_sync(llm):
    assert (await llm.acomplete("hello")).text == llm.complete("hello").text
    chat_text = llm.chat(MESSAGES).message.content
    assert (await llm.achat(MESSAGES)).message.content == chat_text
    deltas = [r.delta async for r in await llm.astream_chat(MESSAGES)]
    assert len(deltas) >= 3 and "".join(deltas) == chat_text
    deltas = [r.delta async for r in await llm.astream_complete("hello")]
    assert "".join(deltas) == llm.complete("hello").text


def test_stop_strings_and_options(llm, tiny_lm):
    full = llm.complete("hello").text
    stop = full[6:9]
    cut = llm.complete("hello", stop=[stop])
    assert cut.text == full[:full.index(stop)]
    assert cut.additional_kwargs["finish_reason"] == "stop"
    assert Mamba3LLM(lm=tiny_lm, stop=[stop], **SAMPLED).complete("hello").text == cut.text
    assert "".join(r.delta for r in llm.stream_complete("hello", stop=[stop])) == cut.text
    assert llm.complete("hello", max_new_tokens=2).additional_kwargs["completion_tokens"] == 2
    greedy = Mamba3LLM(lm=tiny_lm, max_new_tokens=24).complete("hello").text
    assert llm.complete("hello", temperature=0).text == greedy


def test_settings_and_predict(llm, isolated_settings):
    isolated_settings.llm = llm
    template = PromptTemplate("Summarise: {text}")
    out = isolated_settings.llm.predict(template, text="state space models")
    expected = llm.chat([ChatMessage(role=MessageRole.USER,
                                     content="Summarise: state space models")]).message.content
    assert out == expected
    assert "".join(isolated_settings.llm.stream(template, text="state space models")) == expected


def test_bad_input(llm, tiny_lm, tmp_path):
    with pytest.raises(InputError, match="prompt is empty"):
        llm.complete("")
    with pytest.raises(InputError, match="not valid Unicode"):
        llm.complete(b"caf\xe9".decode("utf-8", "surrogateescape"))
    with pytest.raises(InputError, match="prompt is bytes"):
        llm.complete(b"hello")
    with pytest.raises(InputError, match="prompt is empty"):
        llm.stream_complete("")
    with pytest.raises(InputError, match="does not take 'tool' messages"):
        llm.chat([ChatMessage(role=MessageRole.TOOL, content="42")])
    image = ChatMessage(role=MessageRole.USER,
                        blocks=[TextBlock(text="see"), ImageBlock(url="https://x.org/a.png")])
    with pytest.raises(InputError, match="reads text only"):
        llm.chat([image])
    with pytest.raises(InputError, match="a chat needs at least one message"):
        llm.chat([])
    with pytest.raises(InputError, match=r"unknown generation option\(s\) \['max_tokenz'\]"):
        llm.complete("hi", max_tokenz=3)
    with pytest.raises(CheckpointError, match="has no config.json"):
        Mamba3LLM(model_path=str(tmp_path))
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        Mamba3LLM(lm=tiny_lm, max_tokens=3)
