"""The Celery application. Redis is the broker: a doorbell, never the only copy of work."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncserver.settings")

app = Celery("syncserver")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
