"""The official langchain-tests standard suites for ChatMamba3."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from mamba3_integrations.langchain.chat_models import ChatMamba3

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Mamba3ChatSuite:
    """What ChatMamba3 supports: text in, text out, usage metadata; no tool calling,
    structured output, JSON mode or multimodal input (the suite's defaults say the
    same for the multimodal flags). The model is the session's tiny random-weight LM."""

    lm = None

    @pytest.fixture(autouse=True)
    def _tiny_lm(self, tiny_lm):
        self.lm = tiny_lm

    @property
    def chat_model_class(self) -> type[ChatMamba3]:
        return ChatMamba3

    @property
    def chat_model_params(self) -> dict:
        return {"lm": self.lm, "model_name": "tiny-mamba3"}

    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_tool_choice(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        return False  # one component serves one loaded model


class TestChatMamba3Unit(Mamba3ChatSuite, ChatModelUnitTests):
    pass


class TestChatMamba3Integration(Mamba3ChatSuite, ChatModelIntegrationTests):
    pass
