"""Making a real server refuse writes while it still answers, the three ways production does.

- `oom`: `maxmemory` reached under `noeviction` (the policy ferry requires): OOM.
- `misconf`: it cannot persist: a failed BGSAVE with save points and
  `stop-writes-on-bgsave-error yes` (the default) refuses writes, and PING, with
  MISCONF. The snapshot fails because a directory stands where the dump file
  would be renamed to, which stops root too (a read-only directory would not).
- `readonly`: a failover left the client on a replica (here, of a master that
  is not there): READONLY.

Each is undone at the end as an operator would: memory freed, the disk fixed
and a snapshot taken, the server promoted. Works on Redis 7.0 and on Valkey.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.processes import wait_until
from tests.support.servers import RedisProcess, free_port

REFUSALS = ("oom", "misconf", "readonly")
# The error code each refusal answers with: what ferry must pass on to whoever waits.
REASON = {"oom": "OOM", "misconf": "MISCONF", "readonly": "READONLY"}


@contextmanager
def writes_refused(server: RedisProcess, how: str) -> Iterator[None]:
    """`server` refuses every write inside the block, reads still served (but PING under MISCONF)."""
    admin = server.client()
    blocker = server.data_dir / "dump.rdb"
    if how == "oom":
        admin.config_set("maxmemory", 1)
    elif how == "misconf":
        blocker.mkdir()
        (blocker / "in-the-way").write_text("")  # a non-empty directory: rename() onto it fails
        admin.config_set("save", "3600 1")
        admin.bgsave()
        wait_until(lambda: _persistence(server)["rdb_last_bgsave_status"] == "err", timeout=10)
    elif how == "readonly":
        admin.replicaof("127.0.0.1", free_port())  # nothing listens there: it stays a replica of nobody
    else:
        raise ValueError(f"no such refusal: {how}")
    try:
        yield
    finally:
        if how == "oom":
            admin.config_set("maxmemory", 0)
        elif how == "misconf":
            shutil.rmtree(blocker)
            admin.bgsave()
            wait_until(
                lambda: _persistence(server)["rdb_last_bgsave_status"] == "ok"
                and not _persistence(server)["rdb_bgsave_in_progress"],
                timeout=10,
            )
            admin.config_set("save", "")
        else:
            admin.replicaof("NO", "ONE")
        admin.close()


def _persistence(server: RedisProcess) -> dict[str, object]:
    client = server.client()
    try:
        return client.info("persistence")  # type: ignore[no-any-return]
    finally:
        client.close()
