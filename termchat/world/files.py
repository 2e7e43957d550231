"""World mode's files: reading the world and its saved state at start-up,
and saving the state while the server runs (``--state FILE``).

Files are read only if they are regular files of a bounded size (a FIFO
or a device would block start-up; a huge file would fill memory), and
anything wrong with them is a ValueError in one line.  The state is saved
atomically: a temporary file made exclusively beside it (never through a
name someone else prepared), synced, then renamed over the old one.  The
loop only takes a snapshot (copies of three dicts); the JSON is written by
a thread of its own, so a large state never stalls the chat.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from termchat.args import read_text
from termchat.world import builtin_text
from termchat.world import model

log = logging.getLogger("chat_server")

SAVE_EVERY = 1.0                # seconds between writes of a changing world state
MAX_WORLD_FILE = 16 << 20       # bytes of a world file...
MAX_STATE_FILE = 256 << 20      # ...and of a saved state


def load_world(source: str | None, state_file: str | None) -> model.WorldState | None:
    """The world (and where everything was, from ``state_file`` if it
    exists); ValueError with the file, line and reason if it cannot be used."""
    if not source:
        return None
    if source == "builtin":
        text, source = builtin_text(), "the built-in world"
    else:
        text = read_text(source, "world", MAX_WORLD_FILE)
    world = model.parse_world(text, source)  # a WorldError is a ValueError
    if not state_file or not os.path.lexists(state_file):
        return model.WorldState.fresh(world)
    try:
        data = json.loads(read_text(state_file, "world state", MAX_STATE_FILE))
    except RecursionError:
        raise ValueError(f"cannot read the world state {state_file}: nested too deeply") \
            from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot read the world state {state_file}: not JSON ({exc})") \
            from None
    return model.WorldState.from_data(world, data)


class StateSaver:
    """Saves the world's state to its file at most every SAVE_EVERY seconds
    while it changes, and once more when the server stops.  The loop takes
    a snapshot; the writer thread turns it into JSON and writes it."""

    def __init__(self, state: model.WorldState, path: Path) -> None:
        self.state, self.path = state, path
        self.saved_version = state.version  # what the last snapshot taken holds
        self.last_save = 0.0
        self.complained = False
        self._wanted = threading.Condition()
        self._snapshot: dict | None = None  # the newest snapshot not written yet
        self._busy = False
        self._writer: threading.Thread | None = None

    @property
    def due(self) -> float | None:
        if self.state.version == self.saved_version:
            return None
        return self.last_save + SAVE_EVERY

    def save_if_due(self, now: float) -> None:
        due = self.due
        if due is not None and now >= due:
            self.last_save = now
            self.save_later()

    def save_later(self) -> None:
        """Hand a snapshot to the writer thread (a newer one replaces one
        still waiting)."""
        if self.state.version == self.saved_version:
            return
        self.saved_version = self.state.version
        snapshot = self.state.to_data()
        with self._wanted:
            self._snapshot = snapshot
            self._wanted.notify()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="state-writer",
                                            daemon=True)
            self._writer.start()

    def save(self) -> None:
        """Save now and wait until it is written (when the server stops)."""
        self.save_later()
        with self._wanted:
            while self._snapshot is not None or self._busy:
                self._wanted.wait(0.1)

    def _write_loop(self) -> None:
        while True:
            with self._wanted:
                while self._snapshot is None:
                    self._wanted.wait()
                snapshot, self._snapshot, self._busy = self._snapshot, None, True
            try:
                self._write(snapshot)
            finally:
                with self._wanted:
                    self._busy = False
                    self._wanted.notify_all()

    def _write(self, snapshot: dict) -> None:
        try:
            write_atomically(self.path, json.dumps(snapshot, ensure_ascii=False))
        except OSError as exc:
            if not self.complained:  # once: a full disk would otherwise fill the log too
                log.error("cannot save the world state to %s: %s", self.path,
                          exc.strerror or exc)
                self.complained = True
            return
        self.complained = False


def write_atomically(path: Path, text: str) -> None:
    """Replace the file with text: readers see the old file or the new one.
    The temporary file is created exclusively (O_EXCL, a random name), so a
    link someone put in its place is never followed."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.",
                                             suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)
