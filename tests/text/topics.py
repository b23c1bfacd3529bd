"""Deterministic test embedding: sentences on one topic embed close, on different topics far."""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Sequence
from typing import Any

# fmt: off
TOPICS: dict[str, tuple[str, ...]] = {
    "space": ("rocket", "orbit", "planet", "galaxy", "astronaut", "telescope",
              "moon", "comet", "nebula", "satellite"),
    "cooking": ("recipe", "oven", "flour", "butter", "dough", "kitchen",
                "sugar", "garlic", "skillet", "pastry"),
    "finance": ("market", "stock", "bond", "bank", "investor", "inflation",
                "dividend", "portfolio", "loan", "credit"),
    "music": ("guitar", "melody", "chord", "rhythm", "violin", "concert",
              "drummer", "tempo", "chorus", "orchestra"),
}
# fmt: on
_TOPIC_AXIS = {word: axis for axis, words in enumerate(TOPICS.values()) for word in words}
_HASHED_AXES = 60
DIMENSIONS = len(TOPICS) + _HASHED_AXES
_TEMPLATES = (
    "The {a} and the {b} were discussed near the {c}.",
    "{a} experts say every {b} needs a good {c}.",
    "Yesterday our {a} met a {b} beside an old {c}.",
    "Nobody expected the {a} to explain the {b} so well, said the {c}.",
)


def embed_text(text: str) -> list[float]:
    """Topic words pull toward their topic's axis; every word also adds a little hashed noise."""
    vector = [0.0] * DIMENSIONS
    for word in re.findall(r"\w+", text.lower()):
        if word in _TOPIC_AXIS:
            vector[_TOPIC_AXIS[word]] += 1.0
        vector[len(TOPICS) + zlib.crc32(word.encode()) % _HASHED_AXES] += 0.3
    return vector


def topic_embed(texts: list[str]) -> list[list[float]]:
    """Batch form of ``embed_text``: the ``embed`` callable of ``SemanticChunker``."""
    return [embed_text(text) for text in texts]


def topic_sentence(rng: random.Random, topic: str) -> str:
    a, b, c = rng.sample(TOPICS[topic], 3)
    return rng.choice(_TEMPLATES).format(a=a.capitalize(), b=b, c=c)


def topic_document(topics: Sequence[str], sentences: int, seed: int = 0) -> tuple[str, list[int]]:
    """A text of ``sentences`` sentences per topic, and the offsets where topics 2.. start."""
    rng = random.Random(seed)
    text = ""
    shifts = []
    for number, topic in enumerate(topics):
        if number:
            shifts.append(len(text))
        text += "".join(topic_sentence(rng, topic) + " " for _ in range(sentences))
    return text, shifts


def llama_index_topic_embedding() -> Any:
    """``embed_text`` as a LlamaIndex ``BaseEmbedding`` (imported here to keep core tests light)."""
    from llama_index.core.embeddings import BaseEmbedding

    class TopicEmbedding(BaseEmbedding):
        def _get_text_embedding(self, text: str) -> list[float]:
            return embed_text(text)

        def _get_query_embedding(self, query: str) -> list[float]:
            return embed_text(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return embed_text(query)

    return TopicEmbedding(model_name="topic", embed_batch_size=64)


def langchain_topic_embeddings() -> Any:
    """``embed_text`` as LangChain ``Embeddings``."""
    from langchain_core.embeddings import Embeddings

    class TopicEmbeddings(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            return topic_embed(texts)

        def embed_query(self, text: str) -> list[float]:
            return embed_text(text)

    return TopicEmbeddings()
