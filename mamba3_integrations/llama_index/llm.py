"""LlamaIndex ``Mamba3LLM``: a Mamba-3 model as a ``CustomLLM``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, TypeVar

from llama_index.core.base.llms.generic_utils import (
    messages_to_prompt as generic_messages_to_prompt,
)
from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
    TextBlock,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from mamba3_integrations.errors import InputError
from mamba3_integrations.runtime.causal_lm import Mamba3ForCausalLM
from mamba3_integrations.runtime.completion import (
    DEFAULT_CONTEXT_WINDOW,
    CompletionStream,
    GenerationOptions,
    chat_prompt,
    context_window,
    load_lm,
    model_name,
    text_prompt,
)

T = TypeVar("T")

ROLES = {MessageRole.USER: "user", MessageRole.SYSTEM: "system",
         MessageRole.DEVELOPER: "system", MessageRole.ASSISTANT: "assistant",
         MessageRole.CHATBOT: "assistant", MessageRole.MODEL: "assistant"}


def message_dict(message: ChatMessage) -> dict[str, str]:
    """A LlamaIndex message as a chat-template {"role", "content"} dict (text only)."""
    if message.role not in ROLES:
        raise InputError(f"Mamba3LLM does not take {message.role.value!r} messages (it has no "
                         "function calling); send user, system or assistant messages")
    for block in message.blocks:
        if not isinstance(block, TextBlock):
            raise InputError(f"Mamba3LLM reads text only, got a {type(block).__name__}")
    return {"role": ROLES[message.role], "content": message.content or ""}


def so_far(deltas: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(text so far, delta) for each delta."""
    text = ""
    for delta in deltas:
        text += delta
        yield text, delta


async def in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    """Iterate a blocking iterator from async code, one item per worker-thread call."""
    done = object()
    while (item := await asyncio.to_thread(next, iterator, done)) is not done:
        yield item


class Mamba3LLM(CustomLLM):
    """A Mamba-3 model as a LlamaIndex LLM (a chat model: ``predict`` and query engines
    go through ``chat`` and the tokenizer's chat template).

    Give ``model_path`` (a model folder) or ``lm`` (a loaded ``Mamba3ForCausalLM``; it
    wins over ``model_path``). ``complete`` uses the prompt as is (after
    ``completion_to_prompt``); ``chat`` renders the tokenizer's chat template (or
    ``DEFAULT_CHAT_TEMPLATE``) unless ``messages_to_prompt`` is given. Async forms run
    in a worker thread; streams yield each piece of text as the model produces it.
    Per-call options: ``max_new_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``do_sample``, ``seed``, ``stop``. Non-streaming responses carry
    ``prompt_tokens``, ``completion_tokens``, ``total_tokens`` and ``finish_reason`` in
    ``additional_kwargs``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str | None = Field(default=None, description="Folder of the model.")
    model_name: str = Field(default="mamba3", description="Name in metadata (default: the "
                            "folder's name).")
    context_window: int = Field(default=DEFAULT_CONTEXT_WINDOW, description="Tokens the "
                                "model takes in (default: config.context_length, if set).")
    max_new_tokens: int = Field(default=256, description="Maximum new tokens (num_output).")
    temperature: float = Field(default=0.0, description="0 is greedy decoding.")
    top_p: float | None = Field(default=None, description="Nucleus sampling threshold.")
    top_k: int | None = Field(default=None, description="Sample among the k likeliest.")
    do_sample: bool | None = Field(default=None, description="Sample (default: when "
                                   "temperature > 0).")
    seed: int | None = Field(default=None, description="Seed of the sampler.")
    stop: list[str] = Field(default_factory=list, description="Stop strings (not included).")
    dtype: str | None = Field(default=None, description="Weights dtype when loading.")
    device: str | None = Field(default=None, description="Device when loading.")

    _lm: Mamba3ForCausalLM = PrivateAttr()

    def __init__(self, model_path: str | None = None, lm: Mamba3ForCausalLM | None = None,
                 **kwargs: Any) -> None:
        lm = load_lm(model_path, lm, kwargs.get("dtype"), kwargs.get("device"))
        kwargs.setdefault("model_name", model_name(model_path))
        kwargs.setdefault("context_window", context_window(lm))
        super().__init__(model_path=model_path, **kwargs)
        self._lm = lm

    @classmethod
    def class_name(cls) -> str:
        return "Mamba3LLM"

    @property
    def lm(self) -> Mamba3ForCausalLM:
        """The loaded model."""
        return self._lm

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(context_window=self.context_window, num_output=self.max_new_tokens,
                           is_chat_model=True, model_name=self.model_name)

    # ------------------------------------------------------------- core calls
    def _options(self, kwargs: dict[str, Any]) -> GenerationOptions:
        options = GenerationOptions(
            max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
            top_k=self.top_k, do_sample=self.do_sample, seed=self.seed, stop=tuple(self.stop))
        return options.update(**kwargs)

    def _prompt_stream(self, prompt: str, formatted: bool,
                       kwargs: dict[str, Any]) -> CompletionStream:
        if not formatted:
            prompt = self.completion_to_prompt(prompt)
        return CompletionStream(self._lm, text_prompt(self._lm, prompt), self._options(kwargs))

    def _chat_stream(self, messages: Sequence[ChatMessage],
                     kwargs: dict[str, Any]) -> CompletionStream:
        if self.messages_to_prompt is not generic_messages_to_prompt:  # the user's own
            return self._prompt_stream(self.messages_to_prompt(messages), True, kwargs)
        ids = chat_prompt(self._lm, [message_dict(m) for m in messages])
        return CompletionStream(self._lm, ids, self._options(kwargs))

    @staticmethod
    def _usage(stream: CompletionStream) -> dict[str, Any]:
        usage = stream.usage()
        return {"prompt_tokens": usage["input_tokens"],
                "completion_tokens": usage["output_tokens"],
                "total_tokens": usage["total_tokens"], "finish_reason": stream.finish_reason}

    def _complete(self, prompt: str, formatted: bool, **kwargs: Any) -> CompletionResponse:
        stream = self._prompt_stream(prompt, formatted, kwargs)
        text = "".join(stream)
        return CompletionResponse(text=text, additional_kwargs=self._usage(stream))

    def _stream_complete(self, prompt: str, formatted: bool,
                         **kwargs: Any) -> Iterator[CompletionResponse]:
        stream = self._prompt_stream(prompt, formatted, kwargs)  # bad input raises here
        return (CompletionResponse(text=text, delta=delta) for text, delta in so_far(stream))

    def _chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        stream = self._chat_stream(messages, kwargs)
        text = "".join(stream)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                            additional_kwargs=self._usage(stream))

    def _stream_chat(self, messages: Sequence[ChatMessage],
                     **kwargs: Any) -> Iterator[ChatResponse]:
        stream = self._chat_stream(messages, kwargs)  # bad input raises here
        return (ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=text),
                             delta=delta) for text, delta in so_far(stream))

    # ------------------------------------------------------- LlamaIndex API
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._complete(prompt, formatted, **kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponseGen:
        return self._stream_complete(prompt, formatted, **kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, **kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._stream_chat(messages, **kwargs)

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False,
                        **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._complete, prompt, formatted, **kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False,
                               **kwargs: Any) -> CompletionResponseAsyncGen:
        return in_thread(self._stream_complete(prompt, formatted, **kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, **kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage],
                           **kwargs: Any) -> ChatResponseAsyncGen:
        return in_thread(self._stream_chat(messages, **kwargs))
