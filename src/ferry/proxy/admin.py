"""The proxy's operator routes: dead letters (list, replay, purge) and the queue's
snapshot, for admin keys only; and the worker registry for Prometheus.

API keys send messages; they never read, replay or delete other clients'
messages, so these routes take only the keys of FERRY_ADMIN_API_KEYS. No key,
or one that is not ours: 401 (nothing more is said). A valid API key: 403
`forbidden`, or 403 `admin_disabled` when no admin key is configured at all,
so an operator learns which setting is missing.

`/api/v1/sd/workers` is what Prometheus's `http_sd_configs` reads, and follows
the rules of `/metrics` (FERRY_HEALTH_METRICS_NEED_KEY): a Prometheus that may
scrape the proxy may also learn where the workers' metrics are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator
from starlette.responses import Response

from ferry.logs import get_logger
from ferry.observe import Snapshot, WorkerRecord, registered_workers, take_snapshot
from ferry.proxy.auth import ApiKeys
from ferry.proxy.errors import ErrorCode, documented, error_response
from ferry.proxy.schemas import DeadLetterPage, model_response
from ferry.queue import Handled, Partitions
from ferry.settings import Settings
from ferry.validation import one_line

log = get_logger(__name__)

DEAD_LETTERS = "/api/v1/dead-letters"
STATS = "/api/v1/stats"
SD_WORKERS = "/api/v1/sd/workers"
MAX_PAGE = 1000
MAX_IDS = 1000
MAX_ID_CHARS = 200
MAX_OFFSET = 1_000_000_000  # keeps offset + limit a valid LRANGE index


class DeadLetterSelection(BaseModel):
    """Which dead letters: `{"ids": [...]}` or `{"all": true}`, exactly one of them."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"oneOf": [{"required": ["ids"]}, {"required": ["all"]}]},
    )

    # Absent rather than null when not given, so no None in their types (nor in the schema).
    ids: list[Annotated[str, Field(min_length=1, max_length=MAX_ID_CHARS)]] = Field(
        None, min_length=1, max_length=MAX_IDS  # type: ignore[arg-type]
    )
    all: Literal[True] = Field(None)  # type: ignore[arg-type]

    @model_validator(mode="after")
    def _exactly_one(self) -> DeadLetterSelection:
        if len(self.model_fields_set & {"ids", "all"}) != 1:
            raise ValueError('give exactly one of "ids" and "all": true')
        return self


class Replayed(BaseModel):
    replayed: int
    not_dead: list[str] = Field(description="Ids given that were not dead letters: left alone.")


class Purged(BaseModel):
    purged: int
    not_dead: list[str] = Field(description="Ids given that were not dead letters: left alone.")


class TargetGroup(BaseModel):
    """One worker as a Prometheus http_sd target group."""

    targets: list[str]
    labels: dict[str, str]

    @classmethod
    def of(cls, worker: WorkerRecord) -> TargetGroup:
        url = urlsplit(worker.metrics_url)
        labels = {"worker_id": worker.id, "host": worker.host, "__scheme__": url.scheme, "__metrics_path__": url.path}
        return cls(targets=[url.netloc], labels=labels)


TARGET_GROUPS = TypeAdapter(list[TargetGroup])


class _Refused(Exception):
    """Raised by the admin check so that nothing else of the request is looked at."""

    def __init__(self, response: Response) -> None:
        self.response = response


async def _refused(request: Request, error: _Refused) -> Response:
    return error.response


REFUSALS = (
    ErrorCode.UNAUTHORIZED,
    ErrorCode.FORBIDDEN,
    ErrorCode.ADMIN_DISABLED,
    ErrorCode.INVALID_REQUEST,
    ErrorCode.REDIS_UNAVAILABLE,
    ErrorCode.REDIS_REFUSING_WRITES,
)
# The proxy's document defines one bearer scheme; on these routes its token is an admin key.
ADMIN_SECURITY: dict[str, Any] = {"security": [{"ApiKey": []}]}
ADMIN_ONLY = "Needs an admin key (FERRY_ADMIN_API_KEYS) as the bearer token; API keys get 403."
# The route reads the body itself, after the key check (see `_selection`): described here.
SELECTION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": DeadLetterSelection.model_json_schema()}},
    },
    **ADMIN_SECURITY,
}


async def _selection(request: Request) -> DeadLetterSelection:
    """The request's selection, read only once the caller has shown an admin key.

    A body parameter would have FastAPI read and judge the body first: a client
    without an admin key would learn about it, and an unreadable body would get
    FastAPI's own 400 instead of a 422 with our code.
    """
    try:
        return DeadLetterSelection.model_validate_json(await request.body())
    except ValidationError as error:
        raise _Refused(error_response(ErrorCode.INVALID_REQUEST, one_line(error, "body"))) from None


