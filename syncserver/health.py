"""Liveness, readiness and metrics endpoints for the platform."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import redis
from django.conf import settings
from django.db import DatabaseError, connection
from django.db.models import Count
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.logging import log_warning
from common.metrics import recorded_metrics
from common.net import is_operator
from common.storage import s3_client


def healthz(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"status": "ok"})


def _check_postgres() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def _check_redis() -> None:
    redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2).ping()


def _check_object_store() -> None:
    s3_client(connect_timeout=3, read_timeout=3, attempts=1).head_bucket(Bucket=settings.S3_BUCKET)


def _check_worker() -> None:
    from syncserver.celery import app

    # limit=1: the first worker to answer is enough; without it ping waits the whole timeout.
    if not app.control.ping(timeout=1.0, limit=1):
        raise RuntimeError("no Celery worker answered")


CHECKS: dict[str, Callable[[], None]] = {
    "postgres": _check_postgres,
    "redis": _check_redis,
    "object_store": _check_object_store,
    "celery_worker": _check_worker,
}


def readyz(request: HttpRequest) -> HttpResponse:
    """200 when every service answers, else 503 naming what is down. Operators also get every
    check's state. Why a service is down goes to the log, never out."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report any failure as "down"
            log_warning("readiness.down", check=name, error=f"{type(exc).__name__}: {exc}"[:300])
            results[name] = "down"
    down = [name for name, state in results.items() if state != "ok"]
    # The contract names what is down to anyone (service names, never why); the state of
    # every check is for operators.
    body: dict[str, object] = {"status": "ready" if not down else "unavailable", "down": down}
    if is_operator(request):
        body["checks"] = results
    return JsonResponse(body, status=200 if not down else 503)


class SyncCollector(Collector):
    """Gauges read at scrape time from Postgres and Redis, so every web process reports the
    truth. Each family is read on its own: one that fails (a database or Redis outage) is
    left out and logged, and the scrape still answers with the rest."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readers = [_ops_by_status, _ops_finished, _apply_lag, _open_conflicts, _queue_depth]
        for read in readers:
            try:
                family = read()
            except (DatabaseError, redis.RedisError) as exc:
                log_warning("metrics.read_failed", metric=read.__name__, error=repr(exc)[:300])
                continue
            yield family


def _ops_by_status() -> GaugeMetricFamily:
    from operations.models import Operation

    family = GaugeMetricFamily("fieldsync_ops", "Ops in the op log by status", labels=["status"])
    counts = Operation.objects.values("status").annotate(n=Count("pk")).values_list("status", "n")
    for status, count in counts:
        family.add_metric([status], count)
    return family


def _ops_finished() -> GaugeMetricFamily:
    from operations.models import FINISHED, Operation

    family = GaugeMetricFamily(
        "fieldsync_ops_finished_last_minute",
        "Ops finished in the last 60 s by outcome (rejected includes ops refused at push)",
        labels=["status"],
    )
    since = timezone.now() - timedelta(seconds=60)
    # A range on the finished_at index: only the last minute's rows are read.
    recent = Operation.objects.filter(finished_at__gte=since)
    counts = dict(recent.values("status").annotate(n=Count("pk")).values_list("status", "n"))
    for status in FINISHED:
        family.add_metric([status], counts.get(status, 0))
    return family


def _apply_lag() -> GaugeMetricFamily:
    from operations.models import Operation, OpStatus

    # The first row of the partial index on pending ops' received_at.
    oldest = (
        Operation.objects.filter(status=OpStatus.PENDING)
        .order_by("received_at")
        .values_list("received_at", flat=True)
        .first()
    )
    lag = (timezone.now() - oldest).total_seconds() if oldest is not None else 0.0
    return GaugeMetricFamily(
        "fieldsync_apply_lag_seconds", "Age of the oldest pending op (0 when none)", value=lag
    )


def _open_conflicts() -> GaugeMetricFamily:
    from conflicts.models import Conflict, ConflictStatus

    count = Conflict.objects.filter(status=ConflictStatus.OPEN).count()
    return GaugeMetricFamily(
        "fieldsync_open_conflicts", "Conflicts waiting for a person", value=count
    )


def _queue_depth() -> GaugeMetricFamily:
    # Celery's Redis transport keeps a queue as a list named after it (priority 0, the one
    # our tasks use); messages a worker has taken but not acked are not in it.
    queue: str = settings.CELERY_TASK_DEFAULT_QUEUE
    client = redis.Redis.from_url(
        settings.CELERY_BROKER_URL, socket_timeout=1, socket_connect_timeout=1
    )
    try:
        depth = client.llen(queue)
    finally:
        client.close()
    family = GaugeMetricFamily(
        "fieldsync_queue_depth", "Messages waiting in the Celery queue", labels=["queue"]
    )
    family.add_metric([queue], depth)
    return family


def metrics(request: HttpRequest) -> HttpResponse:
    if not is_operator(request):
        return JsonResponse(
            {"code": "permission_denied", "detail": "metrics are served to operators only"},
            status=403,
        )
    registry = CollectorRegistry()
    registry.register(recorded_metrics())
    registry.register(SyncCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
