"""Durable state (--db): a single server that forgets nothing, over real
sockets with a real database file (SPEC, "Durable state")."""

import hashlib
import resource
import signal
import socket
import sqlite3
import time

import pytest

from termchat.core.eventlog import LogEntry
from termchat.store.sqlite import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION, open_store
from termchat.wire import protocol as proto
from tests.support import RawClient, ServerProcess, chat_from, join, leave, run_server, wait_for


@pytest.fixture
def database(tmp_path):
    return tmp_path / "chat.db"


@pytest.fixture
def servers():
    """servers(*options, port=0) -> a server; all stopped at the end."""
    started = []

    def make(*options, port=0, **popen):
        started.append(ServerProcess(*options, port=port, **popen))
        return started[-1]

    yield make
    for server in started:
        server.cleanup()


def session(port, nick):
    """A session client past its join: (client, token)."""
    client = RawClient(port)
    client.nick = nick
    client.send({"type": "hello", "nick": nick, "session": True})
    client.expect(lambda m: m["type"] == "join" and m["nick"] == nick)
    token = client.expect(lambda m: m["type"] == "session")["token"]
    return client, token


def resume(port, nick, token, after):
    client = RawClient(port)
    client.nick = nick
    client.send({"type": "hello", "nick": nick, "session": True, "resume": token,
                 "after": after})
    return client


def bare(message):
    return {k: v for k, v in message.items() if k not in ("id", "time", "history")}


def from_address(port, nick, source):
    """A RawClient whose connection comes from another loopback address."""
    client = RawClient.__new__(RawClient)
    sock = socket.socket()
    sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    client.sock, client.decoder, client.received, client.unread = sock, proto.PacketDecoder(), [], 0
    client.closed, client.nick = False, nick
    client.send({"type": "hello", "nick": nick})
    return client


def last_id(client):
    return [m for m in client.received if "id" in m][-1]["id"]


def refused(*options):
    """The server's refusal at start-up: exit 2, one line, no traceback."""
    result = run_server("0", "--host", "127.0.0.1", *options)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    return result.stderr


def said_in(database):
    """The texts of the chats the file keeps, in order (read while the server runs)."""
    with sqlite3.connect(database) as db:
        return [text for text, in db.execute(
            "SELECT json_extract(packet, '$.message') FROM entries WHERE said = 1")]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_restart_loses_nothing(servers, database, how):
    """Sessions resume with exactly what they missed and nobody sees a leave
    or a join; bans hold; newcomers get the history; a chat whose echo
    reached its sender survives even a SIGKILL."""
    ops = database.parent / "ops"
    ops.write_text("opsecret\n")
    options = ("--db", str(database), "--op-password-file", str(ops))
    first = servers(*options)
    pat, pat_token = session(first.port, "pat")
    amy, amy_token = session(first.port, "amy")
    pat.expect(lambda m: m.get("nick") == "amy" and m["type"] == "join")
    for i in range(3):
        amy.chat(f"before {i}")
        amy.expect(lambda m, i=i: m.get("message") == f"before {i}")  # echoed: kept
    pat.wait_until(lambda got: any(m.get("message") == "before 2" for m in got))
    pat_last, amy_last = last_id(pat), last_id(amy)
    op = RawClient(first.port, "op")
    op.send({"type": "op", "password": "opsecret"})
    op.expect({"type": "info", "message": "you are an operator now"})
    eve = from_address(first.port, "eve", "127.0.0.9")
    eve.expect(join("eve"))
    op.send({"type": "ban", "nick": "eve", "minutes": 5})
    eve.expect(lambda m: m.get("code") == "banned")
    first.proc.send_signal(how)
    first.proc.wait(10)
    second = servers(*options, port=first.port)
    back_amy = resume(second.port, "amy", amy_token, amy_last)
    assert back_amy.expect(lambda m: True)["type"] == "resumed", back_amy.received
    back_amy.chat("after the restart")
    back_pat = resume(second.port, "pat", pat_token, pat_last)
    resumed = back_pat.expect(lambda m: True)
    assert resumed["type"] == "resumed", back_pat.received
    missed = [bare(back_pat.expect(lambda m: True)) for _ in range(resumed["missed"])]
    back_pat.wait_until(lambda got: any(m.get("message") == "after the restart" for m in got))
    seen = missed + [bare(m) for m in back_pat.received[1 + resumed["missed"]:]]
    assert seen[:3] == [join("op"), join("eve"), {"type": "kick", "nick": "eve", "by": "op",
                                                   "reason": "banned for 5 minutes"}]
    assert leave("op") in seen  # it had no session: it left with the process
    assert join("amy") not in seen and leave("amy") not in seen
    assert seen.count(chat_from("amy", "after the restart")) == 1
    newcomer, _ = session(second.port, "newcomer")
    newcomer.wait_until(lambda got: sum(m.get("history") is True for m in got) >= 4)
    said = [m["message"] for m in newcomer.received if m.get("history")]
    assert said == ["before 0", "before 1", "before 2", "after the restart"]
    banned = from_address(second.port, "eve2", "127.0.0.9")
    assert banned.expect(lambda m: True)["code"] == "banned"


