"""HTTP clients: a bare loop of keep-alive POSTs to the sink, over HTTP and verified HTTPS.

Each client runs in a process of its own (uvloop, one event loop, `concurrency` requests in
flight on as many pooled connections) and posts `count` 500-byte bodies; the sink times
first to last arrival, the client process reports its own CPU (all its threads: pyreqwest's
Tokio runtime and curl's are counted) per request. HTTPS uses a trustme CA the client
verifies, as ferry's worker verifies the main server's.

    python -m bench.http_clients --client aiohttp --url URL --count N --concurrency C [--cafile F]
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
from pathlib import Path
from typing import Any

from bench import harness
from bench.bodies import body

CLIENTS = ["aiohttp", "httpx", "curl-cffi", "pyreqwest"]
HEADERS = {"Content-Type": "application/json"}
Post = Callable[[bytes], Awaitable[None]]


async def aiohttp_client(url: str, concurrency: int, cafile: str | None) -> tuple[Post, Any]:
    import aiohttp

    context = ssl.create_default_context(cafile=cafile) if cafile else None
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, ssl=context or True))

    async def post(data: bytes) -> None:
        async with session.post(url, data=data, headers=HEADERS) as response:
            response.raise_for_status()
            await response.read()

    return post, session.close


async def httpx_client(url: str, concurrency: int, cafile: str | None) -> tuple[Post, Any]:
    import httpx

    context = ssl.create_default_context(cafile=cafile) if cafile else True
    client = httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency), verify=context)

    async def post(data: bytes) -> None:
        response = await client.post(url, content=data, headers=HEADERS)
        response.raise_for_status()

    return post, client.aclose


async def curl_client(url: str, concurrency: int, cafile: str | None) -> tuple[Post, Any]:
    from curl_cffi.requests import AsyncSession

    session = AsyncSession(max_clients=concurrency, verify=cafile or True)

    async def post(data: bytes) -> None:
        response = await session.post(url, data=data, headers=HEADERS)
        response.raise_for_status()

    return post, session.close


async def pyreqwest_client(url: str, concurrency: int, cafile: str | None) -> tuple[Post, Any]:
    from pyreqwest.client import ClientBuilder

    builder = ClientBuilder().max_connections(concurrency).error_for_status(True)
    if cafile:
        builder = builder.add_root_certificate_pem(Path(cafile).read_bytes())
    client = builder.build()

    async def post(data: bytes) -> None:
        response = await client.post(url).header("Content-Type", HEADERS["Content-Type"]).body_bytes(data).build().send()
        await response.bytes()

    return post, client.close


MAKERS = {"aiohttp": aiohttp_client, "httpx": httpx_client, "curl-cffi": curl_client,
          "pyreqwest": pyreqwest_client}


async def loop(client: str, url: str, count: int, concurrency: int, cafile: str | None) -> float:
    """Post `count` bodies; the CPU seconds this process spent doing it."""
    post, close = await MAKERS[client](url, concurrency, cafile)
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
    module = {"curl-cffi": "curl_cffi"}.get(client, client)
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def one_run(client: str, sink: harness.Sink, cafile: Path | None, count: int, concurrency: int,
            timeout: float) -> dict[str, float]:
    sink.reset()
    command = [sys.executable, "-m", "bench.http_clients", "--client", client, "--url", sink.url,
               "--count", str(count), "--concurrency", str(concurrency)]
    if cafile:
        command += ["--cafile", str(cafile)]
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
            tls = (certs.server_cert, certs.server_key) if scheme == "https" else (None, None)
            sink = harness.Sink(work, *tls)
            cafile = certs.ca if scheme == "https" else None
            try:
                cases = [(f"{client} {scheme} @{c}",
                          lambda cl=client, c=c: one_run(cl, sink, cafile, count, c, timeout))
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
    args = parser.parse_args()
    import uvloop

    cpu = uvloop.run(loop(args.client, args.url, args.count, args.concurrency, args.cafile))
    print(json.dumps({"cpu": cpu}))


if __name__ == "__main__":
    main()
