"""A Sentinel set started once for the tests of a module, and one Cluster for the session's
modules (servers.SharedCluster: emptied for each, replaced when one left it damaged)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.scaling.servers import ClusterSet, SentinelSet, SharedCluster


@pytest.fixture(scope="module")
def sentinel_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    servers = SentinelSet(tmp_path_factory.mktemp("sentinel-set"))
    try:
        servers.start()
        yield servers
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedCluster]:
    shared = SharedCluster(tmp_path_factory.mktemp("clusters"))
    try:
        yield shared
    finally:
        shared.stop()


@pytest.fixture(scope="module")
def cluster_set(shared_cluster: SharedCluster) -> ClusterSet:
    """The session's Cluster for this module's tests, emptied; they run in file order on it."""
    return shared_cluster.get()
