"""Draw the figures of `bench/run.py --out FILE` into a PNG.

    python bench/plot.py bench/out/results.json bench/out/results.png

Needs matplotlib (pip install -e '.[bench]').
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def paired(results: dict, name: str) -> list[tuple[str, list[dict]]]:
    """The single-process runs and, when present, the cluster runs."""
    series = [("1 process", results.get(name, []))]
    cluster = results.get(name + "-cluster", [])
    if cluster:
        series.append((f"{cluster[0]['nodes']} processes + Redis", cluster))
    return [(label, [r for r in runs if "clients" in r]) for label, runs in series]


def bars(ax, series, key: str, scale: float) -> None:
    width = 0.8 / max(1, len(series))
    for index, (label, runs) in enumerate(series):
        ax.bar([i + index * width for i in range(len(runs))],
               [r[key] / scale for r in runs], width=width, label=label)
    if series and series[0][1]:
        ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(series[0][1]))],
                      [str(r["clients"]) for r in series[0][1]])
    ax.legend(loc="upper left")


def main(argv=None) -> int:
    args = argv if argv is not None else sys.argv[1:]
    if len(args) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        import matplotlib
    except ImportError:
        print("bench/plot.py needs matplotlib: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(args[0]).read_text())
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    cores = results.get("machine", {}).get("cores", "?")
    fig.suptitle(f"chat_server.py on {cores} cores")

    ax = axes[0][0]
    series = paired(results, "connect")
    bars(ax, series, "seconds", 1)
    ax.set_ylabel("seconds until the joins are delivered")
    connect = [r for r in results.get("connect", []) if "clients" in r]
    if connect:
        twin = ax.twinx()
        twin.plot([str(r["clients"]) for r in connect],
                  [r["rss_per_connection_kib"] for r in connect], "o-", color="tab:red")
        twin.set_ylabel("1 process: server RSS per connection (KiB)", color="tab:red")
        twin.set_ylim(0, max(10, max(r["rss_per_connection_kib"] for r in connect) * 1.2))
    ax.set_title("connect: N clients join one after another")
    ax.set_xlabel("clients")

    ax = axes[0][1]
    bars(ax, paired(results, "fanout"), "deliveries_per_second", 1e6)
    ax.set_title("fanout: 10 senders x 1,000 chats")
    ax.set_xlabel("clients in the room")
    ax.set_ylabel("million deliveries per second")

    ax = axes[1][0]
    names = [n for n in ("latency", "slow-reader") if n in results and "p50_ms" in results[n]]
    for offset, key in enumerate(("p50_ms", "p99_ms", "max_ms")):
        ax.bar([i + offset * 0.27 for i in range(len(names))],
               [results[n][key] for n in names], width=0.27, label=key[:-3])
    ax.set_xticks([i + 0.27 for i in range(len(names))], names)
    ax.set_ylabel("delivery latency (ms)")
    ax.set_title("100 clients, 1,000 msg/s in, 100,000 deliveries/s out")
    ax.legend()

    ax = axes[1][1]
    samples = results.get("slow-reader", {}).get("server_rss_mib_over_time", [])
    if samples:
        ax.plot([t for t, _ in samples], [r for _, r in samples], "-", color="tab:purple")
        ax.set_ylim(0, max(r for _, r in samples) * 1.25)
    ax.set_title("slow-reader: server RSS while one client never reads")
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS (MiB)")

    fig.tight_layout()
    fig.savefig(args[1], dpi=80)
    return 0


if __name__ == "__main__":
    sys.exit(main())
