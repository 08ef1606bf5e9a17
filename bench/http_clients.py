"""HTTP clients: a bare loop of keep-alive POSTs to the sink, over HTTP, verified HTTPS and mTLS;
and ferry's own delivery path (its `Deliverer`, on each client it can use) in the same loop.

Each client runs in a process of its own (uvloop, one event loop, `concurrency` requests in
flight on as many pooled connections) and posts `count` 500-byte bodies; the sink times
first to last arrival, the client process reports its own CPU (all its threads: pyreqwest's
Tokio runtime and curl's are counted) per request. HTTPS uses a trustme CA the client
verifies, as ferry's worker verifies the main server's; mTLS adds a client certificate the
sink requires. A `Deliverer (...)` client is what a worker runs for each message (headers,
the answer judged, errors translated), less Redis: its cost over the bare loop of its
client is the delivery adapter's.

    python -m bench.http_clients --client aiohttp --url URL --count N --concurrency C
        [--cafile F [--certfile C --keyfile K]]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import harness
from bench.bodies import body

CLIENTS = ["aiohttp", "httpx", "curl-cffi", "pyreqwest", "Deliverer (aiohttp)", "Deliverer (pyreqwest)"]
HEADERS = {"Content-Type": "application/json"}
Post = Callable[[bytes], Awaitable[None]]


@dataclass(frozen=True)
class Tls:
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None

    def context(self) -> ssl.SSLContext | None:
        if not self.cafile:
            return None
        context = ssl.create_default_context(cafile=self.cafile)
        if self.certfile:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context


async def aiohttp_client(url: str, concurrency: int, tls: Tls) -> tuple[Post, Any]:
    import aiohttp

    context = tls.context()
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, ssl=context or True))

    async def post(data: bytes) -> None:
        async with session.post(url, data=data, headers=HEADERS) as response:
            response.raise_for_status()
            await response.read()

    return post, session.close


async def httpx_client(url: str, concurrency: int, tls: Tls) -> tuple[Post, Any]:
    import httpx

    context = tls.context() or True
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), verify=context)

    async def post(data: bytes) -> None:
        response = await client.post(url, content=data, headers=HEADERS)
        response.raise_for_status()

    return post, client.aclose


async def curl_client(url: str, concurrency: int, tls: Tls) -> tuple[Post, Any]:
    from curl_cffi.requests import AsyncSession

    cert = (tls.certfile, tls.keyfile) if tls.certfile else None
    session = AsyncSession(max_clients=concurrency, verify=tls.cafile or True, cert=cert)

    async def post(data: bytes) -> None:
        response = await session.post(url, data=data, headers=HEADERS)
        response.raise_for_status()

    return post, session.close


async def pyreqwest_client(url: str, concurrency: int, tls: Tls) -> tuple[Post, Any]:
    from pyreqwest.client import ClientBuilder

    builder = ClientBuilder().max_connections(concurrency).error_for_status(True)
    if tls.cafile:
        builder = builder.add_root_certificate_pem(Path(tls.cafile).read_bytes())
    if tls.certfile and tls.keyfile:
        builder = builder.identity_pem(Path(tls.certfile).read_bytes() + Path(tls.keyfile).read_bytes())
    client = builder.build()

    async def post(data: bytes) -> None:
        response = await client.post(url).header("Content-Type", HEADERS["Content-Type"]).body_bytes(data).build().send()
        await response.bytes()

    return post, client.close


def deliverer_client(name: str) -> Callable[[str, int, Tls], Awaitable[tuple[Post, Any]]]:
    """ferry's Deliverer on the client `name`, each body a message as the worker delivers it."""

    async def make(url: str, concurrency: int, tls: Tls) -> tuple[Post, Any]:
        from ferry.queue.message import Message, new_message_id
        from ferry.settings import Settings
        from ferry.worker.delivery import Deliverer, Verdict

        settings = Settings(MAIN_SERVER_URL=url, WORKER_CONCURRENCY=concurrency, FERRY_HTTP_CLIENT=name,
                            MAIN_SERVER_CA_FILE=tls.cafile, MAIN_SERVER_CERT_FILE=tls.certfile,
                            MAIN_SERVER_KEY_FILE=tls.keyfile)  # type: ignore[call-arg]
        deliverer = await Deliverer(settings).__aenter__()

        async def post(data: bytes) -> None:
            message = Message(new_message_id(), data, "application/json", 1, 0)
            outcome = await deliverer.deliver(message)
            if outcome.verdict is not Verdict.DELIVERED:
                raise RuntimeError(outcome.error)

        return post, lambda: deliverer.__aexit__(None, None, None)

    return make


