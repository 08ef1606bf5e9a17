"""Messages in every state, written with plain commands as the previous version's scripts
wrote them: the same fields, in hashes that a server at Redis's default
hash-max-listpack-value (64) keeps as hashtables. What a new version, or a server whose
limit was raised since, must still deliver, replay, list and report."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from ferry.queue.keys import Keys
from ferry.queue.message import new_message_id, now_ms

DEAD_WORKER = "worker-of-the-previous-version"  # registered, its lease expired: the reaper's
SENDER = "0123456789abcdef"  # an API key's id, as the proxy stores it
STATES = ("queued", "delivering", "retrying", "dead", "delivered")


@dataclass(frozen=True)
class StoredBefore:
    ids: dict[str, str]  # state -> message id
    bodies: dict[str, bytes]  # message id -> body (500 bytes: over 64)
    content_types: dict[str, str]


def store_in_every_state(client: redis.Redis, keys: Keys = Keys()) -> StoredBefore:
    """One message per state of STATES, each in its place (the queue, a dead worker's
    in-flight set, the retry schedule due now, the dead letters, none once delivered)."""
    now = now_ms()
    ids = {state: new_message_id() for state in STATES}
    bodies = {ids[state]: (b'{"state": "%s", "pad": "' % state.encode()).ljust(498, b"x") + b'"}' for state in STATES}
    content_types = {message_id: "application/json" for message_id in ids.values()}
    content_types[ids["retrying"]] = "text/csv; charset=utf-8"
    with client.pipeline(transaction=True) as pipe:
        for state, message_id in ids.items():
            key = keys.message(message_id)
            pipe.hset(key, mapping={  # enqueue
                "body": bodies[message_id], "content_type": content_types[message_id], "status": "queued",
                "attempts": 0, "returns": 0, "created_at": now - 5000, "updated_at": now - 5000, "sender": SENDER,
            })
            if state != "queued":  # claim
                pipe.hset(key, mapping={"status": "delivering", "attempts": 1, "updated_at": now - 4000,
                                        "worker": DEAD_WORKER})
            if state in ("retrying", "dead"):  # fail: retry, or bury
                pipe.hset(key, mapping={"status": state, "last_error": "HTTP 503: busy" if state == "retrying"
                                        else "HTTP 422: refused", "updated_at": now - 3000})
                pipe.hdel(key, "worker")
            if state == "retrying":
                pipe.hset(key, "next_attempt_at", now - 1000)
            if state == "delivered":  # ack
                pipe.hset(key, mapping={"status": "delivered", "delivered_at": now - 3000, "updated_at": now - 3000})
                pipe.hdel(key, "body", "worker", "next_attempt_at")
                pipe.expire(key, 3600)
        pipe.lpush(keys.queue, ids["queued"])
        pipe.zadd(keys.in_flight(DEAD_WORKER), {ids["delivering"]: now - 4000})
        pipe.sadd(keys.workers, DEAD_WORKER)
        pipe.zadd(keys.retry, {ids["retrying"]: now - 1000})
        pipe.zadd(keys.dead, {ids["dead"]: now - 3000})
        pipe.hincrby(keys.stats, "enqueued", len(STATES))
        pipe.hincrby(keys.stats, "delivered", 1)
        pipe.hincrby(keys.stats, "dead", 1)
        pipe.execute()
    return StoredBefore(ids, bodies, content_types)


def encodings(client: redis.Redis, stored: StoredBefore, keys: Keys = Keys()) -> set[str]:
    """How the server keeps the message hashes now."""
    return {client.object("encoding", keys.message(i)).decode() for i in stored.ids.values()}  # type: ignore[union-attr]
