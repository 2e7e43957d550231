"""Fixtures of the terminal tests (the shared ones are in tests/conftest.py)."""

import pytest

from tests.terminal import TerminalClient


@pytest.fixture
def pty_client(ui):
    """pty_client(nick, port, **options) -> TerminalClient on a port the test
    provides (a scripted server): no real server is started for it."""
    started = []

    def make(nick, port, **options):
        started.append(TerminalClient(nick, port, ui, **options))
        return started[-1]

    yield make
    for term in started:
        term.close()
