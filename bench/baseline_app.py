"""Baselines for bench/proxy_throughput.py: the leanest ingest routes ferry could have.

Two bare Starlette apps under uvicorn (uvloop + httptools, one process, no access log):

- `bare`:  `POST /api/v1/messages` reads the body and answers `202 {"id": ..., "status": "queued"}`;
- `lpush`: the same plus one redis-py (hiredis) `LPUSH message_queue <body>` per request.

`--one-write` serves them with ferry's own HTTP protocol (a response in one write, as
`ferry proxy` sends it), to tell what that alone is worth.

    python bench/baseline_app.py --kind bare|lpush --port 8000 [--certfile C --keyfile K] \
        [--redis-url redis://127.0.0.1:6379] [--one-write] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import redis.asyncio as aioredis
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ferry.adapters.uvicorn import ProxyHttpProtocol


def bare_app() -> Starlette:
    async def ingest(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse({"id": uuid.uuid4().hex, "status": "queued"}, status_code=202)

    return Starlette(routes=[Route("/api/v1/messages", ingest, methods=["POST"])])


def lpush_app(redis_url: str) -> Starlette:
    client: aioredis.Redis | None = None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal client
        client = aioredis.Redis.from_url(redis_url)  # hiredis parser when installed
        try:
            yield
        finally:
            await client.aclose()

    async def ingest(request: Request) -> JSONResponse:
        assert client is not None
        await client.lpush("message_queue", await request.body())  # type: ignore[misc]
        return JSONResponse({"id": uuid.uuid4().hex, "status": "queued"}, status_code=202)

    return Starlette(
        routes=[Route("/api/v1/messages", ingest, methods=["POST"])], lifespan=lifespan
    )


def app_from_env() -> Starlette:
    """The app `--workers N` serves: uvicorn's worker processes import it by name."""
    kind, redis_url = os.environ["BENCH_BASELINE_KIND"], os.environ["BENCH_BASELINE_REDIS_URL"]
    return bare_app() if kind == "bare" else lpush_app(redis_url)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kind", choices=["bare", "lpush"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certfile")
    parser.add_argument("--keyfile")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--one-write", action="store_true", help="ferry's ProxyHttpProtocol")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    args = parser.parse_args()
    app: Starlette | str = bare_app() if args.kind == "bare" else lpush_app(args.redis_url)
    if args.workers > 1:
        os.environ.update(BENCH_BASELINE_KIND=args.kind, BENCH_BASELINE_REDIS_URL=args.redis_url)
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        app = "bench.baseline_app:app_from_env"
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http=ProxyHttpProtocol if args.one_write else "httptools",
        workers=args.workers,
        factory=args.workers > 1,
        access_log=False,
        log_level="warning",
        ssl_certfile=args.certfile,
        ssl_keyfile=args.keyfile,
    )


if __name__ == "__main__":
    main()
