"""Gunicorn settings, shared by `make run` and the Docker image.

WSGI rather than ASGI: Django's ASGI handler costs several times more per request. gthread
workers, so a slow phone upload holds a thread, not a whole process.
"""

import ctypes
import ctypes.util
import os
from typing import Protocol

bind = f"0.0.0.0:{os.environ.get('PORT', '8000')}"
worker_class = "gthread"
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
# A tus PATCH holds its thread (but no database connection: media.services.locks) for as
# long as a phone takes to send its body: 50 phones trickling at 64 KiB/s must leave threads
# for the API. The threads of a process share its pool of DB_POOL_MAX_SIZE connections
# (settings.py), so Postgres' max_connections bounds WEB_CONCURRENCY * DB_POOL_MAX_SIZE per
# host, whatever the thread count.
threads = int(os.environ.get("WEB_THREADS", "64"))
# gthread's timeout watches the worker's main loop, not requests: a slow upload is never
# killed by it. A stalled body is bounded by UPLOADS_READ_TIMEOUT_SECONDS instead.
timeout = 60
graceful_timeout = 30
accesslog = "-"
errorlog = "-"
# One line per request: client, request line, status, bytes, duration in ms, user agent and
# the request id (common.logging), which the app's own lines for the request carry too.
access_log_format = '%(h)s "%(r)s" %(s)s %(B)s %(M)sms "%(a)s" %({x-request-id}o)s'
# Nothing uses gunicornc, and its default socket in $HOME is shared by every gunicorn of a user
# (and not writable for the image's user).
control_socket_disable = True


class _Worker(Protocol):
    pid: int


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    from prometheus_client import multiprocess

    def child_exit(server: object, worker: _Worker) -> None:
        # A dead worker's live gauges would otherwise stay in /metrics forever.
        multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


def post_worker_init(worker: object) -> None:
    # Upload bodies pass through in buffers of up to a part (MiBs). glibc's default lets
    # the threshold for giving such blocks back to the OS grow, and keeps one heap per
    # thread: a worker's RSS then ratchets up by a part per thread that ever served a
    # PATCH. A fixed threshold returns every large buffer at once; two arenas bound the rest.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    m_mmap_threshold, m_arena_max = -3, -8
    libc.mallopt(m_mmap_threshold, 128 * 1024)
    libc.mallopt(m_arena_max, 2)
    # Building the object store's client (botocore loads the S3 model) takes a few hundred
    # ms of CPU: done here, not in the first upload's PATCH this worker serves.
    from media.storage import object_store

    object_store()
