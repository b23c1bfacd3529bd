"""LangChain ``ChatMamba3``: a Mamba-3 model as a chat model (``BaseChatModel``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, ChatMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult

from mamba3_integrations.errors import InputError
from mamba3_integrations.langchain.llms import STRICT, Mamba3Params
from mamba3_integrations.runtime.completion import CompletionStream, chat_prompt

ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def message_dict(message: BaseMessage) -> dict[str, str]:
    """A LangChain message as a chat-template {"role", "content"} dict (text only)."""
    if isinstance(message, ChatMessage):
        role = message.role
    elif message.type in ROLES:
        role = ROLES[message.type]
    else:
        raise InputError(
            f"ChatMamba3 does not take {message.type!r} messages (it has no tool "
            "calling); send human, ai, system or chat messages"
        )
    content = message.content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif block.get("type") == "text":
                parts.append(block["text"])
            else:
                raise InputError(
                    f"ChatMamba3 reads text only, got a {block.get('type')!r} content block"
                )
        content = "".join(parts)
    return {"role": role, "content": content}


class ChatMamba3(Mamba3Params, BaseChatModel):
    """A Mamba-3 model as a LangChain chat model.

    Messages go through the tokenizer's chat template (or ``DEFAULT_CHAT_TEMPLATE``).
    ``invoke``/``batch``/``stream`` and their async forms (async runs in a worker
    thread; streaming yields each piece of text as the model produces it). The
    ``AIMessage`` carries ``usage_metadata`` (input/output/total tokens) and
    ``response_metadata`` (``model_name``, ``finish_reason``); when streaming, the last
    chunk carries them. Settings: see ``Mamba3Params``; per-call overrides through
    ``invoke(..., max_tokens=, temperature=, top_p=, top_k=, do_sample=, seed=, stop=)``
    or ``bind``. No tool calling, structured output or images.
    """

    model_config = STRICT

    streaming: bool = False
    """``invoke`` runs through ``_stream`` (callbacks get each new token)."""

    @property
    def _llm_type(self) -> str:
        return "mamba3-chat"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        stream = self._completion(messages, stop, kwargs)
        text = "".join(stream)
        message = AIMessage(
            content=text,
            usage_metadata=stream.usage(),
            response_metadata=self._response_metadata(stream),
        )
        return ChatResult(
            generations=[
                ChatGeneration(
                    message=message, generation_info={"finish_reason": stream.finish_reason}
                )
            ]
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stream = self._completion(messages, stop, kwargs)
        for delta in stream:
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                usage_metadata=stream.usage(),
                response_metadata=self._response_metadata(stream),
                chunk_position="last",
            ),
            generation_info={"finish_reason": stream.finish_reason},
        )

    def _completion(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> CompletionStream:
        prompt = chat_prompt(self.lm, [message_dict(m) for m in messages])
        return CompletionStream(self.lm, prompt, self._options(stop, **kwargs))

    def _response_metadata(self, stream: CompletionStream) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "finish_reason": stream.finish_reason,
            "model_provider": "mamba3",
        }
