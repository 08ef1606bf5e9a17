"""The live dashboard: one static page and its scripts, served by the proxy at /dashboard
and by `ferry dashboard`.

The page holds no data and no key. A browser cannot put a Bearer header on a
navigation, so the page asks for an admin key, keeps it in sessionStorage (this
tab only, gone when it closes) and sends it as `Authorization` to GET
/api/v1/stats every second: the key never travels in a URL, a cookie or a log
line, and a request without it reads nothing. The chart library (uPlot, MIT) is
shipped in static/: no build step, nothing from another origin, and a
Content-Security-Policy that allows scripts, styles and requests from this origin
alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ferry.observe.snapshot import take_snapshot
from ferry.proxy.admin import STATS
from ferry.proxy.auth import ApiKeys
from ferry.proxy.errors import ErrorCode, error_response, redis_failed
from ferry.queue import Partitions
from ferry.queue.connection import connect
from ferry.queue.errors import RedisFailure

PAGE = "/dashboard"
STATIC = PAGE + "/static/"
# Every file the page loads, and its type: nothing else under static/ is served.
ASSETS = {
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
    "uPlot.LICENSE": "text/plain; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    # uPlot sets styles through the DOM (allowed); no inline script or style, no eval.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _read(name: str) -> bytes:
    return (files("ferry.observe") / "static" / name).read_bytes()


def dashboard_routes(metrics_path: str | None) -> list[Route]:
    """The page and its files. `metrics_path`: where the page reads the proxy's request
    times for its p95 (same origin, no key), or None where there is no such page."""
    page = _read("dashboard.html").replace(b"{{metrics_path}}", (metrics_path or "").encode())
    assets = {name: (_read(name), media_type) for name, media_type in ASSETS.items()}

    async def dashboard(request: Request) -> Response:
        headers = SECURITY_HEADERS | {"Cache-Control": "no-store"}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    async def asset(request: Request) -> Response:
        found = assets.get(request.path_params["name"])
        if found is None:
            return error_response(ErrorCode.NOT_FOUND, "no such file")
        body, media_type = found
        return Response(body, media_type=media_type, headers=SECURITY_HEADERS | {"Cache-Control": "max-age=3600"})

    return [Route(PAGE, dashboard, methods=["GET"]), Route(STATIC + "{name}", asset, methods=["GET"])]


def standalone_app(redis_url: str, admin_keys: ApiKeys) -> Starlette:
    """`ferry dashboard`: the page, and the proxy's /api/v1/stats read straight from Redis
    (the same snapshot, the same admin-key rule), for a machine that runs no proxy."""
    redis = connect(redis_url, retries=1)
    queue = Partitions(redis)  # a reader: it finds the partitions in their record

    async def stats(request: Request) -> Response:
        if admin_keys.identify(request.headers.get("authorization")) is None:
            return error_response(ErrorCode.UNAUTHORIZED, "a valid admin key is required")
        try:
            snapshot = await take_snapshot(queue)
        except RedisFailure as error:
            return redis_failed(error)
        return Response(snapshot.model_dump_json(), media_type="application/json", headers={"Cache-Control": "no-store"})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await redis.aclose()

    routes = [*dashboard_routes(None), Route(STATS, stats, methods=["GET"])]
    return Starlette(routes=routes, lifespan=lifespan)
