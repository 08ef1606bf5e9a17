"""Which servers a REDIS_URL names: one Redis, a master found through Sentinel, or a Cluster.

- `redis://`, `rediss://`, `unix://`: one server, as redis-py reads the URL.
- `redis+sentinel://[user:password@]h1:26379,h2:26379/<service>[/db]`
  (`rediss+sentinel://` with TLS): the master of `<service>` that the sentinels
  name, asked again at every new connection, so a failover is followed. The
  user and password are the master's (and its replicas'); sentinels with a
  password of their own take `?sentinel_username=...&sentinel_password=...`.
- `redis+cluster://[user:password@]h1:7000,h2:7001` (`rediss+cluster://`): a
  Redis Cluster, reached through any of the nodes named.

Pure parsing, no client: the settings check a URL with it before anything connects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qsl, urlencode

SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}  # scheme -> TLS
CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
SERVER_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_SENTINEL_PORT = 26379
DEFAULT_CLUSTER_PORT = 6379
SENTINEL_AUTH_OPTIONS = ("sentinel_username", "sentinel_password")
SENTINEL_FORM = "redis+sentinel://[user:password@]host:26379,host:26379/<service-name>[/db]"
CLUSTER_FORM = "redis+cluster://[user:password@]host:7000,host:7001,..."

Kind = Literal["server", "sentinel", "cluster"]
Address = tuple[str, int]


@dataclass(frozen=True)
class Topology:
    """What a REDIS_URL names.

    `node_url` is a `redis://` (or `rediss://`) URL with no host that carries what
    every data node is reached with: credentials, database, TLS and other options.
    """

    kind: Kind
    node_url: str
    nodes: tuple[Address, ...] = ()  # the sentinels, or the cluster's seed nodes
    service: str = ""  # the master's name at the sentinels
    tls: bool = False
    sentinel_auth: dict[str, str] = field(default_factory=dict)


def parse_redis_url(url: str) -> Topology:
    """The topology `url` names; ValueError with a one-line reason for a URL that names none."""
    scheme, separator, rest = url.partition("://")
    scheme = scheme.lower()
    if separator and scheme in SERVER_SCHEMES:
        return Topology("server", url)
    if not separator or (scheme not in SENTINEL_SCHEMES and scheme not in CLUSTER_SCHEMES):
        raise ValueError(
            "must start with redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
            "redis+cluster:// or rediss+cluster://"
        )
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    options = parse_qsl(query, keep_blank_values=True)
    sentinel_auth = {name: value for name, value in options if name in SENTINEL_AUTH_OPTIONS}
    node_options = [(name, value) for name, value in options if name not in SENTINEL_AUTH_OPTIONS]
    if scheme in SENTINEL_SCHEMES:
        tls = SENTINEL_SCHEMES[scheme]
        service, _, database = path.partition("/")
        if not service:
            raise ValueError(f"names no master: the form is {SENTINEL_FORM}")
        if database and not database.isdigit():
            raise ValueError(f"the database after the master's name must be a number: the form is {SENTINEL_FORM}")
        nodes = _addresses(hosts, DEFAULT_SENTINEL_PORT, SENTINEL_FORM)
        kind: Kind = "sentinel"
    else:
        tls = CLUSTER_SCHEMES[scheme]
        if path.strip("/"):
            raise ValueError(f"a cluster has one database and no path: the form is {CLUSTER_FORM}")
        service, database = "", ""
        nodes = _addresses(hosts, DEFAULT_CLUSTER_PORT, CLUSTER_FORM)
        kind = "cluster"
    node_url = f"{'rediss' if tls else 'redis'}://{userinfo}{at}/{database}"
    if node_options:
        node_url += "?" + urlencode(node_options)
    return Topology(kind, node_url, nodes, service, tls, sentinel_auth)


def _addresses(hosts: str, default_port: int, form: str) -> tuple[Address, ...]:
    """`h1:26379,[::1]:26380,h3` as (host, port) pairs."""
    addresses = []
    for item in hosts.split(","):
        item = item.strip()
        if item.startswith("["):  # an IPv6 address
            host, _, port = item[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = item.partition(":")
        if not host:
            raise ValueError(f"names no host in {item!r}: the form is {form}")
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"has a port that is not one in {item!r}: the form is {form}")
        addresses.append((host, int(port) if port else default_port))
    return tuple(addresses)