MAKERS = {"aiohttp": aiohttp_client, "httpx": httpx_client, "curl-cffi": curl_client,
          "pyreqwest": pyreqwest_client, "Deliverer (aiohttp)": deliverer_client("aiohttp"),
          "Deliverer (pyreqwest)": deliverer_client("pyreqwest")}


async def loop(client: str, url: str, count: int, concurrency: int, tls: Tls) -> float:
    """Post `count` bodies; the CPU seconds this process spent doing it."""
    post, close = await MAKERS[client](url, concurrency, tls)
    pending = iter(range(count))

    async def one_lane() -> None:
        for number in pending:
            await post(body(number))

    before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.gather(*(one_lane() for _ in range(concurrency)))
    after = resource.getrusage(resource.RUSAGE_SELF)
    await close()
    return after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def installed(client: str) -> bool:
    module = {"curl-cffi": "curl_cffi", "Deliverer (aiohttp)": "aiohttp",
              "Deliverer (pyreqwest)": "pyreqwest"}.get(client, client)
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def one_run(client: str, sink: harness.Sink, tls: Tls, count: int, concurrency: int,
            timeout: float) -> dict[str, float]:
    sink.reset()
    command = [sys.executable, "-m", "bench.http_clients", "--client", client, "--url", sink.url,
               "--count", str(count), "--concurrency", str(concurrency)]
    for flag, value in (("--cafile", tls.cafile), ("--certfile", tls.certfile), ("--keyfile", tls.keyfile)):
        command += [flag, value] if value else []
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          cwd=harness.ROOT, env={**os.environ, "PYTHONPATH": str(harness.ROOT)})
    if done.returncode:
        raise RuntimeError(done.stderr[-1500:])
    cpu = json.loads(done.stdout)["cpu"]
    stats = sink.stats()
    if stats["unique"] != count:
        raise RuntimeError(f"the sink saw {stats['unique']} of {count}")
    return {"rate": (count - 1) / max(stats["last"] - stats["first"], 1e-6),
            "cpu_us_per_request": cpu / count * 1e6}


def run(clients: list[str], count: int, concurrencies: list[int], schemes: list[str], runs: int,
        retries: int, timeout: float) -> dict[str, Any]:
    present = [client for client in clients if installed(client)]
    missing = [client for client in clients if client not in present]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ferry-bench-clients-") as tmp:
        work = Path(tmp)
        from tests.support.certs import make_certs

        certs = make_certs(work)
        for scheme in schemes:
            server = (certs.server_cert, certs.server_key) if scheme != "http" else (None, None)
            sink = harness.Sink(work, *server, client_ca=certs.ca if scheme == "mtls" else None)
            tls = Tls()
            if scheme != "http":
                tls = Tls(str(certs.ca))
            if scheme == "mtls":
                tls = Tls(str(certs.ca), str(certs.client_cert), str(certs.client_key))
            try:
                cases = [(f"{client} {scheme} @{c}",
                          lambda cl=client, c=c: one_run(cl, sink, tls, count, c, timeout))
                         for c in concurrencies for client in present]
                series = harness.rounds(cases, runs, retries)
            finally:
                sink.close()
            for c in concurrencies:
                for client in present:
                    s = series[f"{client} {scheme} @{c}"]
                    rows.append({"client": client, "scheme": scheme, "concurrency": c,
                                 "rate": s.median("rate"),
                                 "cpu_us_per_request": s.median("cpu_us_per_request"),
                                 "foreign_load": s.median("foreign_load"),
                                 "failed": len([r for r in s.runs if "failed" in r])})
    return {"count": count, "rows": rows, "missing": missing}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--cafile")
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    args = parser.parse_args()
    import uvloop

    tls = Tls(args.cafile, args.certfile, args.keyfile)
    cpu = uvloop.run(loop(args.client, args.url, args.count, args.concurrency, tls))
    print(json.dumps({"cpu": cpu}))


if __name__ == "__main__":
    main()
