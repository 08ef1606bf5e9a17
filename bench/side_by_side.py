"""Redis CPU per message for enqueue, claim and ack on two Valkeys side by side, one at
hash-max-listpack-value A and one at B: an A/B of CPU time that a busy machine blurs
little, since its load hits both servers alike.

Each call goes to both servers in turn (the order flipped every call); each round swaps
which server has which setting, and flushes both, so that neither a server's place
nor its history counts. CPU is INFO's used_cpu_user + used_cpu_sys of each server over
each step. Round 0 warms up and is not counted; the figures are the rounds' medians.

    python bench/side_by_side.py [--messages 4000] [--batch 16] [--body-bytes 500]
        [--rounds 6] [--limits 64 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferry.queue import Queue  # noqa: E402
from ferry.queue.connection import connect  # noqa: E402
from ferry.queue.message import NewMessage, new_message_id  # noqa: E402
from tests.support.servers import RedisProcess  # noqa: E402

WORKER, HOLDER, SENDER = "bench-worker", "bench-holder", "0123456789abcdef"
STEPS = ("enqueue", "claim", "ack")


async def cpu_seconds(queue: Queue) -> float:
    info = await queue.redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def one_call(queue: Queue, step: str, batch: int, body: bytes, claimed: list[str], start: int) -> None:
    if step == "enqueue":
        await queue.enqueue([NewMessage(new_message_id(), body, "application/json", sender=SENDER) for _ in range(batch)])
    elif step == "claim":
        claimed += [message.id for message in await queue.claim(WORKER, batch, holder=HOLDER)]
    else:
        await queue.ack(WORKER, claimed[start : start + batch], 3600, holder=HOLDER)


async def one_round(queues: dict[int, Queue], messages: int, batch: int, body: bytes) -> dict[tuple[str, int], float]:
    """µs of Redis CPU per message, by (step, limit)."""
    claimed: dict[int, list[str]] = {limit: [] for limit in queues}
    spent = {}
    for step in STEPS:
        before = {limit: await cpu_seconds(queue) for limit, queue in queues.items()}
        for number, start in enumerate(range(0, messages, batch)):
            order = list(queues) if number % 2 == 0 else list(queues)[::-1]
            for limit in order:
                await one_call(queues[limit], step, batch, body, claimed[limit], start)
        for limit, queue in queues.items():
            spent[(step, limit)] = (await cpu_seconds(queue) - before[limit]) / messages * 1e6
    return spent


async def run(urls: list[str], limits: tuple[int, int], messages: int, batch: int, body: bytes,
              rounds: int) -> dict[tuple[str, int], list[float]]:
    queues = [Queue(connect(url)) for url in urls]
    figures: dict[tuple[str, int], list[float]] = {}
    try:
        for number in range(rounds + 1):
            placed = dict(zip(limits if number % 2 == 0 else limits[::-1], queues))
            for limit, queue in placed.items():
                await queue.redis.flushall()
                await queue.redis.config_set("hash-max-listpack-value", limit)
                await queue.heartbeat(WORKER, HOLDER, 3600, take=True)
            spent = await one_round(placed, messages, batch, body)
            if number > 0:
                for key, value in spent.items():
                    figures.setdefault(key, []).append(value)
    finally:
        for queue in queues:
            await queue.redis.aclose()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--body-bytes", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--limits", type=int, nargs=2, default=[64, 4096], metavar=("A", "B"))
    options = parser.parse_args()
    body = (b'{"pad":"' + b"x" * options.body_bytes)[: options.body_bytes - 2] + b'"}'
    a, b = options.limits
    if a == b:
        parser.error("--limits: two different settings")
    with tempfile.TemporaryDirectory(prefix="ferry-side-by-side-") as directory:
        servers = [RedisProcess("valkey", Path(directory) / name, appendfsync="everysec") for name in "xy"]
        for server in servers:
            server.start()
        try:
            figures = asyncio.run(run([s.url for s in servers], (a, b), options.messages, options.batch, body,
                                      options.rounds))
        finally:
            for server in servers:
                server.kill()
    print(f"Redis CPU µs per message, {options.body_bytes}-byte bodies, {options.batch} a call, "
          f"hash-max-listpack-value {a} (A) and {b} (B), median of {options.rounds} rounds")
    print(f"{'step':<12}{'A':>9}{'B':>9}{'B/A':>7}")
    for step in (*STEPS, "all three"):
        steps = STEPS if step == "all three" else (step,)
        per_round = {lim: [sum(r) for r in zip(*(figures[(s, lim)] for s in steps))] for lim in (a, b)}
        median_a, median_b = statistics.median(per_round[a]), statistics.median(per_round[b])
        print(f"{step:<12}{median_a:>9.1f}{median_b:>9.1f}{median_b / median_a:>7.3f}")


if __name__ == "__main__":
    main()
