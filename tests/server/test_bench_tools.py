"""The benchmark's tools as a newcomer runs them from the README (issue 20,
finding 13): a run writes where it is told, by default to a file git
ignores, never over the committed figures; the plot says what it needs."""

import json
import subprocess
import sys

from tests.support import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from run import DEFAULT_OUT  # noqa: E402  (bench/run.py)


def git(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_a_benchmark_run_writes_its_figures_where_it_is_told(tmp_path):
    committed = (ROOT / "bench" / "results.json").read_bytes()
    out = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, "bench/run.py", "connect", "--sizes", "5",
                             "--out", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(out.read_text())["connect"][0]["clients"] == 5
    assert (ROOT / "bench" / "results.json").read_bytes() == committed


def test_what_the_quick_starts_leave_behind_is_ignored_by_git():
    default_out = str(DEFAULT_OUT.relative_to(ROOT))
    for path in (default_out, "bench/out/results.png", ".venv/bin/python",
                 "chat-redis/appendonlydir/x.aof", "chat.db"):
        assert git("check-ignore", "-q", path).returncode == 0, f"{path} is not ignored"
    assert git("ls-files", "--error-unmatch", default_out).returncode != 0
    assert git("ls-files", "--error-unmatch", "bench/results.json").returncode == 0


def test_the_plot_without_matplotlib_says_what_to_install_in_one_line(tmp_path):
    without = ("import runpy, sys; sys.modules['matplotlib'] = None; "
               "sys.argv = ['bench/plot.py', 'bench/results.json', sys.argv[1]]; "
               "runpy.run_path('bench/plot.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", without, str(tmp_path / "figures.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr == "bench/plot.py needs matplotlib: pip install -e '.[bench]'\n"
    assert not (tmp_path / "figures.png").exists()
