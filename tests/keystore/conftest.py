"""Until the lead lists tests.fixtures_keystore in tests/conftest.py, load it from here."""

from tests.fixtures_keystore import *  # noqa: F403
