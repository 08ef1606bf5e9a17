"""What a REDIS_URL may name, and the settings past one Redis, checked without a server."""

from __future__ import annotations

import subprocess

import pytest
from redis.crc import key_slot

from ferry.queue.keys import Keys
from ferry.queue.topology import parse_redis_url
from ferry.settings import SettingsError, load_settings, redacted_url, scrub
from tests.support.processes import bare_env, ferry_command


def test_a_sentinel_url_names_the_sentinels_the_master_and_its_database() -> None:
    url = "rediss+sentinel://ferry:p%40ss@s1.example:26379,[::1]:26380,s3/orders/2?sentinel_password=spw&ssl_cert_reqs=none"
    topology = parse_redis_url(url)
    assert topology.kind == "sentinel" and topology.tls
    assert topology.nodes == (("s1.example", 26379), ("::1", 26380), ("s3", 26379))
    assert topology.service == "orders"
    assert topology.sentinel_auth == {"sentinel_password": "spw"}
    assert topology.node_url == "rediss://ferry:p%40ss@/2?ssl_cert_reqs=none"


def test_a_cluster_url_names_its_seed_nodes() -> None:
    topology = parse_redis_url("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7001")
    assert topology.kind == "cluster" and not topology.tls
    assert topology.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001))
    assert topology.node_url == "redis://:pw@/"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://s1:26379,s2:26379", "names no master"),
        ("redis+sentinel://s1:26379/ferry/zero", "must be a number"),
        ("redis+sentinel://s1:26379,:26380/ferry", "names no host"),
        ("redis+sentinel://s1:99999/ferry", "port that is not one"),
        ("redis+cluster://n1:7000/3", "a cluster has one database"),
        ("sentinel://s1:26379/ferry", "must start with"),
    ],
)
def test_a_url_that_names_no_topology_is_refused_with_its_reason(url: str, reason: str) -> None:
    with pytest.raises(SettingsError, match=reason) as refused:
        load_settings(redis_url=url)
    assert str(refused.value).startswith("invalid setting REDIS_URL:")


def test_the_password_of_a_sentinel_or_cluster_url_is_never_shown() -> None:
    url = "redis+sentinel://:hunter2-pw@s1:26379,s2:26379/ferry?sentinel_password=other-secret"
    assert redacted_url(url) == "redis+sentinel://:***@s1:26379,s2:26379/ferry"
    assert "hunter2" not in scrub(f"cannot reach {url}", url) and "other-secret" not in scrub(url, url)
    with pytest.raises(SettingsError) as refused:
        load_settings(redis_url=url.replace("/ferry", ""))
    assert "hunter2" not in str(refused.value) and "other-secret" not in str(refused.value)


def test_every_key_of_the_queue_shares_the_slot_of_message_queue() -> None:
    """On a Cluster every multi-key script must touch one slot: `message_queue` itself
    (the guide's name, no braces) hashes whole, every other key by its `{message_queue}` tag."""
    keys = Keys()
    names = [
        getattr(keys, name)
        for name, member in vars(Keys).items()
        if isinstance(member, property) and name != "tag"
    ]
    names += [keys.message("01a2-id"), keys.in_flight("host-1"), keys.heartbeat("host-1")]
    slot = key_slot(b"message_queue")
    assert len(names) > 10
    assert {name: key_slot(name.encode()) for name in names} == dict.fromkeys(names, slot)


def test_strict_replicas_need_strict_durability() -> None:
    with pytest.raises(SettingsError, match="FERRY_STRICT_REPLICAS needs FERRY_DURABILITY=strict"):
        load_settings(strict_replicas=1)
    assert load_settings(strict_replicas=1, durability="strict").strict_replicas == 1


def test_more_partitions_than_ferry_asks_in_parallel_are_refused_at_start_with_one_line() -> None:
    done = subprocess.run(
        [ferry_command(), "dead", "list"],
        env=bare_env(FERRY_PARTITIONS="65", REDIS_URL="redis://127.0.0.1:1"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2, done
    assert done.stderr.startswith("ferry: invalid setting FERRY_PARTITIONS: "), done.stderr
    assert "64" in done.stderr and len(done.stderr.strip().splitlines()) == 1
