"""A single server's database (``--db FILE``): SQLite in WAL mode.

Owns the file and every line of SQL.  It keeps the event log's entries (room
history, and what each session may still replay), the server's users and
their sessions (never a token: its digest), the bans, and the world's state.
The core's components call the Store port (termchat.core.ports) as their
state changes; each call only queues a write, and :meth:`SqliteStore.commit`
writes a loop turn's worth in one transaction, before that turn's output is
sent, so what a sender saw echoed survives a SIGKILL.

The log's entries are written a batch at a time: one row of ``batches``
holds a commit's entries as one JSON array (each entry's packet in it as the
JSON it is), and ``said`` says which batches hold a room's chats and emotes,
and how many.  SQLite's cost is per row, so a busy turn costs about what a
quiet one does.  The entries are in memory anyway (the event log): the
batches are read at start-up and for history on demand.  The view
``entries`` shows them one a row, for people with the ``sqlite3`` shell.

At start-up :func:`open_store` refuses, in one line and without changing
it, a file that is not a database, not this server's, damaged, from a newer
version, or in use by another server; an older version is migrated.  A
write that fails (a full disk) is logged once, users are told once that
history is not being kept, and the chat goes on in memory; the store tries
again every RETRY_SECONDS and says when it keeps history again.  Old entries
go in small steps (:meth:`SqliteStore.trim`): the entries older than
``keep_days`` and a room's chats past ``keep`` are taken out of their batches
(a batch left empty goes).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
import time
from collections import Counter
from contextlib import closing
from typing import Any, Iterable

import msgspec

from termchat.core.eventlog import LogEntry
from termchat.core.ports import Saved
from termchat.wire import protocol as proto

log = logging.getLogger("chat_server")

APPLICATION_ID = 0x54434854   # "TCHT": this file is a termchat database
SCHEMA_VERSION = 2
RETRY_SECONDS = 30.0          # after a failed write, try again this often
TRIM_STEP = 200               # entries deleted at most per trim, so nobody feels it
CHECKPOINT_SECONDS = 2.0      # the write-ahead log is folded into the file this often,
# by a thread of its own: its syncs never stall the loop
LOADED_ENTRIES = 200_000      # the newest entries read back at start (the log's bound)
MIGRATED_BATCH = 500          # entries a batch when older files' rows are batched

# An entry in a batch: [number, time, kind, target, mover, old, new, said, packet]
# kind: 'all', 'room' or 'dm'; target: a room key, or a DM's parties' name keys
# \n apart; mover/old/new: the exit of a move (who, from, to); said: 1 for a
# chat or an emote (a room's history); packet: the payload base clients get.
Row = tuple[int, float, str, str | None, str | None, str | None, str | None, int,
            msgspec.Raw]
NUMBER, TIME, TARGET, SAID, PACKET = 0, 1, 3, 7, 8
ENCODER = msgspec.json.Encoder()
BATCH = msgspec.json.Decoder(list[Row])

ENTRIES_VIEW = """CREATE VIEW entries (number, time, kind, target, mover, old, new, said,
                                       packet) AS
    SELECT json_extract(e.value, '$[0]'), json_extract(e.value, '$[1]'),
           json_extract(e.value, '$[2]'), json_extract(e.value, '$[3]'),
           json_extract(e.value, '$[4]'), json_extract(e.value, '$[5]'),
           json_extract(e.value, '$[6]'), json_extract(e.value, '$[7]'),
           json_extract(e.value, '$[8]')
    FROM batches, json_each(CAST(batches.entries AS TEXT)) AS e"""


def batch_the_entries(db: sqlite3.Connection) -> None:
    """Version 2: the rows of ``entries`` (one an entry) become batches."""
    db.execute("""CREATE TABLE batches (
                      first INTEGER PRIMARY KEY,  -- no entry in it is numbered lower
                      last INTEGER NOT NULL,      -- nor higher
                      oldest REAL NOT NULL,       -- its oldest entry's time
                      entries BLOB NOT NULL)      -- a JSON array of entries (see Row)""")
    db.execute("""CREATE TABLE said (
                      room TEXT, first INTEGER, count INTEGER NOT NULL,
                      PRIMARY KEY (room, first)) WITHOUT ROWID""")
    after, skipped = -1, 0
    while True:
        rows = db.execute("SELECT number, time, kind, target, mover, old, new, said, packet "
                          "FROM entries WHERE number > ? ORDER BY number LIMIT ?",
                          (after, MIGRATED_BATCH)).fetchall()
        if not rows:
            break
        after = rows[-1][NUMBER]
        batch = [row[:PACKET] + (msgspec.Raw(bytes(row[PACKET])),) for row in rows
                 if is_json(row[PACKET])]
        skipped += len(rows) - len(batch)
        if batch:
            write_batch(db, batch)
    if skipped:
        log.warning("the database held %d entries this server cannot read; dropped", skipped)
    db.execute("DROP TABLE entries")
    db.execute(ENTRIES_VIEW)


def is_json(packet: bytes) -> bool:
    try:
        msgspec.json.decode(packet)
    except (msgspec.DecodeError, TypeError):
        return False
    return True


MIGRATIONS: dict[int, Any] = {  # version -> the statements (or the function) that make it
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
    2: batch_the_entries,
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
        migrate(connection, version, path)
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
            first_problem = " ".join(str(problems[0][0]).split())  # one line, whatever
            raise Refused(f"the database {path} is damaged: {first_problem[:200]}")
    except sqlite3.DatabaseError as exc:
        raise Refused(f"{path} is not a termchat database ({exc})") from None
    return version


def migrate(connection: sqlite3.Connection, version: int, path: str) -> None:
    """From the file's version up to ours, each step in one transaction (a
    step that fails leaves the file as it was, and is Refused)."""
    try:
        if version == 0:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        connection.execute("PRAGMA journal_mode = WAL")
        connection.execute("PRAGMA synchronous = NORMAL")  # a commit survives a crash of
        # the process; only the operating system's crash may lose the last ones
        connection.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        for step in range(version + 1, SCHEMA_VERSION + 1):
            connection.execute("BEGIN IMMEDIATE")
            try:
                take_step(connection, MIGRATIONS[step])
                connection.execute(f"PRAGMA user_version = {step}")
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        raise Refused(f"cannot bring the database {path} up to schema {SCHEMA_VERSION}: "
                      f"{exc}") from None


def take_step(connection: sqlite3.Connection, make: Any) -> None:
    if callable(make):
        make(connection)
    else:
        for statement in make:
            connection.execute(statement)


def write_batch(db: sqlite3.Connection, rows: list[tuple]) -> Counter:
    """Entries (rows in number order) as one batch; returns how many chats
    and emotes each room got."""
    first = rows[0][NUMBER]
    db.execute("INSERT INTO batches VALUES (?, ?, ?, ?)",
               (first, rows[-1][NUMBER], min(row[TIME] for row in rows), ENCODER.encode(rows)))
    said = said_per_room(rows)
    if said:
        db.executemany("INSERT INTO said VALUES (?, ?, ?)",
                       [(room, first, count) for room, count in said.items()])
    return said


def said_per_room(rows: list[tuple]) -> Counter:
    return Counter(row[TARGET] for row in rows if row[SAID])


SAID_TYPES = (proto.ChatFrom, proto.EmoteFrom)  # in a room: its history


def batch_rows(entries: list[tuple[LogEntry, bytes]]) -> list[tuple]:
    """Logged entries and their packets as a batch's rows (see Row); one
    loop for a turn's worth, as it runs for every chat."""
    rows: list[tuple] = []
    add, raw, header = rows.append, msgspec.Raw, proto.HEADER_SIZE
    for entry, packet in entries:
        target = entry.target
        if isinstance(target, str):
            kind, where, said = "room", target, int(isinstance(entry.message, SAID_TYPES))
        elif target is None:
            kind, where, said = "all", None, 0
        else:
            kind, where, said = "dm", "\n".join(sorted(target)), 0
        add((entry.number, entry.time, kind, where, entry.mover, entry.old, entry.new, said,
             raw(packet[header:])))  # (a copy of the payload: cheaper than a view's Raw)
    return rows


