"""The guide's start_multiple_workers: worker-1..N, metrics on base..base+N-1, scaled live.

Scaled by the autoscaler, by `ferry workers scale` through Redis (every platform),
and by SIGTTIN/SIGTTOU (the POSIX shortcut).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from dataclasses import dataclass, field

from prometheus_client import start_http_server
from redis.asyncio import Redis

from ferry import platform
from ferry.logs import configure, get_logger
from ferry.metrics import SupervisorMetrics
from ferry.processes.autoscaler import AutoscalePolicy, Autoscaler, Decision, Look
from ferry.processes.control import PoolControl, pool_id
from ferry.processes.measure import PoolMeter, Target
from ferry.processes.redis_url import resolve_redis_url
from ferry.processes.supervisor import ChildSpec, Supervisor, child_env, ferry_argv
from ferry.queue import Partitions
from ferry.queue.connection import connect
from ferry.queue.errors import RedisBug, RedisFailure
from ferry.queue.keys import Keys
from ferry.settings import Settings, environment, secret_environment

log = get_logger(__name__)

WORKER_GROUP = "worker"
# What a worker needs of the secret settings (no API keys: it answers no client).
WORKER_SECRETS = frozenset({"redis_url", "main_server_url", "signing_secret"})
# The decisions list keeps this many, newest first.
DECISIONS_KEPT = 50


@dataclass
class WorkerPool:
    supervisor: Supervisor
    settings: Settings
    redis_url: str
    base_metrics_port: int
    metrics: SupervisorMetrics
    policy: AutoscalePolicy | None = None  # its limits bound every change, a request's too
    wanted: int = 0  # the target of the last change asked for
    # One change of size at a time: the autoscaler, a request and a signal may ask together.
    _resizing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def size(self) -> int:
        return len([n for n, c in self.supervisor.children.items() if c.spec.group == WORKER_GROUP])

    def metrics_ports(self) -> list[int]:
        return [self.base_metrics_port + i for i in range(self.size)]

    def targets(self) -> list[Target]:
        """The running workers, for the autoscaler to measure."""
        return [
            Target(child.process.pid, int(child.spec.env.get("WORKER_METRICS_PORT", "0")))
            for child in self.supervisor.children.values()
            if child.spec.group == WORKER_GROUP and child.process is not None and child.process.returncode is None
        ]

    def _spec(self, number: int) -> ChildSpec:
        env = environment(self.settings)
        env |= {"WORKER_ID": f"worker-{number}", "WORKER_METRICS_PORT": str(self.base_metrics_port + number - 1)}
        secrets = secret_environment(self.settings, self.redis_url, WORKER_SECRETS)
        return ChildSpec(f"worker-{number}", ferry_argv("worker"), child_env(**env), WORKER_GROUP, secrets)

    async def scale_to(self, count: int) -> None:
        """Add workers with the next numbers, or stop the highest-numbered ones gracefully."""
        self.wanted = count = max(0, count)
        async with self._resizing:
            while self.size < count:
                await self.supervisor.add(self._spec(self.size + 1))
            while self.size > count:
                await self.supervisor.remove(f"worker-{self.size}", self.stop_timeout_seconds)
            self.metrics.workers.set(self.size)

    def resize_soon(self, count: int) -> None:
        """Start a change to `count` (within the autoscaling limits) without waiting for it."""
        if self.policy is not None:
            count = min(max(count, self.policy.min_workers), self.policy.max_workers)
        self.wanted = max(0, count)
        resizing = asyncio.get_running_loop().create_task(self.scale_to(count))
        resizing.add_done_callback(_log_failure)

    @property
    def stop_timeout_seconds(self) -> float:
        # The worker's own grace period, and time to give back what it holds.
        return self.settings.shutdown_grace_seconds + 15


async def autoscale(pool: WorkerPool, redis: Redis, policy: AutoscalePolicy) -> None:
    """Look at the queue and the workers every interval; change the count when the autoscaler says so.

    No failure ends it: Redis away is logged and the next look tried; anything else
    is logged with its traceback, and the autoscaler goes on with its next look.
    """
    autoscaler = Autoscaler(policy)
    queue = Partitions(redis)  # a reader: it finds the partitions in their record
    meter = PoolMeter(pool.settings.metrics_host)
    while True:
        await asyncio.sleep(policy.interval_seconds)
        try:
            await _autoscale_once(pool, queue, autoscaler, meter)
        except RedisFailure as error:
            if isinstance(error, RedisBug):
                log.error("autoscaler cannot read the queue", error=str(error), exc_info=error)
            else:
                log.warning("autoscaler cannot read the queue", error=str(error))
        except Exception as error:
            log.error("autoscaler failed unexpectedly, going on", error=str(error), exc_info=error)


async def _autoscale_once(pool: WorkerPool, queue: Partitions, autoscaler: Autoscaler, meter: PoolMeter) -> None:
    size = await queue.size()
    pool.metrics.queue_size.set(size)
    measured = await meter.measure(pool.targets())
    look = Look(
        queue_size=size,
        workers=pool.size,
        cpu_percent=measured.cpu_percent,
        p95_seconds=measured.p95_seconds,
        active=measured.active,
        concurrency=pool.settings.worker_concurrency,
    )
    decision = autoscaler.observe(time.monotonic(), look)
    if decision is None:
        return
    log.info(
        "autoscaling",
        direction=decision.direction,
        rule=decision.rule,
        workers_from=pool.size,
        workers_to=decision.workers,
        reason=decision.reason,
        queue_size=look.queue_size,
        cpu_percent=look.cpu_percent,
        p95_seconds=look.p95_seconds,
        active=look.active,
    )
    pool.metrics.decisions.labels(decision.direction, decision.rule).inc()
    await record_decision(queue.redis, queue.keys, decision, pool.size)
    await pool.scale_to(decision.workers)


async def record_decision(redis: Redis, keys: Keys, decision: Decision, workers_from: int) -> None:
    """Keep the decision where `ferry verify` shows it (the newest 50); a Redis away
    loses the record, never the decision."""
    entry = {
        "at": time.time(),
        "host": socket.gethostname(),
        "pool": os.getpid(),  # the supervisor; with `host`, what `ferry workers scale --pool host:pid` takes
        "direction": decision.direction,
        "from": workers_from,
        "to": decision.workers,
        "rule": decision.rule,
        "reason": decision.reason,
    }
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.lpush(keys.autoscaler_decisions, json.dumps(entry))
            pipe.ltrim(keys.autoscaler_decisions, 0, DECISIONS_KEPT - 1)
            await pipe.execute()
    except RedisFailure as error:
        log.warning("cannot record the autoscaler's decision", error=str(error))


def control_channel(pool: WorkerPool, redis: Redis) -> PoolControl:
    """`ferry workers scale`'s way to this pool, through Redis."""
    return PoolControl(redis, Keys(), pool_id(), lambda: pool.size, lambda: pool.wanted, pool.resize_soon)


