"""Command-line pieces shared by the server and the client: argument
types, the program's name as invoked, --version, and reading the files
given on a command line (secrets, the message of the day, a world)."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from importlib import metadata
from typing import Callable


def program_name() -> str:
    """The name the user typed: chat-client through the console script,
    chat_client.py when run as a file."""
    return os.path.basename(sys.argv[0]) or "chat"


def add_version(parser: argparse.ArgumentParser) -> None:
    try:
        version = metadata.version("termchat")
    except metadata.PackageNotFoundError:  # run from a checkout, not installed
        version = "unknown (not installed)"
    parser.add_argument("--version", action="version", version=f"%(prog)s {version}")


def int_in_range(what: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from low to high (no upper bound if None)."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what} number: {text!r}") from None
        if high is None and value < low:
            raise argparse.ArgumentTypeError(f"{what} must be at least {low}: {value}")
        if high is not None and not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} out of range {low}-{high}: {value}")
        return value

    return convert


def float_at_least(what: str, low: float) -> Callable[[str], float]:
    """An argparse type: a number (fractions allowed) of at least low."""
    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {what}: {text!r}") from None
        if not value >= low or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must be at least {low:g}: {text}")
        return value

    return convert


def first_line_of(path: str, what: str) -> str:
    """A secret from the first line of a file (secrets never go on a command
    line, where every user can read them); ValueError saying why not."""
    try:
        with open(path, encoding="utf-8") as secret:
            line = secret.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the {what} file {path}: "
                         f"{getattr(exc, 'strerror', None) or exc}") from None
    if not line:
        raise ValueError(f"the {what} file {path} is empty")
    return line


def read_text(path: str, what: str, limit: int = 16 << 20) -> str:
    """A regular file's text (at most ``limit`` bytes); ValueError naming the
    file and what it was for."""
    def refused(reason: str) -> ValueError:
        return ValueError(f"cannot read the {what} file {path}: {reason}")

    try:
        with open(path, "rb", opener=lambda name, flags: os.open(name, flags | os.O_NONBLOCK)) \
                as source:
            info = os.fstat(source.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise refused("it is not a regular file")
            if info.st_size > limit:
                raise refused(f"it is larger than {limit >> 20} MiB")
            return source.read(limit + 1).decode("utf-8")
    except OSError as exc:
        raise refused(exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise refused("it is not UTF-8 text") from None
