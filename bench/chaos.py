"""The chaos run: the cluster's guarantees measured under faults
(SPEC "Where features meet: the guarantees"; README "The chaos run").

    python bench/chaos.py --seconds 60 --seed 1 [--clients 200] [--json FILE]

Starts valkey-server (AOF synced on every write) and three nodes (a and b
sharing one port with --reuse-port, c on its own), puts ``--clients``
session clients behind proxies on them and in three rooms, and lets them
chat (unique numbered payloads, some DMs, some room moves) while the
seed's faults happen: nodes SIGKILLed, SIGSTOPped, SIGTERMed and started
again, Redis paused and killed, connections reset and silently dropped.
Faults stop 8 s before the end, then traffic stops; once every client is
back, each says a last line and asks ``who``, and the checker
(chaos_check) judges everything.  One line per fault as it happens, then
the ``chaos:`` line; exit status 0 when lost, duplicated, reordered,
ghosts and missing are all 0 (1 when not, 2 when the run could not run).

Owns the run: its loop, its clock, its temporary folder and the order of
its phases.  Every child process ends on every way out (exceptions and
Ctrl-C included; PR_SET_PDEATHSIG even if the run is SIGKILLed) and the
temporary folder is removed (kept with --keep, for digging).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import selectors
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from chaos_check import History, check
from chaos_client import ROOMS, ChaosClient
from chaos_faults import Fault, Faults, schedule
from chaos_net import Proxies
from chaos_procs import start_cluster, stop_all

HEARTBEAT = 0.5
GRACE = 30
NODE_OPTIONS = ("--heartbeat", str(HEARTBEAT), "--resume-grace", str(GRACE),
                "--history", "5", "--hello-timeout", "30")
JOIN_WAIT = 180.0      # every client in, on a loaded machine
SETTLE_WAIT = 90.0     # after the faults: every client back and answered
LOOP_STEP = 0.02


def arguments(argv):
    parser = argparse.ArgumentParser(prog="chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the traffic "
                        "runs; faults stop 8 s before its end (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="the faults' seed (default 1)")
    parser.add_argument("--clients", type=int, default=200, help="session clients (default 200)")
    parser.add_argument("--pace", type=float, default=4.0,
                        help="seconds between one client's messages, on average (default 4)")
    parser.add_argument("--json", metavar="FILE", help="write the whole record to FILE")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (node logs) and say where")
    return parser.parse_args(argv)


class Run:
    def __init__(self, args, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.rng = random.Random(args.seed)
        self.selector = selectors.DefaultSelector()
        self.history = History()
        self.children = []
        self.began = time.monotonic()
        self.fault_lines: list[str] = []
        self.problems: list[str] = []
        self.phases: dict[str, float] = {}  # each phase's end, seconds into the run
        self.next_tick = 0.0

    # ---- what the faults act on ----

    def say(self, fault: Fault, text: str) -> None:
        line = f"t={time.monotonic() - self.began:6.1f}s {fault.kind:<11} {text}"
        self.fault_lines.append(line)
        print(line, flush=True)

    def killed(self, node) -> None:
        if node.node_id:
            self.history.kills.append((node.node_id, time.monotonic()))

    def cut(self, fault: Fault) -> None:
        connected = [c for c in self.clients if c.sock is not None and not c.connecting]
        for client in self.rng.sample(connected, min(fault.count, len(connected))):
            port = client.local_port
            if fault.kind == "reset":
                self.proxies.reset(port)
            else:
                self.proxies.drop(port, time.monotonic() + fault.length)

    # ---- phases ----

    def start(self) -> None:
        self.valkey, nodes = start_cluster(self.folder, NODE_OPTIONS)
        self.children = [self.valkey, *nodes]
        self.nodes = {node.name: node for node in nodes}
        shared, own = ("127.0.0.1", nodes[0].port), ("127.0.0.1", nodes[2].port)
        self.proxies = Proxies(self.selector, [shared, own])
        addresses = [self.proxies.address(shared), self.proxies.address(own)]
        now = time.monotonic()
        self.clients = [
            ChaosClient(f"u{i:03d}", addresses, home=1 if i % 3 == 2 else 0,
                        room=ROOMS[i % len(ROOMS)], selector=self.selector,
                        records=self.history, rng=random.Random(f"{self.args.seed}/{i}"),
                        now=now)
            for i in range(self.args.clients)]
        self.nicks = [c.nick for c in self.clients]

    def join(self) -> None:
        """Everyone in and in its first room, a few at a time."""
        for number, client in enumerate(self.clients):
            client.connect(time.monotonic())
            if number % 20 == 19:
                self.loop_for(0.2, chatting=False)
        if not self.loop_until(lambda: all(c.live and c.stay[0] == c.goal_room
                                           for c in self.clients),
                               JOIN_WAIT, chatting=False):
            out = [c.nick for c in self.clients if not c.live]
            raise RunError(f"not every client could join in {JOIN_WAIT:.0f} s: "
                           f"{len(out)} out ({', '.join(out[:10])})")

    def chaos(self) -> None:
        self.faults = Faults(schedule(self.args.seed, self.args.seconds, HEARTBEAT,
                                      self.args.clients), self)
        self.chaos_began = time.monotonic()
        self.loop_for(self.args.seconds, chatting=True)
        self.faults.stop_planning()
        if not self.loop_until(lambda: not self.faults.busy, SETTLE_WAIT, chatting=False):
            raise RunError("a fault did not end in time")

    def settle(self) -> None:
        """Every client back and answered; then a last line from each (its
        echo names its node) and its ``who``."""
        quiet_from = time.monotonic()
        back = self.loop_until(lambda: self.all_back(quiet_from + 3 * HEARTBEAT + 1),
                               SETTLE_WAIT, chatting=False)
        if not back:
            self.problems.append("not every client was back after the faults: "
                                 + ", ".join(c.nick for c in self.clients if not c.live)[:400])
        now = time.monotonic()
        for client in self.clients:
            if client.live:
                client.say(now)
        self.loop_until(lambda: all(c.unanswered_since is None for c in self.clients if c.live),
                        30, chatting=False)
        self.loop_for(1.0, chatting=False)
        now = time.monotonic()
        for client in self.clients:
            if client.live:
                client.ask_who(now)
        self.loop_until(lambda: all(c.who_answer for c in self.clients if c.live), 30,
                        chatting=False)
        for client in self.clients:
            if client.live:
                self.history.present[client.nick] = client.stay[0]
            if client.who_answer:
                self.history.who.append(client.who_answer)

    def all_back(self, not_before: float) -> bool:
        now = time.monotonic()
        return now >= not_before and all(
            c.live and c.unanswered_since is None and c.moving_to is None for c in self.clients)

    # ---- the loop ----

    def loop_for(self, seconds: float, chatting: bool) -> None:
        self.loop_until(lambda: False, seconds, chatting)

    def loop_until(self, condition, timeout: float, chatting: bool) -> bool:
        deadline = time.monotonic() + timeout
        next_check = 0.0
        while True:
            now = time.monotonic()
            if now >= next_check:
                if condition():
                    return True
                next_check = now + 0.1
            if now >= deadline:
                return False
            self.step(chatting)

    def step(self, chatting: bool) -> None:
        for key, mask in self.selector.select(LOOP_STEP):
            key.data(key.fileobj, mask)
        now = time.monotonic()
        if now < self.next_tick:
            return
        self.next_tick = now + LOOP_STEP
        for client in self.clients:
            client.tick(now)
            if client.session.ended and client.number < 0:
                client.restart(now)  # the first hello failed (a loaded machine): again
            client.act(now, self.nicks, self.args.pace, chatting)
        self.proxies.tick(now)
        faults = getattr(self, "faults", None)
        if faults is not None:
            faults.tick(now, now - self.chaos_began)
            self.note_recoveries(now)

    def note_recoveries(self, now: float) -> None:
        waiting = [f for f in self.faults.done if f.recovered is None]
        if waiting and all(c.live for c in self.clients):
            for fault in waiting:
                if all(c.heard_at > fault.ended for c in self.clients):
                    fault.recovered = now

    # ---- the end ----

    def finish(self) -> tuple[dict, str]:
        now = time.monotonic()
        for client in self.clients:
            client.finish(now)
        verdict = check(self.history)
        faults = self.faults.done
        recoveries = [f.recovered - f.started for f in faults if f.recovered is not None]
        unrecovered = sum(1 for f in faults if f.recovered is None)
        worst = "inf" if unrecovered else f"{max(recoveries, default=0.0):.1f}"
        resumes = sum(c.counts.resumes for c in self.clients)
        fresh = sum(c.counts.fresh for c in self.clients)
        line = (f"chaos: seed={self.args.seed} seconds={self.args.seconds:g} nodes=3 "
                f"clients={self.args.clients} faults={len(faults)} sent={verdict.sent} "
                f"echoed={verdict.echoed} lost={verdict.lost} duplicated={verdict.duplicated} "
                f"reordered={verdict.reordered} ghosts={verdict.ghosts} "
                f"missing={verdict.missing} resumes={resumes} fresh={fresh} "
                f"worst_recovery_s={worst}")
        record = {
            "line": line, "seed": self.args.seed, "seconds": self.args.seconds,
            "clients": self.args.clients, "verdict": verdict.as_dict(),
            "faults": [fault_record(f, self.began) for f in faults],
            "fault_lines": self.fault_lines, "problems": self.problems,
            "unrecovered_faults": unrecovered,
            "counts": {name: sum(getattr(c.counts, name) for c in self.clients)
                       for name in vars(self.clients[0].counts)},
            "errors": merged(c.errors for c in self.clients),
            "proxy": {"resets": self.proxies.resets, "drops": self.proxies.drops},
            "node_ids": {n.name: n.ids for n in self.nodes.values()},
            "traces": {c.nick: c.trace for c in self.clients},
            "phases": self.phases,
        }
        return record, line

    def close(self) -> None:
        for client in getattr(self, "clients", []):
            if client.sock is not None:
                client._close(True)
        if hasattr(self, "proxies"):
            self.proxies.close()
        stop_all(self.children)
        self.selector.close()


class RunError(Exception):
    """The run could not be carried out (not a finding about the server)."""


def fault_record(fault: Fault, began: float) -> dict:
    def rel(t):
        return None if t is None else round(t - began, 3)
    return {"kind": fault.kind, "target": fault.target, "length": round(fault.length, 3),
            "count": fault.count, "started": rel(fault.started), "ended": rel(fault.ended),
            "recovered": rel(fault.recovered),
            "recovery_s": None if fault.recovered is None
            else round(fault.recovered - fault.started, 3), "notes": fault.notes}


def merged(counters) -> dict:
    total: dict[str, int] = {}
    for counter in counters:
        for key, value in counter.items():
            total[key] = total.get(key, 0) + value
    return total


def stop_on_sigterm(signum, frame):
    raise KeyboardInterrupt  # the same way out as Ctrl-C: children ended, folder removed


def raise_open_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv=None) -> int:
    args = arguments(argv)
    raise_open_file_limit()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    folder = Path(tempfile.mkdtemp(prefix="chaos_"))
    run = Run(args, folder)
    try:
        for phase in (run.start, run.join, run.chaos, run.settle):
            phase()
            run.phases[phase.__name__] = round(time.monotonic() - run.began, 2)
        record, line = run.finish()
    except (RunError, RuntimeError) as exc:  # (RuntimeError: a child did not start)
        print(f"chaos: the run failed: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("chaos: interrupted", file=sys.stderr)
        return 130
    finally:
        run.close()
        if args.keep:
            print(f"chaos: logs kept in {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        record["history"] = history_record(run.history)
        Path(args.json).write_text(json.dumps(record))
    print(line, flush=True)
    return 0 if record["verdict"]["lost"] + record["verdict"]["duplicated"] \
        + record["verdict"]["reordered"] + record["verdict"]["ghosts"] \
        + record["verdict"]["missing"] == 0 else 1


def history_record(history: History) -> dict:
    """The history, compact: one list per record."""
    return {
        "sent": [[m.payload, m.sender, m.seq, round(m.at, 4), m.node, m.room, m.to]
                 for m in history.sent],
        "receipts": [[r.user, r.session, r.payload, round(r.at, 4), r.node, r.replay]
                     for r in history.receipts],
        "stays": [[s.user, s.session, s.room, round(s.start, 4), round(s.end, 4), s.node]
                  for s in history.stays],
        "entered": [[nick, room, round(at, 4), node] for nick, room, at, node
                    in history.entered],
        "sessions": [[s.user, s.number, round(s.start, 4), round(s.end, 4)]
                     for s in history.sessions],
        "kills": history.kills, "present": history.present,
        "who": [[w.asker, w.node, w.room, list(w.nicks)] for w in history.who],
    }


if __name__ == "__main__":
    sys.exit(main())
