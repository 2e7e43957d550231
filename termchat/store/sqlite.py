"""A single server's database (``--db FILE``): SQLite in WAL mode.

Owns the file and every line of SQL.  It keeps the event log's entries (room
history, and what each session may still replay), the server's users and
their sessions (never a token: its digest), the bans, and the world's state.
The core's components call the Store port (termchat.core.ports) as their
state changes; each call only queues a write, and :meth:`SqliteStore.commit`
writes a loop turn's worth in one transaction, before that turn's output is
sent, so what a sender saw echoed survives a SIGKILL.

At start-up :func:`open_store` refuses, in one line and without changing
it, a file that is not a database, not this server's, damaged, from a newer
version, or in use by another server; an older version is migrated.  A
write that fails (a full disk) is logged once, users are told once that
history is not being kept, and the chat goes on in memory; the store tries
again every RETRY_SECONDS and says when it keeps history again.  Old rows go
in small steps (:meth:`SqliteStore.trim`): at most ``keep`` messages a room,
nothing older than ``keep_days``.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from typing import Any

from termchat.core.eventlog import LogEntry
from termchat.core.ports import Saved
from termchat.wire import protocol as proto

log = logging.getLogger("chat_server")

APPLICATION_ID = 0x54434854   # "TCHT": this file is a termchat database
SCHEMA_VERSION = 1
RETRY_SECONDS = 30.0          # after a failed write, try again this often
TRIM_STEP = 200               # rows deleted at most per trim, so nobody feels it
CHECKPOINT_SECONDS = 2.0      # the write-ahead log is folded into the file this often,
# by a thread of its own: its syncs never stall the loop
LOADED_ENTRIES = 200_000      # the newest entries read back at start (the log's bound)

MIGRATIONS: dict[int, tuple[str, ...]] = {  # version -> the statements that make it
    1: (
        """CREATE TABLE entries (
               number INTEGER PRIMARY KEY,
               time REAL NOT NULL,
               kind TEXT NOT NULL,          -- 'all', 'room' or 'dm'
               target TEXT,                 -- a room key; a DM's parties' name keys, \\n apart
               mover TEXT, old TEXT, new TEXT,  -- the exit of a move: who, from, to
               said INTEGER NOT NULL,       -- 1: a chat or an emote (a room's history)
               packet BLOB NOT NULL)        -- the payload base clients get""",
        "CREATE INDEX entries_said ON entries (target, number) WHERE said = 1",
        """CREATE TABLE users (
               key TEXT PRIMARY KEY, nick TEXT NOT NULL, room TEXT NOT NULL,
               digest TEXT, start INTEGER NOT NULL)""",
        "CREATE TABLE bans (address TEXT PRIMARY KEY, until REAL NOT NULL, reason TEXT NOT NULL)",
        "CREATE TABLE players (player TEXT PRIMARY KEY, place TEXT NOT NULL, seen INTEGER NOT NULL)",
        "CREATE TABLE items (item TEXT PRIMARY KEY, place TEXT, holder TEXT)",
    ),
}


class Refused(ValueError):
    """The file cannot be this server's database (the reason, in words)."""


def open_store(path: str, keep: int = 10_000, keep_days: float = 30.0) -> "SqliteStore":
    """The database at ``path`` (made if it does not exist), checked, locked
    for this process and migrated; Refused saying why if it cannot be used."""
    lock = lock_file(path)
    try:
        connection = connect(path)
        version = check(connection, path)
        migrate(connection, version)
    except BaseException:
        os.close(lock)
        raise
    store = SqliteStore(connection, lock, keep, keep_days)
    store.checkpointer = Checkpointer(path)
    return store


class Checkpointer:
    """Folds the write-ahead log into the database every CHECKPOINT_SECONDS,
    on a connection and a thread of its own (SQLite lets the loop go on
    writing meanwhile): the syncs a checkpoint needs never stall the chat."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="checkpointer", daemon=True)
        self.thread.start()

    def run(self) -> None:
        db = connect(self.path)
        try:
            while not self.stopping.wait(CHECKPOINT_SECONDS):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # a failing disk: the loop's writes say so
        finally:
            db.close()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(5)


def lock_file(path: str) -> int:
    """An exclusive lock on the file for as long as the server runs: a
    second server on it is refused."""
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise Refused(f"cannot open the database {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise Refused(f"the database {path} is in use by another server") from None
    return descriptor


def connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA busy_timeout = 2000")
    return connection


def check(connection: sqlite3.Connection, path: str) -> int:
    """The file's schema version (0: a new, empty file); Refused for a file
    that is not a database of this server, is damaged, or is newer.
    Nothing is written."""
    try:
        application, = connection.execute("PRAGMA application_id").fetchone()
        version, = connection.execute("PRAGMA user_version").fetchone()
        tables = connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if application == 0 and version == 0 and tables == 0:
            return 0  # a new (or empty) file: ours to make
        if application != APPLICATION_ID:
            raise Refused(f"{path} is not a termchat database (an SQLite file of something "
                          "else)")
        if version > SCHEMA_VERSION:
            raise Refused(f"the database {path} is from a newer termchat (schema {version}; "
                          f"this one knows up to {SCHEMA_VERSION})")
        problems = connection.execute("PRAGMA quick_check").fetchall()
        if problems != [("ok",)]:
            raise Refused(f"the database {path} is damaged: {problems[0][0][:200]}")
    except sqlite3.DatabaseError as exc:
        raise Refused(f"{path} is not a termchat database ({exc})") from None
    return version


def migrate(connection: sqlite3.Connection, version: int) -> None:
    """From the file's version up to ours, each step in one transaction."""
    if version == 0:
        connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = NORMAL")  # a commit survives a crash of the
    # process; only the operating system's crash may lose the last ones
    connection.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
    for step in range(version + 1, SCHEMA_VERSION + 1):
        connection.execute("BEGIN IMMEDIATE")
        for statement in MIGRATIONS[step]:
            connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {step}")
        connection.execute("COMMIT")


class SqliteStore:
    """Writes queued by the core, committed once a turn; reads for start-up
    and for history on demand."""

    def __init__(self, connection: sqlite3.Connection, lock: int, keep: int,
                 keep_days: float) -> None:
        self.db = connection
        self.lock = lock
        self.keep, self.keep_days = keep, keep_days
        self.entries: list[tuple] = []
        self.users: dict[str, tuple | None] = {}   # key -> row (None: gone)
        self.bans: dict[str, tuple | None] = {}    # address -> row (None: lifted)
        self.world: tuple[dict, dict] | None = None
        self.failing_since: float | None = None    # writes fail (a full disk, say)
        self.news: list[str] = []                  # for the users: history kept or not
        self.said_counts: dict[str, int] = dict(connection.execute(
            "SELECT target, count(*) FROM entries WHERE said = 1 GROUP BY target"))
        self.checkpointer: Checkpointer | None = None

    # ---- the Store port: queued writes ----

    def entry(self, entry: LogEntry, packet: bytes) -> None:
        target = entry.target
        if target is None:
            kind, where = "all", None
        elif isinstance(target, str):
            kind, where = "room", target
        else:
            kind, where = "dm", "\n".join(sorted(target))
        said = isinstance(entry.message, (proto.ChatFrom, proto.EmoteFrom)) and kind == "room"
        self.entries.append((entry.number, entry.time, kind, where, entry.mover, entry.old,
                             entry.new, int(said), packet[proto.HEADER_SIZE:]))

    def user(self, key: str, nick: str, room: str, digest: str | None, start: int) -> None:
        self.users[key] = (key, nick, room, digest, start)

    def user_gone(self, key: str) -> None:
        self.users[key] = None

    def ban(self, address: str, seconds: float, reason: str) -> None:
        self.bans[address] = (address, time.time() + seconds, reason)

    def unban(self, address: str) -> None:
        self.bans[address] = None

    def keep_world(self, players: dict, items: dict) -> None:
        """World mode's changes (WorldState.take_changes()), for this turn."""
        if players or items:
            old_players, old_items = self.world or ({}, {})
            self.world = ({**old_players, **players}, {**old_items, **items})

    @property
    def pending(self) -> bool:
        return bool(self.entries or self.users or self.bans or self.world)

    # ---- writing ----

    def commit(self) -> None:
        """Write what this turn changed, in one transaction (or, while
        writes fail, keep the chat going in memory and try again later)."""
        if not self.pending:
            return
        if self.failing_since is not None and \
                time.monotonic() - self.failing_since < RETRY_SECONDS:
            self.forget_pending()
            return
        try:
            self.db.execute("BEGIN")
            self.write()
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback()
            self.forget_pending()
            if self.failing_since is None:
                log.error("cannot write the database (%s); history is not being kept until "
                          "it can be", exc)
                self.news.append("the server cannot write its database: history is not "
                                 "being kept for now")
            self.failing_since = time.monotonic()
            return
        self.forget_pending()
        if self.failing_since is not None:
            self.failing_since = None
            log.warning("the database is written again")
            self.news.append("the server keeps history again")

    def write(self) -> None:
        db = self.db
        if self.entries:
            db.executemany("INSERT INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", self.entries)
            for row in self.entries:
                if row[7]:
                    self.said_counts[row[3]] = self.said_counts.get(row[3], 0) + 1
        for table, rows, key in (("users", self.users, "key"), ("bans", self.bans, "address")):
            gone = [(name,) for name, row in rows.items() if row is None]
            kept = [row for row in rows.values() if row is not None]
            if gone:
                db.executemany(f"DELETE FROM {table} WHERE {key} = ?", gone)
            if kept:
                marks = ", ".join("?" * len(kept[0]))
                db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", kept)
        if self.world is not None:
            self.write_world(*self.world)

    def write_world(self, players: dict, items: dict) -> None:
        db = self.db
        seen = time.monotonic_ns()
        db.executemany("DELETE FROM players WHERE player = ?",
                       [(p,) for p, place in players.items() if place is None])
        db.executemany("INSERT OR REPLACE INTO players VALUES (?, ?, ?)",
                       [(p, place, seen + i) for i, (p, place) in enumerate(players.items())
                        if place is not None])
        db.executemany("INSERT OR REPLACE INTO items VALUES (?, ?, ?)",
                       [(item, place, holder) for item, (place, holder) in items.items()])

    def rollback(self) -> None:
        try:
            self.db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def forget_pending(self) -> None:
        self.entries, self.users, self.bans, self.world = [], {}, {}, None

    def take_news(self) -> list[str]:
        """What users should be told about the database (once each)."""
        news, self.news = self.news, []
        return news

    def trim(self, now_unix: float) -> int:
        """A small step of retention: rows older than keep_days, then a room's
        messages past its keep; returns how many went."""
        if self.failing_since is not None:
            return 0
        try:
            self.db.execute("BEGIN")
            aged = self.db.execute(  # the oldest by number are the oldest by time
                "DELETE FROM entries WHERE number IN (SELECT number FROM entries "
                "ORDER BY number LIMIT ?) AND time < ? RETURNING target, said",
                (TRIM_STEP, now_unix - self.keep_days * 86400)).fetchall()
            for room, said in aged:
                if said:
                    self.said_counts[room] -= 1
            gone = len(aged)
            for room, count in list(self.said_counts.items()):
                if gone >= TRIM_STEP:
                    break
                if count > self.keep:
                    step = min(count - self.keep, TRIM_STEP - gone)
                    gone += self.db.execute(
                        "DELETE FROM entries WHERE number IN (SELECT number FROM entries "
                        "WHERE said = 1 AND target = ? ORDER BY number LIMIT ?)",
                        (room, step)).rowcount
                    self.said_counts[room] = count - step
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback()
            log.warning("could not trim the database: %s", exc)
            return 0
        return gone

    # ---- reading ----

    def load(self) -> Saved:
        """What the database kept: the newest entries, the users, the bans."""
        db = self.db
        rows = db.execute("SELECT number, time, kind, target, mover, old, new, packet FROM "
                          "entries ORDER BY number DESC LIMIT ?", (LOADED_ENTRIES,)).fetchall()
        entries = [entry for entry in map(parse_entry, reversed(rows)) if entry is not None]
        last = db.execute("SELECT max(number) FROM entries").fetchone()[0] or 0
        users = db.execute("SELECT key, nick, room, digest, start FROM users").fetchall()
        now = time.time()
        bans = [(address, until - now, reason) for address, until, reason in
                db.execute("SELECT address, until, reason FROM bans") if until > now]
        return Saved(entries, users, bans, last)

    def load_world(self) -> dict | None:
        """The world's state in WorldState.to_data()'s form (None: never saved)."""
        db = self.db
        players = db.execute("SELECT player, place FROM players ORDER BY seen").fetchall()
        items = db.execute("SELECT item, place, holder FROM items").fetchall()
        if not players and not items:
            return None
        carried: dict[str, list[str]] = {}
        for item, _, holder in items:
            if holder is not None:
                carried.setdefault(holder, []).append(item)
        return {"players": dict(players), "carried": carried,
                "items": {item: place for item, place, holder in items if holder is None}}

    def older(self, room: str, before: int, limit: int) -> tuple[list[LogEntry], bool]:
        """Up to ``limit`` of a room's chats and emotes before ``before``,
        oldest first, and whether older ones are kept."""
        rows = self.db.execute(
            "SELECT number, time, kind, target, mover, old, new, packet FROM entries "
            "WHERE said = 1 AND target = ? AND number < ? ORDER BY number DESC LIMIT ?",
            (room, before, limit + 1)).fetchall()
        found = []
        for row in reversed(rows[:limit]):
            parsed = parse_entry(row)
            if parsed is not None:
                number, when, message, target, size, _ = parsed
                found.append(LogEntry(number, when, message, target, size))
        return found, len(rows) > limit

    def close(self) -> None:
        self.commit()
        if self.checkpointer is not None:
            self.checkpointer.stop()
        try:
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self.db.close()
        os.close(self.lock)


def parse_entry(row: tuple) -> tuple | None:
    """A row back as (number, time, message, target, size, mover)."""
    number, when, kind, where, mover, old, new, packet = row
    try:
        message = proto.parse_server_message(bytes(packet))
    except proto.ProtocolError:
        log.warning("the database holds an entry (%d) this server cannot read; skipped",
                    number)
        return None
    target: Any = None if kind == "all" else where if kind == "room" else \
        frozenset(where.split("\n"))
    return (number, when, message, target, len(packet) + proto.HEADER_SIZE,
            (mover, old, new) if mover is not None else None)