def _log_failure(task: asyncio.Task[None]) -> None:
    """A done callback: a background task that failed says so (nothing awaits it)."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("scaling failed", error=str(error), exc_info=error)


def handle_scaling_signals(pool: WorkerPool) -> None:
    """SIGTTIN adds a worker, SIGTTOU removes one (gunicorn's convention), without a restart."""
    if not platform.scaling_signals():
        return
    loop = asyncio.get_running_loop()

    def resize(step: int) -> None:
        log.info("scaling by signal", workers_from=pool.wanted, workers_to=max(0, pool.wanted + step))
        pool.resize_soon(pool.wanted + step)

    loop.add_signal_handler(signal.SIGTTIN, resize, 1)
    loop.add_signal_handler(signal.SIGTTOU, resize, -1)


async def serve_workers(
    settings: Settings,
    redis_url: str,
    num_workers: int,
    base_metrics_port: int,
    policy: AutoscalePolicy | None,
    metrics_port: int,
) -> int:
    """Run the pool until SIGTERM/SIGINT (0), or until every worker keeps crashing (1)."""
    metrics = SupervisorMetrics()
    if metrics_port:
        start_http_server(metrics_port, addr=settings.metrics_host, registry=metrics.registry)
    supervisor = Supervisor(on_restart=lambda name: metrics.restarts.labels(name).inc())
    pool = WorkerPool(supervisor, settings, redis_url, base_metrics_port, metrics, policy)
    stopping = asyncio.Event()
    platform.on_stop(stopping.set)
    handle_scaling_signals(pool)
    await pool.scale_to(policy.min_workers if policy and num_workers < policy.min_workers else num_workers)
    log.info(
        "workers started", workers=pool.size, metrics_ports=pool.metrics_ports(), autoscale=policy is not None, pool=pool_id()
    )
    redis = connect(redis_url)
    scaling = [asyncio.create_task(control_channel(pool, redis).run())]
    if policy:
        scaling.append(asyncio.create_task(autoscale(pool, redis, policy)))
    failed = asyncio.create_task(supervisor.all_failed.wait())
    await asyncio.wait([asyncio.create_task(stopping.wait()), failed], return_when=asyncio.FIRST_COMPLETED)
    for task in scaling:
        task.cancel()
    await asyncio.gather(*scaling, return_exceptions=True)
    log.info("stopping workers", workers=pool.size)
    await supervisor.stop_all([WORKER_GROUP], pool.stop_timeout_seconds)
    await redis.aclose()
    return 1 if failed.done() else 0


def run_workers(
    settings: Settings,
    num_workers: int,
    base_metrics_port: int,
    policy: AutoscalePolicy | None,
    metrics_port: int,
) -> int:
    configure(settings.log_level)
    redis_url, embedded = resolve_redis_url(settings)
    try:
        return asyncio.run(
            serve_workers(settings, redis_url, num_workers, base_metrics_port, policy, metrics_port)
        )
    finally:
        if embedded is not None:
            embedded.stop()
