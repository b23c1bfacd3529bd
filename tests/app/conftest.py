"""The app tests share the pgvector tests' embedded server fixture."""

from tests.stores.conftest import postgres  # noqa: F401  (a fixture, used by name)
