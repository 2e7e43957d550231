"""The chaos run's faults: the schedule a seed gives, and how each fault
is carried out.

Owns the schedule (:func:`schedule`: the same seed and length give the
same faults, at the same times, on the same targets) and the faults in
progress (:class:`Faults`).  Each fault is a generator that does one step
and yields how long to wait (seconds) or an :class:`Until` (a condition
and its timeout) before the next; the run's loop drives them, so nothing
blocks the clients.  Node faults run one at a time (three nodes: one is
down or paused at most), and so do Redis faults; proxy cuts come at any
time.
"""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, field
from typing import Callable, Iterator

from chaos_procs import Node, Valkey
from termchat.cluster.commands import STOP_WAIT

NODE_KINDS = ("kill", "pause", "term")
REDIS_KINDS = ("redis-pause", "redis-kill")
CUT_KINDS = ("reset", "drop")
KINDS = NODE_KINDS + REDIS_KINDS + CUT_KINDS
TERM_WAIT = STOP_WAIT + 3 + 10  # a node's link may take STOP_WAIT + 3 s to stop; then it hangs
START_WAIT = 60.0


@dataclass
class Fault:
    kind: str
    at: float          # seconds into the run
    target: str        # a node's name, "valkey", or "proxy"
    length: float      # seconds down, paused, or (drop) silent before the reset
    count: int = 0     # connections cut
    # what happened
    started: float | None = None
    ended: float | None = None
    recovered: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def lane(self) -> str:
        return "node" if self.kind in NODE_KINDS else self.target

    def describe(self) -> str:
        return {
            "kill": f"node {self.target} SIGKILL, started again after {self.length:.1f} s",
            "pause": f"node {self.target} SIGSTOP for {self.length:.1f} s, then SIGCONT",
            "term": f"node {self.target} SIGTERM, started again {self.length:.1f} s after it ends",
            "redis-pause": f"valkey SIGSTOP for {self.length:.1f} s, then SIGCONT",
            "redis-kill": f"valkey SIGKILL, restarted from its AOF after {self.length:.1f} s",
            "reset": f"{self.count} connections reset at the proxy",
            "drop": f"{self.count} connections silently dropped at the proxy "
                    f"(reset {self.length:.1f} s later)",
        }[self.kind]


def schedule(seed: int, seconds: float, heartbeat: float, clients: int,
             nodes: tuple[str, ...] = ("a", "b", "c")) -> list[Fault]:
    """The faults of a run: each kind about once every 15 s of the span in
    which faults come (from 2 s to 8 s before the end), at least once."""
    rng = random.Random(seed)
    first, last = 2.0, max(4.0, seconds - 8.0)
    per_kind = max(1, round((last - first) / 15))
    dead_after = 3 * heartbeat
    faults = []
    for kind in KINDS:
        for _ in range(per_kind):
            at = rng.uniform(first, last)
            if kind in NODE_KINDS:
                target = rng.choice(nodes)
                length = rng.uniform(dead_after + 0.5, dead_after + 4.5) if kind == "pause" \
                    else rng.uniform(0.3, 2.5)
                faults.append(Fault(kind, at, target, length))
            elif kind in REDIS_KINDS:
                faults.append(Fault(kind, at, "valkey", rng.uniform(0.5, 4.0)))
            else:
                count = rng.randint(max(1, clients // 40), max(2, clients // 8))
                faults.append(Fault(kind, at, "proxy", rng.uniform(1.0, 8.0), count))
    return sorted(faults, key=lambda f: f.at)


@dataclass
class Until:
    condition: Callable[[], bool]
    timeout: float
    what: str


class Faults:
    """The faults in progress and still to come, driven by the run's loop."""

    def __init__(self, planned: list[Fault], run) -> None:
        self.planned = list(planned)
        self.run = run                 # what the faults act on, and the run's clock
        self.active: list[tuple[Fault, Iterator, float, Until | None]] = []
        self.done: list[Fault] = []

    @property
    def busy(self) -> bool:
        return bool(self.planned or self.active)

    def stop_planning(self) -> None:
        self.planned = []

    def tick(self, now: float, elapsed: float) -> None:
        lanes = {fault.lane for fault, *_ in self.active}
        for fault in list(self.planned):
            if fault.at <= elapsed and fault.lane not in lanes:
                self.planned.remove(fault)
                lanes.add(fault.lane)
                fault.started = now
                self.run.say(fault, fault.describe())
                self.active.append((fault, self._steps(fault), now, None))
        self.active = [step for step in (self._advance(*item, now) for item in self.active)
                       if step is not None]

    def _advance(self, fault, steps, wake, until, now):
        if until is not None:
            met = until.condition()
            if not met and now < wake:
                return fault, steps, wake, until
            answer = met
        elif now < wake:
            return fault, steps, wake, until
        else:
            answer = None
        try:
            wait = steps.send(answer)
        except StopIteration:
            fault.ended = now
            self.done.append(fault)
            return None
        if isinstance(wait, Until):
            return fault, steps, now + wait.timeout, wait
        return fault, steps, now + wait, None

    def _steps(self, fault: Fault):
        yield 0  # primed: the first send(None) starts it
        if fault.kind in NODE_KINDS:
            yield from getattr(self, "_" + fault.kind)(fault, self.run.nodes[fault.target])
        elif fault.kind == "redis-pause":
            yield from self._pause(fault, self.run.valkey)
        elif fault.kind == "redis-kill":
            yield from self._redis_kill(fault, self.run.valkey)
        else:
            self.run.cut(fault)
            if fault.kind == "drop":
                yield fault.length

    # ---- each kind ----

    def _kill(self, fault: Fault, node: Node):
        self.run.killed(node)
        node.kill()
        yield fault.length
        yield from self._start(fault, node)

    def _pause(self, fault: Fault, child):
        child.signal(signal.SIGSTOP)
        yield fault.length
        child.signal(signal.SIGCONT)

    def _term(self, fault: Fault, node: Node):
        node.signal(signal.SIGTERM)
        ended = yield Until(lambda: not node.running, TERM_WAIT, "the node to end")
        if not ended:
            note = f"node {node.name} still running {TERM_WAIT:.0f} s after SIGTERM: SIGKILL"
            fault.notes.append(note)
            self.run.say(fault, note)
            self.run.killed(node)
            node.kill()
        yield fault.length
        yield from self._start(fault, node)

    def _redis_kill(self, fault: Fault, valkey: Valkey):
        valkey.kill()
        yield fault.length
        valkey.start()
        started = yield Until(valkey.ready, START_WAIT, "valkey to answer")
        if not started:
            raise RuntimeError("valkey did not start again:\n" + valkey.log_text()[-2000:])

    def _start(self, fault: Fault, node: Node):
        node.start()
        started = yield Until(node.ready, START_WAIT, "the node to register")
        if not started:
            raise RuntimeError(f"node {node.name} did not start again:\n"
                               + node.log_text()[-3000:])
