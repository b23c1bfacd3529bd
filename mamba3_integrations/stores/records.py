"""Rows of a collection as plain dataclasses, shared by the core and both framework faces."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class Record:
    """One row: a unique id, its embedding, the text it embeds and JSON metadata.

    ``document_id`` groups the chunks of one source document so they can be deleted together.
    ``embedding`` is ``None`` in read results unless embeddings were asked for.
    """

    id: str
    embedding: Sequence[float] | np.ndarray | None = None
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    document_id: str | None = None


@dataclass(frozen=True, slots=True)
class ScoredRecord:
    """A search hit: the record and its score, where a higher score always means more relevant."""

    record: Record
    score: float
