"""LangChain ``Mamba3LLM``: a Mamba-3 model as a text-completion ``LLM``.

``Mamba3Params`` holds the model and generation settings shared with ``ChatMamba3``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models.llms import LLM
from langchain_core.outputs import GenerationChunk
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mamba3_integrations.errors import InputError
from mamba3_integrations.runtime.completion import (
    CompletionStream,
    GenerationOptions,
    load_lm,
    model_name,
    text_prompt,
)

# LangChain's standard parameters for hosted models; accepted for drop-in compatibility
# and ignored, since a local model makes no requests.
API_ONLY_PARAMS = ("timeout", "max_retries", "api_key")

# Unknown parameters are an error (set on each class: LangChain's bases say "ignore").
STRICT = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())


class Mamba3Params(BaseModel):
    """Model and generation settings of the LangChain LLM components.

    Give ``model_path`` (a model folder) or ``lm`` (a loaded ``Mamba3ForCausalLM``,
    to share one model between components; it wins over ``model_path``). Decoding is
    greedy unless ``temperature`` > 0 or ``do_sample=True``. Unknown parameters raise
    a validation error, except ``timeout``, ``max_retries`` and ``api_key``, which
    are ignored.
    """

    model_config = STRICT

    model_path: str | None = None
    """Folder of the model: config.json, weights and tokenizer."""
    lm: Any = Field(default=None, exclude=True)
    """A loaded ``Mamba3ForCausalLM`` (set from ``model_path`` when not given)."""
    model_name: str | None = None
    """Name reported in response metadata and traces (default: the folder's name)."""
    dtype: str | None = None
    """Weights dtype when loading, e.g. "bfloat16" (default: as saved)."""
    device: str | None = None
    """Device when loading, e.g. "cuda" (default: "cpu")."""
    max_tokens: int = 256
    """Maximum number of new tokens."""
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    """Sample instead of greedy decoding (default: when temperature > 0)."""
    seed: int | None = None
    """Seed of the sampler, for reproducible sampling."""
    stop: list[str] | None = None
    """Stop strings: the text ends before the first of them (per-call ``stop`` replaces)."""

    @model_validator(mode="before")
    @classmethod
    def _drop_api_only_params(cls, values: Any) -> Any:
        if isinstance(values, dict):
            return {k: v for k, v in values.items() if k not in API_ONLY_PARAMS}
        return values

    @model_validator(mode="after")
    def _load_model(self) -> Mamba3Params:
        self.lm = load_lm(self.model_path, self.lm, self.dtype, self.device)
        self.model_name = self.model_name or model_name(self.model_path)
        return self

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_path": self.model_path,
            **self._options(None).model_kwargs(),
        }

    def _options(self, stop: list[str] | None, **kwargs: Any) -> GenerationOptions:
        """The instance's settings with per-call ``stop`` and keyword overrides."""
        kwargs.pop("stream", None)  # LangChain's own switch, already acted upon
        requested = kwargs.pop("model", None)
        if requested is not None and requested != self.model_name:
            raise InputError(
                f"this component serves {self.model_name!r}; create another one for {requested!r}"
            )
        if "max_tokens" in kwargs:
            kwargs["max_new_tokens"] = kwargs.pop("max_tokens")
        options = GenerationOptions(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            do_sample=self.do_sample,
            seed=self.seed,
            stop=tuple(self.stop or ()),
        )
        return options.update(stop=stop, **kwargs)


class Mamba3LLM(Mamba3Params, LLM):
    """A Mamba-3 model as a LangChain text-completion LLM (the prompt is used as is).

    ``invoke``/``batch``/``stream`` and their async forms; streaming yields text as the
    model produces it. For chat messages and the chat template, use ``ChatMamba3``.
    """

    model_config = STRICT

    @property
    def _llm_type(self) -> str:
        return "mamba3"

    def _call(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> str:
        return "".join(self._completion(prompt, stop, kwargs))

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for delta in self._completion(prompt, stop, kwargs):
            chunk = GenerationChunk(text=delta)
            if run_manager:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk

    def _completion(
        self, prompt: str, stop: list[str] | None, kwargs: dict[str, Any]
    ) -> CompletionStream:
        return CompletionStream(
            self.lm, text_prompt(self.lm, prompt), self._options(stop, **kwargs)
        )
