"""A deterministic local embedding for tests: hashed bag of words, L2-normalised.

Texts sharing words get similar vectors, so retrieval results are meaningful and predictable.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

DIMENSION = 64


def hash_embed(text: str, dimension: int = DIMENSION) -> list[float]:
    """Sum of one signed unit per word, at a position chosen by the word's hash."""
    vector = np.zeros(dimension)
    for word in re.findall(r"\w+", text.lower()):
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        value = int.from_bytes(digest, "little")
        vector[value % dimension] += 1.0 if (value >> 32) & 1 else -1.0
    norm = np.linalg.norm(vector)
    if norm == 0:
        vector[0] = 1.0
        norm = 1.0
    return (vector / norm).tolist()
