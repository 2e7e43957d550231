"""The client, started ahead of the test that will use it.

    python tests/terminal/launcher.py

runs in the pseudo-terminal the test will read, imports chat_client (the
interpreter's start and the imports are most of a client's start-up: about
0.2 s, while the previous test runs), then waits to be told its command
line: it turns the terminal's echo off, writes READY, reads one line of
JSON (the arguments after `chat_client.py`), puts the terminal's modes back
as they were and runs chat_client.main, as `python chat_client.py ARGS`
does.  tests/terminal/__init__.py (SpareClient) drives it.
"""

import json
import os
import sys
import termios
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
READY = b"\x1b]0;launcher ready\x07"  # a window title: a terminal draws nothing for it


def command_line() -> list[str]:
    modes = termios.tcgetattr(0)
    quiet = list(modes)
    quiet[3] &= ~(termios.ECHO | termios.ECHONL)  # the line is not shown on the screen
    termios.tcsetattr(0, termios.TCSANOW, quiet)
    os.write(1, READY)
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 4096)
        if not chunk:
            sys.exit("launcher: the terminal closed before the command line came")
        line += chunk
    termios.tcsetattr(0, termios.TCSANOW, modes)
    return json.loads(line)


if __name__ == "__main__":
    sys.path[0] = str(ROOT)  # as for `python chat_client.py`: the script's folder first
    import chat_client

    arguments = command_line()
    sys.argv = [str(ROOT / "chat_client.py"), *arguments]
    sys.exit(chat_client.main(arguments))
