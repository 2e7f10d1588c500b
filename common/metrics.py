"""Prometheus metrics recorded as things happen: HTTP requests, their database time, Celery
tasks and upload bytes. What is read at scrape time (ops, queue depth) is
``syncserver.health.SyncCollector``. Every name and label is in docs/observability.md.

With ``PROMETHEUS_MULTIPROC_DIR`` set (gunicorn runs several worker processes, Celery a pool
of them) each process writes its samples to files there and a scrape sums them; without it
each process keeps its own, in prometheus_client's default registry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from django.db import connection
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server

if TYPE_CHECKING:
    from django.http import HttpRequest, HttpResponse

# prometheus_client chooses file-backed values by the same test, when it is first imported.
MULTIPROCESS = "PROMETHEUS_MULTIPROC_DIR" in os.environ

HTTP_REQUESTS = Counter(
    "fieldsync_http_requests_total",
    "HTTP requests answered, by view (URL name, never the path), method and status",
    ["view", "method", "status"],
)
HTTP_DURATION = Histogram(
    "fieldsync_http_request_duration_seconds",
    "Time to answer an HTTP request, by view and method",
    ["view", "method"],
    # tus PATCHes run as long as a phone takes to send its part: the tail reaches minutes.
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
HTTP_DB_DURATION = Histogram(
    "fieldsync_http_db_duration_seconds",
    "Total time an HTTP request spent in database queries, by view",
    ["view"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
HTTP_DB_QUERIES = Counter(
    "fieldsync_http_db_queries_total", "Database queries run by HTTP requests, by view", ["view"]
)
TASKS = Counter(
    "fieldsync_celery_tasks_total",
    "Celery tasks run, by task name and outcome (success, failure, retry, rejected, ignored)",
    ["task", "outcome"],
)
TASK_DURATION = Histogram(
    "fieldsync_celery_task_duration_seconds",
    "Run time of a Celery task, by task name",
    ["task"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
UPLOAD_BYTES = Counter(
    "fieldsync_upload_bytes_stored_total", "Upload bytes committed to the object store"
)
UPLOAD_VERIFICATIONS = Counter(
    "fieldsync_upload_verifications_total",
    "Finished uploads verified, by outcome (attached, failed)",
    ["outcome"],
)

# A client may send any method; only these name a series of their own.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def recorded_metrics() -> CollectorRegistry:
    """What the processes sharing this host's metrics recorded: every process's files in
    multiprocess mode (a fresh registry each scrape, as prometheus_client requires), else
    this process's own registry."""
    if not MULTIPROCESS:
        return REGISTRY
    from prometheus_client import multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


class _QueryTimer:
    """A ``connection.execute_wrapper``: sums the time and count of a request's queries."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.queries = 0

    def __call__(
        self, execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
    ) -> Any:
        start = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            self.seconds += time.perf_counter() - start
            self.queries += 1


class RequestMetricsMiddleware:
    """Counts and times every request, and its database queries, per view."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        timer = _QueryTimer()
        start = time.perf_counter()
        with connection.execute_wrapper(timer):
            response = self.get_response(request)
        elapsed = time.perf_counter() - start
        # The URL's name (or the view's dotted path): a raw path would make a series per id.
        match = request.resolver_match
        view = match.view_name if match is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        HTTP_REQUESTS.labels(view, method, str(response.status_code)).inc()
        HTTP_DURATION.labels(view, method).observe(elapsed)
        HTTP_DB_DURATION.labels(view).observe(timer.seconds)
        HTTP_DB_QUERIES.labels(view).inc(timer.queries)
        return response


# Task start times by task id, for the run time (the prefork pool runs one task per process,
# the threads pool several).
_task_started: dict[str, float] = {}


def task_started(task_id: str) -> None:
    _task_started[task_id] = time.perf_counter()


def task_finished(task_id: str, task: str, state: str | None) -> None:
    """Record a task's outcome from task_postrun's ``state`` (SUCCESS, FAILURE, RETRY, …)."""
    start = _task_started.pop(task_id, None)
    if start is not None:
        TASK_DURATION.labels(task).observe(time.perf_counter() - start)
    TASKS.labels(task, (state or "unknown").lower()).inc()


def serve_worker_metrics(port: int) -> None:
    """Serve the worker's task metrics on ``port`` (CELERY_METRICS_PORT), from a thread of
    the worker's main process. The pool's processes only reach it through the multiprocess
    files, so a prefork worker needs PROMETHEUS_MULTIPROC_DIR as well."""
    start_http_server(port, registry=recorded_metrics())
