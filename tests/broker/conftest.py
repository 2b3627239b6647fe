"""Broker tests use the shared fixtures (also registered by tests/conftest.py as a plugin)."""

from tests.fixtures_broker import broker_vhost  # noqa: F401
