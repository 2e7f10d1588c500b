"""The Celery application. Redis is the broker: a doorbell, never the only copy of work."""

import os
from typing import Any

from celery import Celery, Task
from celery.signals import task_postrun, task_prerun, worker_init

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncserver.settings")

app = Celery("syncserver")
# The current app is per thread; the default is what every other thread (gunicorn's request
# threads) sees, so `common.doorbell` rings this app's broker from any of them.
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Celery's Django fixup closes the database connection around every task unless told to
# reuse it, and in a prefork pool process it then closes the process's connection pool too:
# with one task per push that is a new Postgres connection per push. Reuse it, and let
# Django's own rules decide (below: CONN_MAX_AGE 0 gives the connection back to the pool
# after each task, and the pool checks it before handing it out again).
app.conf.update(CELERY_DB_REUSE_MAX=1000)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs: Any) -> None:
    from django.db import close_old_connections

    close_old_connections()


# Metrics and log context of each task (docs/observability.md). These run in the process that
# runs the task: a pool process for the prefork pool.
@task_prerun.connect
def _task_started(task_id: str, task: Task[Any, Any], args: tuple[Any, ...], **kwargs: Any) -> None:
    from common.logging import bind
    from common.metrics import task_started
    from operations.services import APPLY_TASK

    task_started(task_id)
    # The ringing request's id travels in a message header (common.doorbell).
    device_id = str(args[0]) if task.name == APPLY_TASK and args else None
    bind(getattr(task.request, "request_id", None), device_id)


@task_postrun.connect
def _task_finished(task_id: str, task: Task[Any, Any], state: str | None, **kwargs: Any) -> None:
    from common.logging import bind
    from common.metrics import task_finished

    task_finished(task_id, task.name, state)
    bind(None, None)  # the next task in this process starts with no context


@worker_init.connect
def _serve_worker_metrics(**kwargs: Any) -> None:
    """CELERY_METRICS_PORT: serve this worker's task metrics from its main process, for a
    worker whose metrics files the web's /metrics cannot read (another host or container)."""
    from common.logging import log_warning
    from common.metrics import MULTIPROCESS, serve_worker_metrics

    port = os.environ.get("CELERY_METRICS_PORT")
    if not port:
        return
    if not MULTIPROCESS:
        log_warning(
            "metrics.worker_single_process",
            detail="without PROMETHEUS_MULTIPROC_DIR only tasks run in the main process "
            "(--pool solo or threads) are counted",
        )
    serve_worker_metrics(int(port))