class SqliteStore:
    """Writes queued by the core, committed once a turn; reads for start-up
    and for history on demand."""

    def __init__(self, connection: sqlite3.Connection, lock: int, keep: int,
                 keep_days: float) -> None:
        self.db = connection
        self.lock = lock
        self.keep, self.keep_days = keep, keep_days
        self.entries: list[tuple[LogEntry, bytes]] = []  # this turn's, and packets
        self.users: dict[str, tuple | None] = {}   # key -> row (None: gone)
        self.bans: dict[str, tuple | None] = {}    # address -> row (None: lifted)
        self.world: tuple[dict, dict] | None = None
        self.failing_since: float | None = None    # writes fail (a full disk, say)
        self.news: list[str] = []                  # for the users: history kept or not
        self.said_counts: dict[str, int] = dict(connection.execute(
            "SELECT room, sum(count) FROM said GROUP BY room"))
        self.checkpointer: Checkpointer | None = None

    # ---- the Store port: queued writes ----

    def entry(self, entry: LogEntry, packet: bytes) -> None:
        """Called for every chat: only queued here, made a row at commit
        (an entry does not change once logged)."""
        self.entries.append((entry, packet))

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
            said = self.write()
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
        for room, count in said.items():
            self.said_counts[room] = self.said_counts.get(room, 0) + count
        if self.failing_since is not None:
            self.failing_since = None
            log.warning("the database is written again")
            self.news.append("the server keeps history again")

    def write(self) -> Counter:
        """This turn's writes (inside commit's transaction); returns the
        chats and emotes each room got."""
        db = self.db
        said = write_batch(db, batch_rows(self.entries)) if self.entries else Counter()
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
        return said

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

    # ---- retention ----

    def trim(self, now_unix: float) -> int:
        """A small step of retention: the entries older than keep_days, then
        a room's chats and emotes past its keep; returns how many went."""
        if self.failing_since is not None:
            return 0
        try:
            self.db.execute("BEGIN")
            gone = self.trim_aged(now_unix - self.keep_days * 86400)
            for room, count in list(self.said_counts.items()):
                if gone >= TRIM_STEP:
                    break
                if count > self.keep:
                    gone += self.trim_room(room, count - self.keep, TRIM_STEP - gone)
            self.db.execute("COMMIT")
        except sqlite3.Error as exc:
            self.rollback()
            log.warning("could not trim the database: %s", exc)
            return 0
        return gone

    def trim_aged(self, bound: float) -> int:
        """The entries older than ``bound`` out of the oldest batches, about
        TRIM_STEP entries' worth (at least one batch)."""
        gone = 0
        for first, blob in self.db.execute(
                "SELECT first, entries FROM batches WHERE first IN (SELECT first FROM batches "
                "ORDER BY first LIMIT ?) AND oldest < ? ORDER BY first",
                (TRIM_STEP, bound)).fetchall():
            rows = decode_batch(blob, first)
            gone += self.rewrite(first, rows, [row for row in rows if row[TIME] >= bound])
            if gone >= TRIM_STEP:
                break
        return gone

    def trim_room(self, room: str, excess: int, step: int) -> int:
        """The room's oldest chats and emotes past its keep (``excess``) out
        of their batches, about ``step`` of them (at least one batch): all
        of them that a batch holds once it is read, as rewriting it costs
        the same however many go."""
        left = excess
        for first, blob in self.db.execute(
                "SELECT first, entries FROM said JOIN batches USING (first) "
                "WHERE said.room = ? ORDER BY first LIMIT ?", (room, step)).fetchall():
            rows, kept = decode_batch(blob, first), []
            for row in rows:
                if left and row[SAID] and row[TARGET] == room:
                    left -= 1
                else:
                    kept.append(row)
            self.rewrite(first, rows, kept)
            if not left or excess - left >= step:
                break
        return excess - left

    def rewrite(self, first: int, rows: list[tuple], kept: list[tuple]) -> int:
        """The batch ``first`` holding only ``kept`` of its ``rows`` (gone
        if none), and ``said`` saying so; returns how many went."""
        if len(kept) == len(rows) and rows:
            return 0
        if kept:
            self.db.execute("UPDATE batches SET oldest = ?, entries = ? WHERE first = ?",
                            (min(row[TIME] for row in kept), ENCODER.encode(kept), first))
        else:
            self.db.execute("DELETE FROM batches WHERE first = ?", (first,))
        left = said_per_room(kept)
        for room, count in said_per_room(rows).items():
            if left[room]:
                self.db.execute("UPDATE said SET count = ? WHERE room = ? AND first = ?",
                                (left[room], room, first))
            else:
                self.db.execute("DELETE FROM said WHERE room = ? AND first = ?", (room, first))
            self.said_counts[room] -= count - left[room]
        return len(rows) - len(kept)

    # ---- reading ----

    def load(self) -> Saved:
        """What the database kept: the newest entries, the users, the bans."""
        db = self.db
        batches: list[list[tuple]] = []
        count = 0
        with closing(db.execute("SELECT first, entries FROM batches ORDER BY first DESC")) \
                as newest_first:
            for first, blob in newest_first:
                batches.append(decode_batch(blob, first))
                count += len(batches[-1])
                if count >= LOADED_ENTRIES:
                    break
        rows = [row for batch in reversed(batches) for row in batch][-LOADED_ENTRIES:]
        entries = [entry for entry in map(parse_entry, rows) if entry is not None]
        last = db.execute("SELECT max(last) FROM batches").fetchone()[0] or 0
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
        found: list[LogEntry] = []
        with closing(self.db.execute(
                "SELECT first, entries FROM said JOIN batches USING (first) "
                "WHERE said.room = ? AND first < ? ORDER BY first DESC",
                (room, before))) as newest_first:
            for first, blob in newest_first:
                for row in reversed(decode_batch(blob, first)):
                    if row[NUMBER] < before and row[SAID] and row[TARGET] == room:
                        if len(found) == limit:
                            return found[::-1], True
                        parsed = parse_entry(row)
                        if parsed is not None:
                            number, when, message, target, size, _ = parsed
                            found.append(LogEntry(number, when, message, target, size))
        return found[::-1], False

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


def decode_batch(blob: bytes, first: int) -> list[tuple]:
    """A batch's entries (none, said in the log, if it cannot be read)."""
    try:
        return BATCH.decode(blob)
    except msgspec.DecodeError:
        log.warning("the database holds a batch of entries (from %d) this server cannot "
                    "read; skipped", first)
        return []


def parse_entry(row: Iterable) -> tuple | None:
    """A batch's entry back as (number, time, message, target, size, mover)."""
    number, when, kind, where, mover, old, new, _, packet = row
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
