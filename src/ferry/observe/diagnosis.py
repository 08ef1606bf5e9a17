"""Why a check failed, in the guide's troubleshooting terms (pure: over what the window saw).

"Check main server response times", "Verify main server is accessible", "Check
certificate validity", "Verify Redis connection", "Ensure workers use same queue
name", "Add more workers": each is a finding here, with the figures behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ferry.observe.checks_proxy import ProxyCheck
from ferry.observe.checks_queue import QueueCheck
from ferry.observe.checks_workers import WorkersCheck
from ferry.observe.probes import MainServerProbe
from ferry.observe.verdict import Finding

# The guide scales up when "response time p95 > 5 seconds": a main server slower than
# that is the bottleneck, whatever the worker count.
SLOW_DELIVERY_SECONDS = 5.0
DEFAULT_CERT_DAYS = 14


@dataclass(frozen=True)
class Evidence:
    """What the diagnosis reads besides the checks."""

    main_server: MainServerProbe | None = None
    redis: str = ""  # "", or "unreachable: ..." / "refusing writes: ..."
    workers_without_redis: Sequence[str] = ()  # their worker_redis_up said 0
    last_errors: Sequence[str] = ()  # of the newest retrying and dead messages
    cert_days: float = DEFAULT_CERT_DAYS
    queue_name: str = "message_queue"
    redis_shown: str = ""  # the Redis URL, redacted
    partition_homes: Sequence[tuple[str, str]] = ()  # each partition's name and Cluster master


def diagnose(
    workers: WorkersCheck | None, queue: QueueCheck | None, proxy: ProxyCheck | None, evidence: Evidence
) -> list[Finding]:
    findings = _redis(proxy, evidence) + _main_server(workers, evidence)
    findings += _queue_names(workers, evidence) + _backlog(workers, queue, evidence)
    return findings


def _redis(proxy: ProxyCheck | None, evidence: Evidence) -> list[Finding]:
    found = []
    if evidence.redis.startswith("unreachable"):
        found.append(Finding(code="redis_unreachable", message=f"Redis {evidence.redis}"))
    elif evidence.redis.startswith("refusing"):
        found.append(Finding(code="redis_refusing_writes", message=f"Redis is {evidence.redis}"))
    for result in proxy.proxies if proxy else []:
        if "redis_refusing_writes" in result.health and not any(f.code == "redis_refusing_writes" for f in found):
            found.append(Finding(code="redis_refusing_writes", message=f"{result.url} says Redis refuses writes"))
        if "redis_unavailable" in result.health and not any(f.code == "redis_unreachable" for f in found):
            found.append(Finding(code="redis_unreachable", message=f"{result.url} cannot reach Redis"))
    if evidence.workers_without_redis:
        found.append(
            Finding(
                code="workers_without_redis",
                message=f"worker(s) {', '.join(evidence.workers_without_redis)} report Redis down or refusing writes "
                "(worker_redis_up 0): verify their REDIS_URL and connection",
            )
        )
    return found


def _main_server(workers: WorkersCheck | None, evidence: Evidence) -> list[Finding]:
    found = []
    probe = evidence.main_server
    errors = f"; last errors: {' | '.join(evidence.last_errors)}" if evidence.last_errors else ""
    if probe is not None and not probe.reachable:
        found.append(Finding(code="main_server_unreachable",
                             message=f"main server {probe.url} is unreachable: {probe.error}{errors}"))
    elif workers is not None:
        failed = sum(w.failed for w in workers.workers)
        processed = sum(w.processed for w in workers.workers)
        if failed and not processed:
            found.append(Finding(code="main_server_failing",
                                 message=f"every delivery in the window failed ({failed} attempts){errors}"))
    if probe is not None and probe.certificate is not None:
        cert = probe.certificate
        names = ", ".join(cert.host_names) or "no names"
        if not cert.verified:
            found.append(Finding(code="main_server_certificate_invalid",
                                 message=f"main server certificate does not verify: {cert.verify_error} "
                                 f"(for {names}, valid until {cert.not_after}); check MAIN_SERVER_CA_FILE"))
        elif cert.days_left < evidence.cert_days:
            found.append(Finding(code="main_server_certificate_expiring",
                                 message=f"main server certificate expires in {cert.days_left:.1f} days "
                                 f"({cert.not_after}, for {names})"))
    p95 = workers.delivery_p95_seconds if workers else None
    if p95 is not None and p95 > SLOW_DELIVERY_SECONDS:
        found.append(Finding(code="main_server_slow",
                             message=f"main server slow: delivery p95 {p95:.1f} s (the guide scales at "
                             f"{SLOW_DELIVERY_SECONDS:g} s); check its response times and database pool"))
    return found


def _queue_names(workers: WorkersCheck | None, evidence: Evidence) -> list[Finding]:
    if workers is None:
        return []
    elsewhere = [f"{w.id} ({w.metrics_url})" for w in workers.workers if w.status == "unregistered_worker"]
    if elsewhere:
        return [Finding(code="workers_on_other_queue",
                        message=f"{', '.join(elsewhere)} run but are not registered on {evidence.queue_name} at "
                        f"{evidence.redis_shown}: ensure every worker uses the same REDIS_URL and queue")]
    if not any(w.registered for w in workers.workers):
        return [Finding(code="no_workers", message=f"no worker is registered on {evidence.queue_name} at "
                        f"{evidence.redis_shown}: start workers (ferry workers start)")]
    return []


def _backlog(workers: WorkersCheck | None, queue: QueueCheck | None, evidence: Evidence) -> list[Finding]:
    if queue is None:
        return []
    found = []
    if queue.retry_growth > 0:
        last = f"; last error: {evidence.last_errors[0]}" if evidence.last_errors else ""
        found.append(Finding(code="retries_piling_up",
                             message=f"retries piling up: {queue.retry_scheduled} scheduled "
                             f"(+{queue.retry_growth} in the window){last}"))
    arrival, processing = queue.arrival_per_second, queue.processing_per_second
    if queue.growth_per_second > 0 and queue.size >= 100 and arrival is not None and processing is not None \
            and processing < arrival:
        advice = ""
        if workers is not None:
            rec = workers.recommendation
            advice = f"; recommended {rec.workers} workers (now {rec.current}): {rec.reason}"
        if "WORKER_CONCURRENCY" not in advice:
            advice += "; or raise WORKER_CONCURRENCY"
        found.append(Finding(code="workers_cannot_keep_up",
                             message=f"workers cannot keep up: {arrival:.1f} messages/s in, {processing:.1f}/s "
                             f"delivered{advice}"))
    return found
