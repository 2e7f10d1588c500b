"""The Celery application. Redis is the broker: a doorbell, never the only copy of work."""

import os
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncserver.settings")

app = Celery("syncserver")
# The current app is per thread; the default is what every other thread (gunicorn's request
# threads) sees, so `common.doorbell` rings this app's broker from any of them.
app.set_default()
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Celery's Django fixup closes the database connection around every task unless told to
# reuse it, and with one task per push that is a new Postgres connection per push. Reuse it,
# and let Django's own rules (CONN_MAX_AGE, health checks, broken connections) decide.
app.conf.update(CELERY_DB_REUSE_MAX=1000)


@task_prerun.connect
@task_postrun.connect
def _close_old_connections(**kwargs: Any) -> None:
    from django.db import close_old_connections

    close_old_connections()
