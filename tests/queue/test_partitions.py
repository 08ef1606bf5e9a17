"""Partitions on one real Valkey: how messages are spread, claimed in turn, found and
administered across key groups. (On a real Cluster, each on its own master:
tests/scaling/test_partitions.py.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.crc import key_slot

from ferry.queue import Fenced, Limits, Partitions
from ferry.queue.connection import connect
from ferry.queue.errors import RedisUnavailable
from ferry.queue.keys import Keys, partition_names
from ferry.queue.message import NewMessage, new_message_id

from tests.support.processes import bare_env, ferry_command

WORKER, HOLDER = "w1", "test"


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = connect(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def three(redis: Redis) -> AsyncIterator[Partitions]:
    """Three partitions, where worker w1 holds its lease in each."""
    partitions = Partitions(redis, 3)
    await partitions.heartbeat(WORKER, HOLDER, 30, take=True)
    yield partitions
    await partitions.close()


def new(count: int, **fields: str) -> list[NewMessage]:
    return [NewMessage(new_message_id(), b'{"n": 1}', "application/json", **fields) for _ in range(count)]


async def sizes(partitions: Partitions) -> list[int]:
    return [await group.size() for group in partitions.groups]


def test_partition_names_spread_evenly_round_the_slots_and_keep_partition_0s() -> None:
    names = partition_names("message_queue", 3)
    assert names[0] == "message_queue"  # LLEN message_queue stays partition 0's backlog
    base = key_slot(b"message_queue")
    assert [key_slot(name.encode()) for name in names] == [(base + p * 16384 // 3) % 16384 for p in range(3)]
    # Every key of a group shares its slot: a script touching one group is legal on a Cluster.
    for name in names:
        keys = Keys(queue=name)
        assert {key_slot(k.encode()) for k in (keys.queue, keys.dead, keys.retry, keys.in_flight("w"))} == {
            key_slot(name.encode())
        }
    assert partition_names("message_queue", 3) == names  # the same in every process
    assert len(set(partition_names("message_queue", 8))) == 8


async def test_unpinned_messages_go_round_the_partitions(three: Partitions) -> None:
    for _ in range(9):
        await three.enqueue(new(1))
    assert await sizes(three) == [3, 3, 3]
    assert await three.size() == 9
    snapshot = await three.snapshot()
    assert (snapshot.size, snapshot.partition_sizes) == (9, (3, 3, 3))


async def test_a_partition_key_pins_messages_to_one_partition(three: Partitions) -> None:
    for _ in range(12):
        await three.enqueue(new(1, partition_key="customer-42"))
    assert sorted(await sizes(three)) == [0, 0, 12]


async def test_a_resent_idempotency_key_meets_its_first_copy_in_whichever_partition(three: Partitions) -> None:
    first = [(await three.enqueue(new(1, idempotency_key=f"key-{n}", sender="s")))[0] for n in range(12)]
    again = [(await three.enqueue(new(1, idempotency_key=f"key-{n}", sender="s")))[0] for n in range(12)]
    assert {result.outcome for result in first} == {"queued"}
    assert [(r.outcome, r.id) for r in again] == [("existing", r.id) for r in first]
    assert sum(await sizes(three)) == 12 and min(await sizes(three)) > 0  # the keys spread too


async def test_an_all_or_nothing_batch_is_stored_in_one_partition(three: Partitions) -> None:
    results = await three.enqueue(new(5), all_or_nothing=True)
    assert {r.outcome for r in results} == {"queued"}
    assert sorted(await sizes(three)) == [0, 0, 5]


async def test_the_queue_cap_is_shared_out_over_the_partitions(three: Partitions) -> None:
    outcomes = Counter()
    for _ in range(12):
        outcomes.update(r.outcome for r in await three.enqueue(new(1), Limits(max_queue_size=6)))
    assert outcomes == {"queued": 6, "full": 6}  # 2 per partition: the cap is never passed
    assert await sizes(three) == [2, 2, 2]


async def test_claims_take_each_partition_in_turn(three: Partitions) -> None:
    for _ in range(9):
        await three.enqueue(new(1))
    claimed = [await three.claim(WORKER, 1, holder=HOLDER) for _ in range(9)]
    order = [batch[0].partition for batch in claimed]
    assert Counter(order) == {0: 3, 1: 3, 2: 3}
    assert all(order[i] != order[i + 1] for i in range(8))  # never the same partition twice running
    acked = await three.ack(WORKER, [batch[0] for batch in claimed], 60, holder=HOLDER)
    assert acked == 9 and await three.size() == 0


async def test_a_blocked_claim_wakes_for_a_message_in_any_partition(three: Partitions, redis: Redis) -> None:
    assert await three.claim(WORKER, 10, holder=HOLDER, block_seconds=0.2) == []  # all found empty, watched
    writer = Partitions(redis, 3)
    waiting = asyncio.create_task(three.claim(WORKER, 10, holder=HOLDER, block_seconds=10))
    await asyncio.sleep(0.3)
    for _ in range(2):  # the second lands in partition 1
        await writer.enqueue(new(1))
    claimed = await asyncio.wait_for(waiting, 5)  # the 10 s block would have run out otherwise
    assert len(claimed) == 1


async def test_a_worker_fenced_off_in_one_partition_is_fenced_off(three: Partitions, redis: Redis) -> None:
    await three.groups[2].drop_lease(WORKER)
    await redis.srem(three.groups[2].keys.workers, WORKER)  # what the reaper does to a lapsed lease
    assert not await three.heartbeat(WORKER, HOLDER, 30)
    await three.enqueue(new(1))
    await three.enqueue(new(1))
    await three.enqueue(new(1))  # partition 2's
    with pytest.raises(Fenced):
        for _ in range(3):
            three._maybe_waiting.add(2)
            three._leased.add(2)  # as if it had not noticed: the claim script itself refuses
            await three.claim(WORKER, 1, holder=HOLDER)


async def test_a_reader_finds_every_partition_a_proxy_recorded(three: Partitions, redis: Redis) -> None:
    ids = [(await three.enqueue(new(1)))[0].id for _ in range(6)]
    reader = Partitions(redis)  # FERRY_PARTITIONS unset: what `ferry dead`, `ferry verify` open
    assert await reader.size() == 6
    assert (await reader.snapshot()).partition_sizes == (2, 2, 2)
    for message_id in ids:
        found = await reader.status(message_id)
        assert found is not None and found.status == "queued"


async def test_dead_letters_of_every_partition_are_listed_replayed_and_purged(three: Partitions, redis: Redis) -> None:
    for _ in range(6):
        await three.enqueue(new(1))
    buried = []
    for _ in range(6):
        (message,) = await three.claim(WORKER, 1, holder=HOLDER)
        assert await three.bury(WORKER, message, "410 gone", holder=HOLDER)
        buried.append(message)
        await asyncio.sleep(0.002)  # distinct times of death
    reader = Partitions(redis)
    assert await reader.dead_size() == 6
    page = await reader.dead_letters(limit=4)
    assert [d.id for d in page] == [m.id for m in reversed(buried)][:4]  # newest first, across partitions
    assert [d.id for d in await reader.dead_letters(limit=4, offset=4)] == [m.id for m in reversed(buried)][4:]

    replayed = await reader.replay([buried[0].id, buried[1].id, "no-such-id"])
    assert (replayed.count, replayed.not_dead) == (2, ("no-such-id",))
    assert await reader.size() == 2
    purged = await reader.purge([buried[2].id])
    assert (purged.count, purged.not_dead) == (1, ())
    assert (await reader.replay_all()).count == 3
    assert await reader.dead_size() == 0 and await reader.size() == 5


async def test_a_worker_adopts_partitions_a_proxy_added_and_takes_their_lease(redis: Redis) -> None:
    worker = Partitions(redis)  # started before FERRY_PARTITIONS was raised
    await worker.heartbeat(WORKER, HOLDER, 30, take=True)
    proxy = Partitions(redis, 3)
    for _ in range(6):
        await proxy.enqueue(new(1))
    assert await worker.adopt_recorded() == 2
    assert await worker.heartbeat(WORKER, HOLDER, 30)  # takes the two new leases
    claimed = []
    while batch := await worker.claim(WORKER, 10, holder=HOLDER):
        claimed += batch
    assert Counter(m.partition for m in claimed) == {0: 2, 1: 2, 2: 2}
    await worker.close()


async def test_the_operators_commands_show_and_handle_every_partition(three: Partitions, redis_url: str) -> None:
    for _ in range(6):
        await three.enqueue(new(1))
    (message,) = await three.claim(WORKER, 1, holder=HOLDER)
    await three.claim(WORKER, 1, holder=HOLDER)  # the next partition's turn: partition 1 buries
    (buried,) = await three.claim(WORKER, 1, holder=HOLDER)
    assert buried.partition == 2 and await three.bury(WORKER, buried, "410 gone", holder=HOLDER)

    async def ferry(*args: str) -> str:
        done = await asyncio.create_subprocess_exec(
            ferry_command(), *args, "--redis-url", redis_url, env=bare_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await done.communicate()
        assert done.returncode == 0, err
        return out.decode()

    watched = await ferry("queue", "watch", "--once")
    assert "size 3" in watched and "partitions 1/1/1" in watched, watched
    assert buried.id in await ferry("dead", "list")
    assert "1" in await ferry("dead", "replay", buried.id)
    assert await three.dead_size() == 0 and await three.groups[2].size() == 2


async def test_a_partition_whose_master_is_away_is_passed_over_not_waited_on(
    three: Partitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    for _ in range(6):
        await three.enqueue(new(1))
    away = three.groups[1]

    async def failing_over(*args: object, **kwargs: object) -> list[object]:
        raise RedisUnavailable("partition 1's master is failing over")

    monkeypatch.setattr(away, "claim", failing_over)
    claimed = []
    for _ in range(4):  # each claim starts past the partition that failed
        claimed += await three.claim(WORKER, 1, holder=HOLDER)
    assert Counter(m.partition for m in claimed) == {0: 2, 2: 2}
    with pytest.raises(RedisUnavailable):  # nothing left but partition 1's: the worker waits it out
        await three.claim(WORKER, 1, holder=HOLDER)
    monkeypatch.undo()
    assert {m.partition for m in await three.claim(WORKER, 5, holder=HOLDER)} == {1}


async def test_concurrent_messages_of_a_partition_whose_master_is_away_fail_alone(
    three: Partitions, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing_over(*args: object, **kwargs: object) -> list[object]:
        raise RedisUnavailable("partition 1's master is failing over")

    monkeypatch.setattr(three.groups[1], "enqueue", failing_over)
    pinned = [new(1, partition_key=f"k{n}")[0] for n in range(12)]
    results = await three.enqueue_each(pinned)
    failed = [r for r in results if isinstance(r, RedisUnavailable)]
    assert failed and len(failed) < len(results)
    assert all(r.outcome == "queued" for r in results if not isinstance(r, RedisUnavailable))
    assert await three.size() == len(results) - len(failed)


async def test_a_retry_waits_and_comes_back_in_its_own_partition(three: Partitions) -> None:
    for _ in range(3):
        await three.enqueue(new(1))
    claimed = [(await three.claim(WORKER, 1, holder=HOLDER))[0] for _ in range(3)]
    failing = next(m for m in claimed if m.partition == 2)
    assert await three.retry_later(WORKER, failing, 0, "503 busy", holder=HOLDER)
    assert await three.promote_due() == 1
    assert await sizes(three) == [0, 0, 1]
    (again,) = await three.claim(WORKER, 5, holder=HOLDER)
    assert (again.id, again.partition, again.attempt) == (failing.id, 2, 2)
    status = await Partitions(three.redis).status(failing.id)
    assert status is not None and status.last_error == "503 busy"
