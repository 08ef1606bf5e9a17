"""A Sentinel set started once for the tests of a module, and one Cluster for the session's
modules (servers.SharedCluster: emptied for each, replaced when one left it damaged, and
stopped once no module left to run asks for it)."""

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
def module_cluster(shared_cluster: SharedCluster, request: pytest.FixtureRequest) -> Iterator[ClusterSet]:
    """The session's Cluster for this module, emptied; stopped after it if no later module
    needs it (nine idle nodes would otherwise run beside every test after the last)."""
    yield shared_cluster.get()
    if not _asked_for_later(request, "shared_cluster"):
        shared_cluster.stop()


@pytest.fixture(scope="module")
def cluster_set(module_cluster: ClusterSet) -> ClusterSet:
    """The session's Cluster for this module's tests; they run in file order on it."""
    return module_cluster


def _asked_for_later(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether a test after this module's last one uses `fixture`."""
    items = request.session.items
    last = max(index for index, item in enumerate(items) if getattr(item, "module", None) is request.module)
    return any(fixture in getattr(item, "fixturenames", ()) for item in items[last + 1 :])
