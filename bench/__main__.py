"""`python -m bench`: ferry against what users would pick instead, one command, one run.

Kinds (one module each): delivery (bench/delivery.py: ferry, the bare aiohttp ceiling, the
textbook consumer and the peers), clients (bench/http_clients.py), ingest (bench/ingest.py),
end_to_end (bench/end_to_end.py), cost and memory (bench/cost.py). Writes docs/benchmarks.md, its plots
under docs/benchmarks/ and the raw figures in docs/benchmarks/results.json.

    python -m bench [--quick] [--only KIND ...] [--systems core|all] [--runs 3] [--retries 2]
        [--out DIR] [--merge] [--note "what else ran on the machine"]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import cost, delivery, end_to_end, harness, http_clients, ingest, report

KINDS = ["clients", "ingest", "end_to_end", "cost", "memory", "delivery"]  # the longest last


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"messages": 500, "concurrency": [16], "client_requests": 500, "ingest_seconds": 2,
                "processes": [1], "rates": [100.0], "e2e_seconds": 2.0, "cost_rates": [10.0, 100.0],
                "cost_seconds": 2.0, "idle_seconds": 2.0, "memory_messages": 1000}
    return {"messages": 20000, "concurrency": [16, 64], "client_requests": 20000,
            "ingest_seconds": 10, "processes": [1, 2], "rates": [500.0, 2000.0], "e2e_seconds": 10.0,
            "cost_rates": [10.0, 100.0, 500.0], "cost_seconds": 10.0, "idle_seconds": 10.0,
            "memory_messages": 20000}


def gather(kind: str, s: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    runs, retries = args.runs, args.retries
    if kind == "delivery":
        names = delivery.CORE if args.systems == "core" else list(delivery.SYSTEMS)
        return delivery.run(names, s["messages"], s["concurrency"], runs, retries, timeout=900)
    if kind == "clients":
        return http_clients.run(args.clients, s["client_requests"], s["concurrency"],
                                args.schemes, runs, retries, timeout=900)
    if kind == "ingest":
        return ingest.run(["http", "https"], s["processes"], s["ingest_seconds"], runs, retries)
    if kind == "end_to_end":
        return end_to_end.run(s["rates"], s["e2e_seconds"], runs, retries)
    if kind == "memory":
        return cost.run_memory(s["memory_messages"])
    return cost.run(s["cost_rates"], s["cost_seconds"], s["idle_seconds"], runs, retries, s["messages"])


def foreign_loads(results: dict[str, Any]) -> list[float]:
    found: list[float] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "foreign_load" and isinstance(item, float) and item == item:
                    found.append(item)
                else:
                    walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(results)
    return found


def load_note(results: dict[str, Any], note: str, loadavg: str) -> str:
    loads = foreign_loads(results)
    shown = (f"median {statistics.median(loads):.2f}, max {max(loads):.2f} cores" if loads else "n/a")
    return (f"**Load.** Other processes' CPU during the runs (their medians): {shown}; load average "
            f"at the start {loadavg}. {note}").strip()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the smallest settings, one run")
    parser.add_argument("--only", nargs="+", choices=KINDS, default=KINDS)
    parser.add_argument("--systems", choices=["core", "all"], default="all",
                        help="core: ferry, the ceiling and the textbook consumer only")
    parser.add_argument("--schemes", nargs="+", choices=["http", "https", "mtls"],
                        default=["http", "https", "mtls"], help="what the clients kind runs over")
    parser.add_argument("--clients", nargs="+", choices=http_clients.CLIENTS, default=http_clients.CLIENTS,
                        help="what the clients kind compares")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--retries", type=int)
    parser.add_argument("--out", type=Path, help="default docs/ (--quick: a temporary folder)")
    parser.add_argument("--note", default="", help="said in the report beside the load")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other kinds' figures of OUT/benchmarks/results.json")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.retries = args.retries if args.retries is not None else (0 if args.quick else 2)
    s = settings(args.quick)
    args.out = args.out or (Path(tempfile.gettempdir()) / "ferry-bench-quick" if args.quick
                            else harness.ROOT / "docs")
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    loadavg = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    saved = args.out / "benchmarks" / "results.json"
    results: dict[str, Any] = json.loads(saved.read_text()) if args.merge and saved.exists() else {}
    command = ("python -m bench " + shlex.join(sys.argv[1:])).strip()
    for kind in args.only:  # the report is rewritten after each kind: a cut-short run keeps its figures
        print(f"== {kind}", flush=True)
        results[kind] = {**gather(kind, s, args), "command": command, "started": started,
                         "machine": report.machine()}
        publish(results, args.out, load_note(results, args.note, loadavg))
    print(f"wrote {args.out / 'benchmarks.md'}")


def publish(results: dict[str, Any], out: Path, note: str) -> None:
    plots_dir = out / "benchmarks"
    plots_dir.mkdir(parents=True, exist_ok=True)
    (plots_dir / "results.json").write_text(json.dumps(results, indent=1))
    try:
        report.plots(results, plots_dir)
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plots", file=sys.stderr)
    report.write(results, out / "benchmarks.md", note)


if __name__ == "__main__":
    main()
