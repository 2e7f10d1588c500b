"""Liveness, readiness and metrics endpoints for the platform."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import redis
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from common.logging import log_warning
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
    """200 when every service answers, else 503. Anyone (a load balancer) gets the status;
    operators also get which service is down. Why it is down goes to the log, never out."""
    results: dict[str, str] = {}
    for name, check in CHECKS.items():
        try:
            check()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - report any failure as "down"
            log_warning("readiness.down", check=name, error=f"{type(exc).__name__}: {exc}"[:300])
            results[name] = "down"
    down = [name for name, state in results.items() if state != "ok"]
    body: dict[str, object] = {"status": "ready" if not down else "unavailable"}
    if is_operator(request):
        body |= {"checks": results, "down": down}
    return JsonResponse(body, status=200 if not down else 503)


class SyncCollector(Collector):
    """Gauges read from Postgres at scrape time, so every web process reports the truth."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from conflicts.models import Conflict, ConflictStatus
        from operations.models import Operation

        ops = GaugeMetricFamily("fieldsync_ops", "Ops in the op log by status", labels=["status"])
        for status, count in _count_by(Operation.objects.values_list("status")):
            ops.add_metric([status], count)
        yield ops
        conflicts = GaugeMetricFamily("fieldsync_open_conflicts", "Conflicts waiting for a person")
        conflicts.add_metric([], Conflict.objects.filter(status=ConflictStatus.OPEN).count())
        yield conflicts


def _count_by(values: object) -> list[tuple[str, int]]:
    from django.db.models import Count

    return list(values.annotate(n=Count("pk")).values_list("status", "n"))  # type: ignore[attr-defined]


def metrics(request: HttpRequest) -> HttpResponse:
    if not is_operator(request):
        return JsonResponse(
            {"code": "permission_denied", "detail": "metrics are served to operators only"},
            status=403,
        )
    registry = CollectorRegistry()
    registry.register(SyncCollector())
    if "PROMETHEUS_MULTIPROC_DIR" in __import__("os").environ:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