def add_admin_routes(
    app: FastAPI,
    settings: Settings,
    queue: Partitions,
    api_keys: ApiKeys,
    metrics_guard: Callable[[Request], Response | None],
) -> None:
    """Add the operator routes to the proxy's app; `metrics_guard` is /metrics' rule."""
    admin_keys = ApiKeys.admin_from_settings(settings)

    def admin_only(request: Request) -> None:
        """Note the admin key's id; refuse anyone else before their request is read further."""
        authorization = request.headers.get("authorization")
        if admin_keys is not None and (key_id := admin_keys.identify(authorization)) is not None:
            request.state.admin_key = key_id
            return
        if api_keys.identify(authorization) is None:
            raise _Refused(error_response(ErrorCode.UNAUTHORIZED, "a valid admin key is required"))
        if admin_keys is None:
            detail = "no admin keys are configured: set FERRY_ADMIN_API_KEYS"
            raise _Refused(error_response(ErrorCode.ADMIN_DISABLED, detail))
        detail = "an API key may not administer: use a key of FERRY_ADMIN_API_KEYS"
        raise _Refused(error_response(ErrorCode.FORBIDDEN, detail))

    router = APIRouter(
        prefix=DEAD_LETTERS,
        tags=["dead letters"],
        dependencies=[Depends(admin_only)],
        responses=documented(*REFUSALS),
    )

    @router.get(
        "",
        summary="A page of dead letters, the most recently dead first",
        description=ADMIN_ONLY,
        response_model=DeadLetterPage,
        response_description="the page, and how many there are in all",
        openapi_extra=ADMIN_SECURITY,
    )
    async def list_dead_letters(
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    ) -> Response:
        # A RedisFailure here, as on every route of the app, is answered by its handler.
        letters = await queue.dead_letters(limit, offset)
        total = await queue.dead_size()
        return model_response(DeadLetterPage.of(letters, total, limit, offset))

    @router.post(
        "/replay",
        summary="Put dead letters back on the queue, attempts reset",
        description=ADMIN_ONLY + ' Body: {"ids": [...]} or {"all": true}; all goes the longest dead first.',
        response_model=Replayed,
        response_description="how many were queued again; ids that were not dead letters",
        openapi_extra=SELECTION_BODY,
    )
    async def replay_dead_letters(request: Request) -> Response:
        selection = await _selection(request)
        handled = await (queue.replay_all() if selection.all else queue.replay(selection.ids))
        _log("dead letters replayed", request, selection, handled)
        return model_response(Replayed(replayed=handled.count, not_dead=list(handled.not_dead)))

    @router.post(
        "/purge",
        summary="Delete dead letters and their bodies for good",
        description=ADMIN_ONLY + ' Body: {"ids": [...]} or {"all": true}.',
        response_model=Purged,
        response_description="how many were deleted; ids that were not dead letters",
        openapi_extra=SELECTION_BODY,
    )
    async def purge_dead_letters(request: Request) -> Response:
        selection = await _selection(request)
        handled = await queue.purge(None if selection.all else selection.ids)
        _log("dead letters purged", request, selection, handled)
        return model_response(Purged(purged=handled.count, not_dead=list(handled.not_dead)))

    observe = APIRouter(tags=["operators"])

    @observe.get(
        STATS,
        summary="The queue, its counters, every registered worker and the autoscalers' last decisions",
        description=ADMIN_ONLY + " Rates: difference two readings (`taken_at` is Redis's clock).",
        response_model=Snapshot,
        response_description="one snapshot, the same that ferry queue watch and ferry verify read",
        responses=documented(*REFUSALS),
        dependencies=[Depends(admin_only)],
        openapi_extra=ADMIN_SECURITY,
    )
    async def stats() -> Response:
        return model_response(await take_snapshot(queue))

    @observe.get(
        SD_WORKERS,
        summary="The registered workers that serve metrics, in Prometheus http_sd format",
        description="As /metrics: an API key is needed when FERRY_HEALTH_METRICS_NEED_KEY is set.",
        response_model=list[TargetGroup],
        response_description="one target group per worker, labelled worker_id and host",
        responses=documented(ErrorCode.UNAUTHORIZED, ErrorCode.REDIS_UNAVAILABLE),
    )
    async def sd_workers(request: Request) -> Response:
        if (refused := metrics_guard(request)) is not None:
            return refused
        groups = [TargetGroup.of(worker) for worker in await registered_workers(queue) if worker.metrics_url]
        return Response(TARGET_GROUPS.dump_json(groups), media_type="application/json")

    app.include_router(router)
    app.include_router(observe)
    app.add_exception_handler(_Refused, _refused)  # type: ignore[arg-type]


def _log(event: str, request: Request, selection: DeadLetterSelection, handled: Handled) -> None:
    """Who changed the dead-letter list, and how much: operators audit these."""
    log.info(
        event,
        admin_key=request.state.admin_key,
        client=request.client.host if request.client else None,  # X-Forwarded-For's from a trusted proxy
        all=bool(selection.all),
        count=handled.count,
        not_dead=len(handled.not_dead),
    )
