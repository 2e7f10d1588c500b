"""python -m tests.hosts.servicehost WORKDIR ADDRESS CLIENTS: the services host's supervisor.

Started inside the services host's namespace, it starts the embedded Postgres, Redis and
SeaweedFS the way devstack does (devstack.services), bound to ADDRESS, lets CLIENTS (a
network, CIDR) into Postgres, prints one JSON line with their URLs on stdout, and stops them
on SIGTERM or SIGINT (or when the process that started it dies).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from devstack import services

DATABASE = "fieldsync"


def main(argv: list[str]) -> int:
    workdir, address, clients = Path(argv[0]), argv[1], argv[2]
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stopping)
    with ExitStack() as running:
        postgres = services.start_postgres(workdir / "postgres", host=address, clients=[clients])
        running.callback(postgres.stop)
        services.ensure_database(postgres.url, DATABASE)
        redis = services.start_redis(workdir / "redis", persistent=False, host=address)
        running.callback(redis.stop)
        store = services.start_seaweedfs(workdir / "seaweedfs", os.environ, address)
        running.callback(store.stop)
        started = {
            "database_url": services.with_path(postgres.url, DATABASE),
            "redis_url": redis.url,
            "s3": store.env,
        }
        print(json.dumps(started), flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
