"""A Sentinel set and a Cluster, each started once for the tests of a module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeVar

import pytest

from tests.scaling.servers import ClusterSet, SentinelSet

Servers = TypeVar("Servers", SentinelSet, ClusterSet)


def _running(servers: Servers) -> Iterator[Servers]:
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    yield from _running(SentinelSet(tmp_path_factory.mktemp("sentinel-set")))


@pytest.fixture(scope="module")
def cluster_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    yield from _running(ClusterSet(tmp_path_factory.mktemp("cluster"), replicas=1))