def test_history_on_demand_pages_back_through_the_database(servers, database):
    first = servers("--db", str(database), "--history", "5", "--rate", "0")
    amy = RawClient(first.port, "amy")
    amy.expect(join("amy"))
    for i in range(60):
        amy.chat(f"line {i}")
    amy.wait_until(lambda got: any(m.get("message") == "line 59" for m in got))
    first.stop()
    second = servers("--db", str(database), "--history", "5", port=first.port)
    pat, _ = session(second.port, "pat")
    pat.wait_until(lambda got: sum(m.get("history") is True for m in got) == 5)
    history = [m for m in pat.received if m.get("history")]
    assert [m["message"] for m in history] == [f"line {i}" for i in range(55, 60)]
    pat.unread = len(pat.received)
    before, pages = history[0]["id"], []
    while True:
        pat.send({"type": "history", "before": before, "limit": 20})
        page = []
        while True:
            got = pat.expect(lambda m: m["type"] in ("chat", "history"))
            if got["type"] == "history" and "more" in got:
                break
            page.append(got)
        pages.append([m["message"] for m in page])
        if not got["more"]:
            break
        before = page[0]["id"]
    assert [line for page in reversed(pages) for line in page] == \
        [f"line {i}" for i in range(55)]
    assert all(m["history"] is True for m in pat.received if m["type"] == "chat")


def test_retention_keeps_n_messages_a_room_and_nothing_older_than_the_days(servers, database):
    server = servers("--db", str(database), "--keep", "10", "--rate", "0")
    amy = RawClient(server.port, "amy")
    amy.expect(join("amy"))
    amy.send(b"".join(proto.encode_object({"type": "chat", "message": f"line {i}"})
                      for i in range(40)))  # in one read: one turn's batch, trimmed in part
    amy.wait_until(lambda got: any(m.get("message") == "line 39" for m in got))

    def kept():
        return len(said_in(database))

    wait_for(lambda: kept() == 10, describe=lambda: f"{kept()} kept")
    assert said_in(database) == [f"line {i}" for i in range(30, 40)]
    server.stop()
    aged = servers("--db", str(database), "--keep-days", "0.00001", port=server.port)
    wait_for(lambda: kept() == 0, describe=lambda: f"{kept()} kept")
    assert aged.proc.poll() is None


def test_a_trim_step_takes_all_that_a_batch_it_reads_holds_past_the_keep(database):
    """A busy turn's batch holds hundreds of chats: rewriting it costs the
    same however many go, so one step takes all of its excess (a step of
    at most 200 rewrote such a batch again and again)."""
    store = open_store(str(database), keep=10)
    try:
        for number in range(1, 501):  # one turn, one batch
            message = proto.ChatFrom("amy", f"line {number}")
            store.entry(LogEntry(number, time.time(), message, "lobby", 0), proto.encode(message))
        store.commit()
        assert store.trim(time.time()) == 490
        assert said_in(database) == [f"line {number}" for number in range(491, 501)]
        assert store.trim(time.time()) == 0
    finally:
        store.close()


def first_schema_file(path, chats, ages=None):
    """A database as the first version of termchat wrote it: ``chats`` in
    the lobby (numbered from 1; ``ages`` seconds ago, each an hour if not
    given), and a ban of 127.0.0.9."""
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        db.execute("PRAGMA journal_mode = WAL")
        for statement in MIGRATIONS[1]:
            db.execute(statement)
        db.execute("PRAGMA user_version = 1")
        now, ages = time.time(), ages or [3600] * len(chats)
        db.executemany("INSERT INTO entries VALUES (?, ?, 'room', 'lobby', NULL, NULL, NULL, 1, ?)",
                       [(number, now - age, proto.encode(proto.ChatFrom("amy", text))[2:])
                        for number, (text, age) in enumerate(zip(chats, ages), 1)])
        db.execute("INSERT INTO bans VALUES ('127.0.0.9', ?, 'spam')", (time.time() + 300,))
    sqlite3.connect(path).close()


def test_a_database_of_the_first_schema_is_brought_up_to_date(servers, database):
    chats = [f"old {i}" for i in range(1200)]  # more than one batch of migrated entries
    first_schema_file(database, chats)
    server = servers("--db", str(database), "--history", "5")
    pat, _ = session(server.port, "pat")
    pat.wait_until(lambda got: sum(m.get("history") is True for m in got) == 5)
    history = [m for m in pat.received if m.get("history")]
    assert [m["message"] for m in history] == chats[-5:]
    pat.unread = len(pat.received)
    pat.send({"type": "history", "before": history[0]["id"], "limit": 100})
    page = [pat.expect(lambda m: m["type"] in ("chat", "history")) for _ in range(101)]
    assert [m.get("message") for m in page[:100]] == chats[1095:1195]
    assert page[100]["more"] is True
    pat.chat("new")
    pat.expect(lambda m: m.get("message") == "new")
    assert from_address(server.port, "eve", "127.0.0.9").expect(lambda m: True)["code"] == \
        "banned"
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("SELECT count(*), max(number) FROM entries WHERE said = 1"
                          ).fetchone() == (1201, 1202)  # pat joined as 1201


