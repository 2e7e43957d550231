import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import RawClient, ServerProcess  # noqa: E402


@pytest.fixture
def server(request):
    """The real server; @pytest.mark.server_args(...) adds options (load-style
    tests pass --rate 0 --max-per-ip 0, as the benchmark does)."""
    marker = request.node.get_closest_marker("server_args")
    process = ServerProcess(*(marker.args if marker else ()))
    yield process
    process.cleanup()


@pytest.fixture
def raw_client():
    """raw_client(port, nick) -> RawClient that has seen its own join (no
    hello when nick is None); every client is closed at teardown."""
    clients = []

    def make(port, nick=None):
        client = RawClient(port, nick)
        clients.append(client)
        if nick is not None:
            client.expect({"type": "join", "nick": nick})
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def connect(server, raw_client):
    """connect(nick) -> RawClient on the test's server."""
    return lambda nick=None: raw_client(server.port, nick)


@pytest.fixture(params=["curses", "ansi"])
def ui(request):
    return request.param


@pytest.fixture
def terminal(server, ui):
    """terminal(nick, **options) -> TerminalClient on the test's server."""
    from tests.terminal import TerminalClient

    started = []

    def make(nick, port=None, **options):
        term = TerminalClient(nick, port or server.port, ui, **options)
        started.append(term)
        return term

    yield make
    for term in started:
        term.close()
