import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import RawClient, ServerProcess  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """The servers and clients the tests start (hundreds of processes) each
    compile the project's modules unless they may keep the bytecode: here
    they keep it in a folder of the run's own, removed at its end, even
    where PYTHONDONTWRITEBYTECODE is set, so that a start costs its imports
    only and the working tree stays as it was."""
    folder = tempfile.mkdtemp(prefix="termchat_tests_pyc_")
    config.stash[BYTECODE_FOLDER] = folder
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = folder


def pytest_unconfigure(config: pytest.Config) -> None:
    folder = config.stash.get(BYTECODE_FOLDER, None)
    if folder:
        shutil.rmtree(folder, ignore_errors=True)


BYTECODE_FOLDER = pytest.StashKey[str]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Two at a time (``-n 2``, with ``--dist loadgroup`` from pyproject), the
    cluster tests still run one after another, in one worker: each starts a
    Redis and two or three nodes beating every 0.2 s (a node is dead after
    three missed beats), and two such clusters (the chaos run's 200 clients
    beside a Redis restart) on two cores would be timing each other."""
    for item in items:
        if item.nodeid.startswith("tests/cluster/"):
            item.add_marker(pytest.mark.xdist_group("cluster"))


def server_options(item: pytest.Item) -> tuple[str, ...]:
    marker = item.get_closest_marker("server_args")
    return tuple(marker.args) if marker else ()


@pytest.fixture
def server(request):
    """The real server; @pytest.mark.server_args(...) adds options (load-style
    tests pass --rate 0 --max-per-ip 0, as the benchmark does)."""
    process = ServerProcess(*server_options(request.node))
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
