"""What the server keeps between turns of its loop: owns the rhythm of the
``--db`` store (a turn's writes committed before that turn's output goes
out, so a chat whose echo reached its sender survives a crash; users told
once when history cannot be kept, or can again; old rows trimmed in small
steps, also on an idle server) and the ``--state`` file's saver.

The store does the SQL (termchat/store/sqlite.py), the saver the file
(termchat/world/files.py); this module only says when."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from termchat.world.files import StateSaver

TRIM_AGAIN = 0.1    # seconds to the next trimming step while rows are left to trim
TRIM_EVERY = 1.0    # ...and between looks when nothing was left


class StateKeeper:
    """The store and the world's saver, stepped by the loop."""

    def __init__(self, store: Any = None, world_state: Any = None,
                 state_file: Path | None = None) -> None:
        self.store = store
        self.world_state = world_state
        self.saver = StateSaver(world_state, state_file) if world_state and state_file \
            else None
        self.next_trim = 0.0

    @property
    def pending(self) -> bool:
        """Writes of this turn that must be committed before output is sent."""
        return self.store is not None and self.store.pending

    def end_turn(self, core: Any, now: float) -> None:
        """Commit, pass on the store's news, trim if due; save the world if due."""
        store = self.store
        if store is not None:
            if self.world_state is not None:
                store.keep_world(*self.world_state.take_changes())
            store.commit()
            for news in store.take_news():
                core.tell_everyone(news, now)
            if now >= self.next_trim:
                self.next_trim = now + (TRIM_AGAIN if store.trim(time.time()) else TRIM_EVERY)
        if self.saver:
            self.saver.save_if_due(now)

    def commit(self, core: Any) -> None:
        """Before output is written: what it reports must be kept first."""
        if self.pending:
            self.end_turn(core, time.monotonic())

    def next_due(self) -> float | None:
        """When end_turn next has something to do with nobody talking."""
        due = [t for t in (self.saver.due if self.saver else None,
                           self.next_trim if self.store is not None else None) if t is not None]
        return min(due) if due else None

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
        if self.saver:
            self.saver.save()
