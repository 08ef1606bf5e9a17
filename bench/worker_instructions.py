"""The worker's instructions per delivered message, counted by callgrind: an A/B of two
versions of ferry's source that the machine's other work cannot blur.

bench/delivery.py's figures move by tens of percent from round to round on a shared
machine (a 2-core VM here ran the same code at 1,500 and 4,700 deliveries/s within ten
minutes); an instruction count moves by a percent or two. It misses what costs time
without instructions (cache misses, waits), so it complements the delivery figures.

Each source tree (a `src` folder: a checkout's, or `git archive <rev> src | tar -x -C dir`)
drains a fresh Valkey into bench/sink.py under `valgrind --tool=callgrind` (about 50 times
slower, so the worker is always the bottleneck, as when it drains a backlog), once with
`--small` and once with `--large` messages; the difference over the difference in
messages leaves start-up and shutdown out.

    python bench/worker_instructions.py SRC [SRC...] [--small 500] [--large 2500] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness  # noqa: E402
from bench.peers import ferry_worker  # noqa: E402

WORKER = "import sys; sys.argv = ['ferry', 'worker']; from ferry.cli import app; app()"


def instructions(src: Path, count: int, concurrency: int, sink: harness.Sink, work: Path) -> int:
    """Instructions (callgrind's Ir, every thread) of one worker process draining `count` messages."""
    sink.reset()
    with harness.redis_server(work) as redis:
        env = ferry_worker.env(redis.url, sink.url, concurrency)
        ferry_worker.load(redis.url, count)
        out = work / f"callgrind.{src.parent.name}.{count}"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", WORKER]
        process = harness.spawn(argv, work / "worker.log", {**env, "PYTHONPATH": f"{src}:{harness.ROOT}"})
        try:
            sink.wait_for(count, process, timeout=1800)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(600)
    found = re.search(r"^(?:summary|totals): (\d+)", out.read_text(errors="replace"), re.MULTILINE)
    if found is None:
        raise RuntimeError(f"no totals in {out}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="+", type=Path, help="src folders to compare")
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2500)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode:
        sys.exit("needs valgrind (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="ferry-bench-instructions-") as tmp:
        work = Path(tmp)
        sink = harness.Sink(work)
        try:
            for src in args.sources:
                small, large = (instructions(src.resolve(), count, args.concurrency, sink, work)
                                for count in (args.small, args.large))
                per_message = (large - small) / (args.large - args.small)
                print(f"{src}: {per_message:,.0f} instructions a delivery "
                      f"(concurrency {args.concurrency}; {small:,} for {args.small}, {large:,} for {args.large})")
        finally:
            sink.close()


if __name__ == "__main__":
    main()
