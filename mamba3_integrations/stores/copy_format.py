"""Encode rows in PostgreSQL's binary ``COPY`` format, with embeddings in pgvector's wire format.

A binary stream is a fixed header, then per row a 16-bit field count and, per field, a 32-bit
length (-1 for NULL) followed by the field's binary representation; a 16-bit -1 ends it. A
``vector`` is a 16-bit dimension, 16 unused bits and big-endian float32 values; a ``jsonb`` is a
version byte (1) followed by the JSON text.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np

COLUMNS = ("id", "document_id", "text", "metadata", "embedding")
"""Column order of every encoded row."""

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
_TRAILER = struct.pack("!h", -1)
_FIELD_COUNT = struct.pack("!h", len(COLUMNS))
_NULL = struct.pack("!i", -1)
_LENGTH = struct.Struct("!i")
_JSONB_VERSION = b"\x01"


def encode_rows(
    ids: Sequence[str],
    document_ids: Sequence[str | None],
    texts: Sequence[str],
    metadata_json: Sequence[str],
    embeddings: np.ndarray,
) -> bytes:
    """One complete binary COPY stream for the rows given column by column."""
    vectors = _vector_fields(embeddings)
    parts: list[bytes | memoryview] = [_HEADER]
    for row, (id_, document_id, text, metadata) in enumerate(
        zip(ids, document_ids, texts, metadata_json, strict=True)
    ):
        parts.append(_FIELD_COUNT)
        parts.append(_text(id_))
        parts.append(_NULL if document_id is None else _text(document_id))
        parts.append(_text(text))
        payload = metadata.encode()
        parts.append(_LENGTH.pack(len(payload) + 1) + _JSONB_VERSION + payload)
        parts.append(vectors[row].data)
    parts.append(_TRAILER)
    return b"".join(parts)


def _text(value: str) -> bytes:
    payload = value.encode()
    return _LENGTH.pack(len(payload)) + payload


def _vector_fields(embeddings: np.ndarray) -> np.ndarray:
    """Per row, the field length then the pgvector binary value, as one uint8 matrix."""
    rows, dimension = embeddings.shape
    value_size = 4 + 4 * dimension
    fields = np.empty((rows, 4 + value_size), dtype=np.uint8)
    fields[:, :4] = np.frombuffer(_LENGTH.pack(value_size), dtype=np.uint8)
    fields[:, 4:8] = np.frombuffer(struct.pack("!HH", dimension, 0), dtype=np.uint8)
    big_endian = np.ascontiguousarray(embeddings, dtype=">f4")
    fields[:, 8:] = big_endian.view(np.uint8).reshape(rows, 4 * dimension)
    return fields
