"""Distance functions: pgvector operator, operator class and the similarity reported to callers."""

from __future__ import annotations

from enum import Enum

from psycopg import sql

from mamba3_integrations.errors import InputError

_ALIASES = {
    "cosine": "cosine",
    "l2": "l2",
    "euclidean": "l2",
    "euclidean_distance": "l2",
    "inner_product": "inner_product",
    "max_inner_product": "inner_product",
    "ip": "inner_product",
    "dot": "inner_product",
    "dot_product": "inner_product",
}
_OPERATORS = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
_OPERATOR_CLASSES = {
    "cosine": "vector_cosine_ops",
    "l2": "vector_l2_ops",
    "inner_product": "vector_ip_ops",
}


class Distance(str, Enum):
    """How vectors are compared; every search reports a similarity where higher is closer.

    - ``COSINE``: similarity = 1 - cosine distance = cosine similarity, in [-1, 1].
    - ``L2``: similarity = 1 / (1 + euclidean distance), in (0, 1].
    - ``INNER_PRODUCT``: similarity = the inner product itself (pgvector's ``<#>`` negated).
    """

    COSINE = "cosine"
    L2 = "l2"
    INNER_PRODUCT = "inner_product"

    @classmethod
    def parse(cls, value: Distance | str) -> Distance:
        """Accept a member or a name: ``"cosine"``, ``"euclidean"``, ``"max_inner_product"``..."""
        if isinstance(value, Distance):
            return value
        name = str(getattr(value, "value", value)).strip().lower()
        if name not in _ALIASES:
            raise InputError(
                f"Unknown distance {value!r}; use one of 'cosine', 'l2' (or 'euclidean'), "
                "'inner_product' (or 'max_inner_product')."
            )
        return cls(_ALIASES[name])

    @property
    def operator(self) -> sql.SQL:
        """The pgvector operator whose ascending order is nearest first."""
        return sql.SQL(_OPERATORS[self.value])

    @property
    def operator_class(self) -> sql.SQL:
        """The index operator class matching :attr:`operator`."""
        return sql.SQL(_OPERATOR_CLASSES[self.value])

    def similarity(self, distance: float) -> float:
        """Turn the value of :attr:`operator` into the similarity reported to callers."""
        if self is Distance.COSINE:
            return 1.0 - distance
        if self is Distance.L2:
            return 1.0 / (1.0 + distance)
        return -distance
