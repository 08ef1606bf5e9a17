"""Synchronous views of the queue for tests: what a user would check with redis-cli."""

from __future__ import annotations

import asyncio
import ssl
import urllib.request
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
from prometheus_client.parser import text_string_to_metric_families

from ferry.queue import Queue
from ferry.queue.connection import connect
from ferry.queue.message import MessageStatus, NewMessage, new_message_id

T = TypeVar("T")


def with_queue(redis_url: str, operation: Callable[[Queue], Awaitable[T]]) -> T:
    async def go() -> T:
        client = connect(redis_url)
        try:
            return await operation(Queue(client))
        finally:
            await client.aclose()

    return asyncio.run(go())


def enqueue(redis_url: str, bodies: list[bytes], content_type: str = "application/json") -> list[str]:
    """Queue messages the way the proxy does; returns their ids."""
    messages = [NewMessage(new_message_id(), body, content_type) for body in bodies]

    async def go(queue: Queue) -> list[str]:
        results = []
        for start in range(0, len(messages), 500):
            results += await queue.enqueue(messages[start : start + 500])
        assert all(result.outcome == "queued" for result in results)
        return [result.id for result in results]

    return with_queue(redis_url, go)


def status(redis_url: str, message_id: str) -> MessageStatus:
    found = with_queue(redis_url, lambda queue: queue.status(message_id))
    assert found is not None, f"no status for {message_id}"
    return found


def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def queue_length(redis_url: str) -> int:
    return int(client(redis_url).llen("message_queue"))


def dead_ids(redis_url: str) -> list[str]:
    return [raw.decode() for raw in client(redis_url).zrevrange("{message_queue}:dead_letters", 0, -1)]


def in_flight(redis_url: str, worker_id: str) -> list[str]:
    return [raw.decode() for raw in client(redis_url).zrange(f"{{message_queue}}:inflight:{worker_id}", 0, -1)]


def registered_workers(redis_url: str) -> set[str]:
    return {raw.decode() for raw in client(redis_url).smembers("{message_queue}:workers")}


def scrape_text(url: str, context: ssl.SSLContext | None = None) -> str:
    """/metrics as text, on a new connection each time."""
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return response.read().decode()  # type: ignore[no-any-return]


def scrape(port: int) -> dict[str, float]:
    """A worker's /metrics as {'name{label="v"}': value}."""
    text = scrape_text(f"http://127.0.0.1:{port}/metrics")
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}"] = sample.value
    return values
