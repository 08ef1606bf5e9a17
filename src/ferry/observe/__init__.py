"""What operators see: the worker registry and one snapshot of the whole queue.

`registry` is how each worker describes itself in Redis (written with its
heartbeat); `snapshot` reads the queue, its counters and the registry in one go,
and derives rates from two readings. The CLI, the proxy's /api/v1/stats and the
dashboard all show the same `Snapshot`.
"""

from ferry.observe.registry import WorkerRecord, registered_workers
from ferry.observe.snapshot import Rates, Reading, Snapshot, rates, take_snapshot

__all__ = ["Rates", "Reading", "Snapshot", "WorkerRecord", "rates", "registered_workers", "take_snapshot"]
