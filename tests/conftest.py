"""Shared fixtures: a throw-away RabbitMQ vhost, a private SoftHSM2 token and a CA per test run."""

pytest_plugins = [
    "tests.fixtures_broker",
    "tests.fixtures_keystore",
    "tests.fixtures_ca",
    "tests.fixtures_web",
]
