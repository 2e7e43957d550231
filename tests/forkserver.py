"""Start the real chat server in milliseconds: one process that has
imported chat_server (and what a cluster node imports) forks a child per
server the tests ask for, and the child runs chat_server.main with the
test's command line, environment, folder and log, as a fresh interpreter
would.  A start then costs about 30 ms instead of 0.3 s of interpreter
start-up and imports, and a stop 2 ms instead of 70 ms of interpreter
teardown: the suite starts a few hundred servers.

What differs from `python chat_server.py ...`: /proc/PID/cmdline shows
this process's command line, the server is this process's child and not
the test's (ForkedProcess reports its exit status as Popen would), and it
starts with the modules already imported.  A test that looks at any of that,
or needs a preexec_fn, starts its server with exec=True (support.py).

The fork server is single-threaded (a fork copies no other thread); it
speaks JSON lines on its stdin and stdout: a request is {"id", "argv",
"env", "cwd", "log", "stdin", "stdout"} (files; stdin and stdout may be
null), the answer {"id", "pid"} or {"id", "error"}, and
when a child ends {"exited": PID, "status": Popen-style returncode}.  When
its stdin closes (the test run ended, or died) it kills what it started
and exits.
"""

from __future__ import annotations

import atexit
import importlib
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ---- the fork server's side ----

def serve() -> None:
    sys.path.insert(0, str(ROOT))
    importlib.import_module("chat_server")  # the point: imported once, before any fork
    try:  # what a cluster node imports as it starts
        importlib.import_module("redis")
        importlib.import_module("termchat.cluster.link")
    except ImportError:  # no cluster extra: a node fails as it would have
        pass
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ, None)  # requests, on stdin
    children: dict[int, int] = {}  # pid -> its pidfd
    unread = b""
    while True:
        for key, _ in selector.select():
            if key.data is not None:
                reap(key.data, selector, children)
                continue
            data = os.read(0, 1 << 16)
            if not data:
                end_children(children)
                return
            *lines, unread = (unread + data).split(b"\n")
            for line in lines:
                answer(start_child(json.loads(line), selector, children))


def start_child(request: dict, selector, children: dict[int, int]) -> dict:
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        pid = os.fork()
    except OSError as exc:
        return {"id": request["id"], "error": str(exc)}
    if pid == 0:
        selector.close()
        for fd in children.values():
            os.close(fd)
        os._exit(run_server(request))
    children[pid] = os.pidfd_open(pid)
    selector.register(children[pid], selectors.EVENT_READ, pid)
    return {"id": request["id"], "pid": pid}


def reap(pid: int, selector, children: dict[int, int]) -> None:
    fd = children.pop(pid)
    selector.unregister(fd)
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    answer({"exited": pid, "status": returncode(status)})


def returncode(status: int) -> int:
    """As Popen.returncode: the exit code, or minus the signal that ended it."""
    return -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def answer(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def end_children(children: dict[int, int]) -> None:
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except OSError:
            pass


# ---- the child: what the interpreter would do around chat_server.main ----

def run_server(request: dict) -> int:
    """In the forked child: become `python chat_server.py ARGS` and run."""
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        for target, path, flags in ((0, request.get("stdin"), os.O_RDONLY),
                                    (1, request.get("stdout"), write), (2, request["log"], write)):
            fd = os.open(path or os.devnull, flags, 0o600)
            os.dup2(fd, target)
            os.close(fd)
        sys.argv = list(request["argv"])
        signal.signal(signal.SIGINT, signal.default_int_handler)
    except BaseException:
        traceback.print_exc()
        return 1
    import chat_server
    try:
        code = exit_code(chat_server.main(sys.argv[1:]))
    except SystemExit as exc:
        code = exit_code(exc.code)
    except BaseException:
        traceback.print_exc()  # as the interpreter prints an uncaught exception
        code = 1
    for thread in threading.enumerate():  # the interpreter waits for these
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # logging's flush, and anything the server registered
    sys.stdout.flush()
    sys.stderr.flush()
    return code


def exit_code(code) -> int:
    """What the interpreter exits with for sys.exit(code)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# ---- the tests' side ----

class ForkServer:
    """The tests' handle on the fork server: start(...) -> ForkedProcess."""

    def __init__(self) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="fork_server_", suffix=".log")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.forkserver"], cwd=ROOT,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log)
        self._lock = threading.Lock()
        self._next_id = 0
        self._answers: dict[int, dict] = {}
        self._children: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}  # exits heard of before their start was answered
        self._changed = threading.Condition(self._lock)
        self._reader = threading.Thread(target=self._read, name="fork server", daemon=True)
        self._reader.start()

    def start(self, argv: list[str], env: dict[str, str], cwd: Path, log: str,
              timeout: float, stdin: str | None = None,
              stdout: str | None = None) -> "ForkedProcess":
        """A server forked with this command line, environment and folder;
        its stderr into the file `log` (stdin and stdout: files, or none)."""
        with self._lock:
            self._next_id += 1
            request_id = self._next_id
            if self.proc.poll() is not None:
                raise RuntimeError(f"the fork server has ended ({self.proc.returncode}):\n"
                                   + Path(self.log.name).read_text(errors="replace"))
            line = json.dumps({"id": request_id, "argv": argv, "env": env, "cwd": str(cwd),
                               "log": log, "stdin": stdin, "stdout": stdout}) + "\n"
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
            if not self._changed.wait_for(lambda: request_id in self._answers, timeout):
                raise RuntimeError("the fork server did not answer")
            reply = self._answers.pop(request_id)
            if "error" in reply:
                raise RuntimeError(f"the fork server could not fork: {reply['error']}")
            child = ForkedProcess(reply["pid"], self._changed, argv)
            self._children[child.pid] = child
            if child.pid in self._exits:
                child.returncode = self._exits.pop(child.pid)
            return child

    def _read(self) -> None:
        for line in self.proc.stdout:
            message = json.loads(line)
            with self._lock:
                if "exited" in message:
                    child = self._children.pop(message["exited"], None)
                    if child is None:
                        self._exits[message["exited"]] = message["status"]
                    else:
                        child.returncode = message["status"]
                else:
                    self._answers[message["id"]] = message
                self._changed.notify_all()
        with self._lock:  # the fork server is gone, and its children with it
            for child in self._children.values():
                if child.returncode is None:
                    child.returncode = -signal.SIGKILL
            self._changed.notify_all()

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        self.log.close()


class ForkedProcess:
    """What the tests use of Popen, for a server the fork server started."""

    def __init__(self, pid: int, changed: threading.Condition, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._changed = changed

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        with self._changed:
            if not self._changed.wait_for(lambda: self.returncode is not None, timeout):
                raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:  # (not reaped yet: the pid is still this server's)
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


if __name__ == "__main__":
    serve()
