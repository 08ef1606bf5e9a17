"""Messages stored before hash-max-listpack-value was raised (hashtables) move as before,
beside new ones kept as listpacks: the scripts read both encodings alike."""

from __future__ import annotations

from ferry.queue import Queue
from ferry.queue.connection import LISTPACK_VALUE_BYTES, check_server, connect
from ferry.queue.message import NewMessage, Status, id_time_ms, new_message_id
from tests.queue.test_queue import places
from tests.support.servers import RedisProcess
from tests.support.stored_before import SENDER, encodings, store_in_every_state


async def test_messages_stored_as_hashtables_are_delivered_replayed_and_reported_beside_listpacks(
    own_redis: RedisProcess,
) -> None:
    sync = own_redis.client()
    sync.config_set("hash-max-listpack-value", 64)  # Redis's default, which ferry ran on before
    before = store_in_every_state(sync)
    assert encodings(sync, before) == {"hashtable"}
    sync.config_set("hash-max-listpack-value", LISTPACK_VALUE_BYTES)  # what the warning asks for
    ids = before.ids
    redis = connect(own_redis.url)
    queue = Queue(redis)
    try:
        fresh = NewMessage(new_message_id(), b"n" * 500, "application/json", sender=SENDER)
        await queue.enqueue([fresh])
        assert await redis.object("encoding", queue.keys.message(fresh.id)) == b"listpack"

        for state, message_id in ids.items():  # each status reads as it was written
            found = await queue.status(message_id)
            assert found is not None and found.status == Status(state) and found.sender == SENDER, state
            assert found.created_at_ms <= id_time_ms(message_id) - 5000, state  # the time stored, not the id's
        [dead] = await queue.dead_letters()
        assert (dead.id, dead.attempts, dead.last_error) == (ids["dead"], 1, "HTTP 422: refused")

        assert (await queue.reap(max_returns=3)).returned == 1  # the dead worker's
        assert await queue.promote_due() == 1  # the retry, due
        await queue.heartbeat("w1", "test", 30, take=True)
        claimed = {m.id: m for m in await queue.claim("w1", 10, holder="test")}
        assert set(claimed) == {ids["queued"], ids["delivering"], ids["retrying"], fresh.id}
        for message_id in claimed.keys() - {fresh.id}:
            assert claimed[message_id].body == before.bodies[message_id]
            assert claimed[message_id].content_type == before.content_types[message_id]
            assert claimed[message_id].created_at_ms <= id_time_ms(message_id) - 5000
        assert [claimed[ids[s]].attempt for s in ("queued", "delivering", "retrying")] == [1, 2, 2]
        assert await queue.bury("w1", ids["queued"], "HTTP 410: gone", holder="test")
        assert await queue.ack("w1", [ids["delivering"], ids["retrying"], fresh.id], 60, holder="test") == 3

        assert {d.id for d in await queue.dead_letters()} == {ids["dead"], ids["queued"]}
        assert (await queue.replay_all()).count == 2
        replayed = await queue.claim("w1", 10, holder="test")
        assert {m.id: m.body for m in replayed} == {i: before.bodies[i] for i in (ids["dead"], ids["queued"])}
        assert await queue.ack("w1", [m.id for m in replayed], 60, holder="test") == 2

        for message_id in [*ids.values(), fresh.id]:
            found = await queue.status(message_id)
            assert found is not None and found.status is Status.DELIVERED
            assert await places(queue, message_id) == []
    finally:
        await redis.aclose()


async def test_the_server_check_warns_of_a_listpack_limit_below_ferrys(own_redis: RedisProcess) -> None:
    redis = connect(own_redis.url)
    try:
        own_redis.client().config_set("hash-max-listpack-value", 64)
        [warning] = (await check_server(redis, allow_eviction=False)).warnings
        assert "hash-max-listpack-value is 64" in warning and f"set it to {LISTPACK_VALUE_BYTES}" in warning
        own_redis.client().config_set("hash-max-listpack-value", LISTPACK_VALUE_BYTES)
        assert (await check_server(redis, allow_eviction=False)).warnings == []
    finally:
        await redis.aclose()
