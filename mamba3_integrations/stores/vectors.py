"""Validation and text encoding of embeddings before they reach PostgreSQL."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mamba3_integrations.errors import InputError


def as_matrix(
    embeddings: Sequence[Sequence[float] | np.ndarray | None], dimension: int, ids: Sequence[str]
) -> np.ndarray:
    """Stack embeddings into a float32 ``(rows, dimension)`` matrix, naming the first bad row."""
    try:
        matrix = np.asarray(embeddings, dtype=np.float32)
    except (TypeError, ValueError):
        matrix = None
    well_formed = matrix is not None and matrix.shape == (len(ids), dimension)
    if well_formed and np.isfinite(matrix).all():
        return matrix
    for id_, embedding in zip(ids, embeddings, strict=True):
        as_vector(embedding, dimension, f"embedding of record {id_!r}")
    raise InputError(f"Embeddings must form a ({len(ids)}, {dimension}) matrix of numbers.")


def as_vector(values: Sequence[float] | np.ndarray | None, dimension: int, what: str) -> np.ndarray:
    """One float32 vector of ``dimension`` finite values, or an :class:`InputError` naming it."""
    if values is None:
        raise InputError(f"The {what} is missing; every record needs an embedding.")
    try:
        vector = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise InputError(f"The {what} is not a list of numbers: {error}.") from None
    if vector.ndim != 1 or vector.shape[0] != dimension:
        size = vector.shape[0] if vector.ndim == 1 else f"shape {vector.shape}"
        raise InputError(
            f"The {what} has {size} values but the collection stores vectors of dimension "
            f"{dimension}; embed with the model the collection was created for, or use another "
            "collection."
        )
    if not np.isfinite(vector).all():
        raise InputError(f"The {what} contains NaN or infinite values.")
    return vector


def to_pgvector_text(vector: np.ndarray) -> str:
    """pgvector's text form, ``[1.0,2.5,...]``, for use as a ``%s::vector`` parameter."""
    return "[" + ",".join(map(repr, vector.tolist())) + "]"
