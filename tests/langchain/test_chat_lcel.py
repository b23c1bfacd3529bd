"""ChatMamba3 and Mamba3LLM in LCEL chains: streaming, stop strings, usage, bad input."""

from __future__ import annotations

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate

from mamba3_integrations.errors import CheckpointError, InputError
from mamba3_integrations.langchain.chat_models import ChatMamba3
from mamba3_integrations.langchain.llms import Mamba3LLM
from mamba3_integrations.runtime.completion import chat_prompt

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# A high sampling temperature makes the random-weight model's text varied (greedy
# decoding repeats one token); the seed makes it reproducible.
SAMPLED = {"temperature": 20.0, "seed": 0, "max_tokens": 24}
PROMPT = ChatPromptTemplate.from_messages([("system", "Answer briefly."),
                                           ("human", "Tell me about {topic}.")])


@pytest.fixture
def chat(tiny_lm) -> ChatMamba3:
    return ChatMamba3(lm=tiny_lm, **SAMPLED)


def count_steps(lm, monkeypatch) -> list[int]:
    """Spy on the decode steps: the list grows by one per generated token after the first."""
    steps: list[int] = []
    original = lm.step

    def step(input_ids, cache):
        steps.append(1)
        return original(input_ids, cache)

    monkeypatch.setattr(lm, "step", step)
    return steps


def test_prompt_model_parser_chain(chat):
    chain = PROMPT | chat | StrOutputParser()
    text = chain.invoke({"topic": "state space models"})
    assert isinstance(text, str) and text
    assert text == chat.invoke(PROMPT.invoke({"topic": "state space models"})).content
    assert chain.batch([{"topic": "a"}, {"topic": "b"}]) == [
        chain.invoke({"topic": "a"}), chain.invoke({"topic": "b"})]


def test_streaming_yields_chunks_as_they_are_produced(chat, tiny_lm, monkeypatch):
    steps = count_steps(tiny_lm, monkeypatch)
    chain = PROMPT | chat | StrOutputParser()
    seen_at = []
    chunks = []
    for chunk in chain.stream({"topic": "pgvector"}):
        seen_at.append(len(steps))
        chunks.append(chunk)
    assert len([c for c in chunks if c]) >= 3
    assert seen_at[0] < seen_at[-1]  # the first text arrived before generation ended
    assert "".join(chunks) == chain.invoke({"topic": "pgvector"})


async def test_async_forms_match_sync(chat):
    messages = [HumanMessage("hello")]
    sync_text = chat.invoke(messages).content
    assert (await chat.ainvoke(messages)).content == sync_text
    chunks = [c async for c in chat.astream(messages)]
    assert len(chunks) >= 3 and "".join(c.content for c in chunks) == sync_text


def test_usage_metadata_on_message_and_last_chunk(chat, tiny_lm):
    messages = [SystemMessage("Be brief."), HumanMessage("hello")]
    result = chat.invoke(messages)
    prompt_tokens = len(chat_prompt(tiny_lm, [{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": "hello"}]))
    assert result.usage_metadata == {"input_tokens": prompt_tokens, "output_tokens": 24,
                                     "total_tokens": prompt_tokens + 24}
    assert result.response_metadata["finish_reason"] == "length"
    assert result.response_metadata["model_name"] == "mamba3"
    chunks = list(chat.stream(messages))
    assert chunks[-1].chunk_position == "last"
    assert chunks[-1].usage_metadata == result.usage_metadata
    assert all(c.usage_metadata is None for c in chunks[:-1])


def test_stop_strings_cut_the_text(chat):
    full = chat.invoke("hello").content
    stop = full[8:11]
    expected = full[:full.index(stop)]
    for model, kwargs in [(chat, {"stop": [stop]}),
                          (chat.bind(stop=[stop]), {}),
                          (ChatMamba3(lm=chat.lm, stop=[stop], **SAMPLED), {})]:
        result = model.invoke("hello", **kwargs)
        assert result.content == expected
        assert result.response_metadata["finish_reason"] == "stop"
        assert result.usage_metadata["output_tokens"] < SAMPLED["max_tokens"]
        assert "".join(c.content for c in model.stream("hello", **kwargs)) == expected


def test_bind_overrides_generation_options(chat):
    short = chat.bind(max_tokens=3).invoke("hello")
    assert short.usage_metadata["output_tokens"] == 3
    greedy = chat.bind(temperature=0).invoke("hello").content
    assert greedy == ChatMamba3(lm=chat.lm, max_tokens=24).invoke("hello").content
    assert chat.invoke("hello", stream=True).content == chat.invoke("hello").content

    class Tokens(BaseCallbackHandler):
        def __init__(self) -> None:
            self.tokens: list[str] = []

        def on_llm_new_token(self, token: str, **kwargs) -> None:
            self.tokens.append(token)

    tokens = Tokens()  # streaming=True: invoke streams, callbacks see each token
    streaming = ChatMamba3(lm=chat.lm, streaming=True, **SAMPLED)
    content = streaming.invoke("hello", config={"callbacks": [tokens]}).content
    assert content == chat.invoke("hello").content
    assert len(tokens.tokens) >= 3 and "".join(tokens.tokens) == content


def test_llm_completes_raw_text(tiny_lm):
    llm = Mamba3LLM(lm=tiny_lm, **SAMPLED)
    chain = PromptTemplate.from_template("The {animal} jumps") | llm
    text = chain.invoke({"animal": "fox"})
    assert text == tiny_lm.generate_text("The fox jumps", max_new_tokens=24, do_sample=True,
                                         temperature=20.0, seed=0)
    chunks = list(chain.stream({"animal": "fox"}))
    assert len(chunks) >= 3 and "".join(chunks) == text
    stop = text[5:8]
    assert llm.invoke("The fox jumps", stop=[stop]) == text[:text.index(stop)]


def test_loading_from_a_folder(tiny_lm_dir):
    chat = ChatMamba3(model_path=str(tiny_lm_dir), max_tokens=4)
    assert chat.model_name == tiny_lm_dir.name
    assert chat.invoke("hi").usage_metadata["output_tokens"] == 4
    assert chat._identifying_params["model_path"] == str(tiny_lm_dir)


def test_bad_input(chat, tiny_lm, tmp_path):
    with pytest.raises(InputError, match="does not take 'tool' messages"):
        chat.invoke([HumanMessage("hi"), ToolMessage("3", tool_call_id="1")])
    image = {"type": "image", "url": "https://example.com/a.png"}
    with pytest.raises(InputError, match="reads text only"):
        chat.invoke([HumanMessage(content=[{"type": "text", "text": "hi"}, image])])
    with pytest.raises(InputError, match=r"unknown generation option\(s\) \['max_new_token'\]"):
        chat.invoke("hi", max_new_token=3)
    with pytest.raises(InputError, match="serves 'mamba3'"):
        chat.invoke("hi", model="gpt-4")
    with pytest.raises(InputError, match="not valid Unicode"):
        chat.invoke([HumanMessage(b"\xffhi".decode("utf-8", "surrogateescape"))])
    with pytest.raises(InputError, match="a chat needs at least one message"):
        chat.invoke([])
    llm = Mamba3LLM(lm=tiny_lm)
    with pytest.raises(InputError, match="prompt is empty"):
        llm.invoke("")
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        ChatMamba3(lm=tiny_lm, max_new_tokens=3)
    with pytest.raises(CheckpointError, match="has no config.json"):
        ChatMamba3(model_path=str(tmp_path))
