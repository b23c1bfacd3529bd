"""Errors specific to the pgvector store, all subclasses of :class:`StoreError`."""

from mamba3_integrations.errors import InputError, StoreError


class StoreConnectionError(StoreError):
    """PostgreSQL could not be reached, or the connection kept dropping after retries."""


class SchemaMismatchError(StoreError):
    """An existing table or registry entry does not match the collection that was asked for."""


class InvalidFilterError(InputError, StoreError):
    """A metadata filter uses an unknown operator, an unsafe key or a value of the wrong type."""