def test_what_is_older_than_the_days_goes_even_beside_newer_entries(servers, database):
    """Entries are kept in batches (a migrated file's hold many): an entry
    past --keep-days goes, the newer ones of its batch stay."""
    chats = [f"old {i}" for i in range(300)]
    first_schema_file(database, chats, ages=[3 * 86400 - i * 600 for i in range(300)])
    server = servers("--db", str(database), "--keep-days", "2")

    younger = chats[86400 // 600 + 1:]  # "old 145" on: less than 2 days old
    wait_for(lambda: said_in(database) == younger,
             describe=lambda: f"{len(said_in(database))} kept")
    assert server.proc.poll() is None


def test_a_backup_taken_while_it_runs_is_a_database_to_start_from(servers, database):
    """SQLite's online backup (what ``sqlite3 chat.db ".backup copy.db"``
    does), taken while the server writes: the copy starts a server with the
    history up to the backup."""
    server = servers("--db", str(database), "--rate", "0")
    amy = RawClient(server.port, "amy")
    amy.expect(join("amy"))
    for i in range(50):
        amy.chat(f"line {i}")
    amy.expect(lambda m: m.get("message") == "line 49")
    copy = database.with_name("copy.db")
    with sqlite3.connect(database) as running, sqlite3.connect(copy) as backup:
        amy.chat("during the backup")  # the server keeps writing meanwhile
        running.backup(backup, pages=1)
    restored = servers("--db", str(copy), "--history", "100")
    pat, _ = session(restored.port, "pat")
    pat.wait_until(lambda got: any(m.get("message") == "line 49" for m in got))
    said = [m["message"] for m in pat.received if m.get("history")]
    assert said[:50] == [f"line {i}" for i in range(50)]
    assert said[50:] in ([], ["during the backup"])


def test_files_that_are_not_its_database_are_refused_and_left_alone(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n" * 100)
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE something (x)")
    newer = tmp_path / "newer.db"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA application_id = 1413695572")
        db.execute("CREATE TABLE entries (x)")
        db.execute("PRAGMA user_version = 99")
    for path, reason in ((text, "not a termchat database"), (other, "not a termchat database"),
                         (newer, "newer termchat")):
        before = digest(path)
        assert reason in refused("--db", str(path))
        assert digest(path) == before, path


def test_a_damaged_database_is_refused_and_left_alone(servers, database):
    server = servers("--db", str(database), "--rate", "0")
    amy = RawClient(server.port, "amy")
    amy.expect(join("amy"))
    for i in range(200):
        amy.chat(f"line {i} " + "x" * 200)
    amy.wait_until(lambda got: any(m.get("message", "").startswith("line 199") for m in got))
    server.stop()
    data = bytearray(database.read_bytes())
    data[4096:8192] = b"\xff" * 4096  # a page of the table, overwritten
    database.write_bytes(bytes(data))
    for side in ("-wal", "-shm"):
        database.with_name(database.name + side).unlink(missing_ok=True)
    before = digest(database)
    assert "damaged" in refused("--db", str(database)) or "not a termchat" in \
        refused("--db", str(database))
    assert digest(database) == before


def test_two_servers_on_one_database_the_second_refuses(servers, database):
    servers("--db", str(database))
    assert "in use by another server" in refused("--db", str(database))


def test_db_is_refused_beside_a_cluster_and_beside_a_state_file(database):
    assert "--db is for a single server" in refused("--db", str(database), "--redis",
                                                    "redis://127.0.0.1:1/0")
    result = run_server("0", "--world", "builtin", "--state", "x.json", "--db", str(database))
    assert result.returncode == 2 and "--state and --db" in result.stderr


def test_without_db_the_server_says_its_state_is_in_memory(servers):
    server = servers()
    assert "kept in memory only" in server.log_text()


def fill_limit(size):
    """A child's file size limit (a full disk, as the database sees it)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
    return limit


def test_a_full_disk_is_said_once_the_chat_goes_on_and_nothing_kept_is_damaged(
        servers, database):
    server = servers("--db", str(database), "--rate", "0", preexec_fn=fill_limit(256 << 10))
    amy = RawClient(server.port, "amy")
    bob = RawClient(server.port, "bob")
    bob.expect(join("bob"))
    for i in range(400):
        amy.chat(f"line {i} " + "x" * 2000)
    bob.wait_until(lambda got: any(m.get("message", "").startswith("line 399") for m in got),
                   timeout=30)
    told = [m for m in bob.received if m["type"] == "info" and "not being kept" in m["message"]]
    assert len(told) == 1
    amy.chat("still chatting")
    bob.expect(chat_from("amy", "still chatting"))
    assert server.log_text().count("cannot write the database") == 1
    server.stop()
    with sqlite3.connect(database) as db:
        assert db.execute("PRAGMA quick_check").fetchone() == ("ok",)
        assert db.execute("SELECT count(*) FROM entries").fetchone()[0] > 0
