"""The reliable queue on Redis: where a message can be, and the one Lua script for each move.

`keys` names every key, `message` the stored message and what the API reports of
it, `queue` the operations on one key group (each one round trip), `partitions`
those over every partition, `lua/` the scripts, `connection`
the Redis client and the checks ferry makes before trusting a server, `batching`
the coalescing of concurrent calls into one. docs/storage.md describes the layout.
"""

from ferry.queue.partitions import Partitions
from ferry.queue.queue import Enqueued, Fenced, Handled, Limits, NotDurable, Queue, Reaped, Snapshot

__all__ = ["Enqueued", "Fenced", "Handled", "Limits", "NotDurable", "Partitions", "Queue", "Reaped", "Snapshot"]
