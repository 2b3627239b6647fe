"""Shared fixtures: a throw-away RabbitMQ vhost and a private SoftHSM2 token per test run."""

pytest_plugins = ["tests.fixtures_broker", "tests.fixtures_keystore"]
