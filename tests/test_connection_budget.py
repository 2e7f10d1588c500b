"""Postgres' connections are counted per process, not per thread: the compose file scales
web and worker behind the one proxy within Postgres' default max_connections, and no code
takes a session-level advisory lock (a pooled connection would carry it to its next user,
and PgBouncer's transaction mode would hand it to another client's transactions)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]
import pytest
import yaml
from django.db import connection

from tests.conftest import CeleryWorker
from tests.fixtures import Phone, settled

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = (
    "syncserver", "workspace", "media", "conflicts", "operations", "workorders", "accounts",
    "common",
)  # fmt: skip
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
# superuser_reserved_connections (3), and room for operators and one-shot jobs: psql,
# pg_dump, `docker compose run --rm migrate`, a second web container during an upgrade.
RESERVED = 3 + 10
# What docker-compose.yml's comment promises room for.
SCALED = {"web": 3, "worker": 2, "beat": 1}
# Session-level advisory lock functions; the transaction-level ones (pg_advisory_xact_lock,
# pg_try_advisory_xact_lock) end with their transaction and are safe under a pool.
SESSION_LOCK = re.compile(r"pg_(try_)?advisory_(lock|unlock)(_shared|_all)?\s*\(")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _defaults() -> dict[str, int]:
    """The settings' and gunicorn.conf.py's defaults, as a container without those variables
    in its .env gets them (read in a fresh process: ours may have them set)."""
    names = ("DB_POOL_MIN_SIZE", "DB_POOL_MAX_SIZE", "CELERY_WORKER_CONCURRENCY")
    env = {k: v for k, v in os.environ.items() if k not in {*names, "WEB_CONCURRENCY"}}
    script = (
        "import json, runpy; from syncserver import settings as s; "
        "g = runpy.run_path('gunicorn.conf.py'); "
        f"print(json.dumps({{'workers': g['workers'], **{{n: getattr(s, n) for n in {names}}}}}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**env, "SECRET_KEY": "x", "ALLOWED_HOSTS": "x"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    defaults: dict[str, int] = json.loads(out)
    return defaults


def test_postgres_runs_with_its_default_max_connections() -> None:
    postgres = _compose()["services"]["postgres"]

    assert "max_connections" not in json.dumps(postgres.get("command", ""))


def test_scaled_web_and_workers_fit_in_postgres_default_connections() -> None:
    # Given the defaults every app container runs with, and the worker's command leaving its
    # concurrency to the settings
    defaults = _defaults()
    worker_command = _compose()["services"]["worker"]["command"]
    assert not {"-c", "--concurrency"} & set(worker_command)

    # When web and worker are scaled as the compose file says there is room for
    web = defaults["workers"] * defaults["DB_POOL_MAX_SIZE"]
    # (a worker's pool process, like beat, runs one task at a time on one thread: a pool that
    # keeps none open when idle opens one connection, for that thread)
    assert defaults["DB_POOL_MIN_SIZE"] == 0
    worker = defaults["CELERY_WORKER_CONCURRENCY"] * 1
    beat = 1
    total = SCALED["web"] * web + SCALED["worker"] * worker + SCALED["beat"] * beat

    # Then they fit, with the reserve left over
    assert total <= POSTGRES_DEFAULT_MAX_CONNECTIONS - RESERVED, (web, worker, beat, total)


@pytest.mark.django_db(transaction=True)
def test_a_worker_pool_process_holds_one_connection(
    worker: CeleryWorker, make_phone: Callable[..., Phone]
) -> None:
    # Given the worker (prefork, 2 pool processes) applied the ops of several devices
    phones = [make_phone("dispatcher") for _ in range(4)]
    for _ in range(3):
        for phone in phones:
            phone.push(phone.op("work_order", str(uuid.uuid4()), "create", 0, title="Leak"))
    settled()

    # When its Postgres connections are counted, process by process
    held = _connections_by_process(worker.pid)

    # Then no process holds more than one (the sum in docker-compose.yml counts one), and
    # some process did hold one
    assert max(held.values()) == 1, held


def _connections_by_process(pid: int) -> dict[int, int]:
    """Each process of the tree at ``pid``: its TCP connections to this test database (a
    local port that one of the database's backends names as its client's)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT client_port FROM pg_stat_activity"
            " WHERE datname = current_database() AND client_port IS NOT NULL"
        )
        ports = {port for (port,) in cursor.fetchall()}
    postgres_port = int(connection.settings_dict["PORT"] or 5432)
    leader = psutil.Process(pid)
    return {
        process.pid: sum(
            1
            for sock in process.net_connections(kind="tcp")
            if sock.raddr and sock.raddr.port == postgres_port and sock.laddr.port in ports
        )
        for process in [leader, *leader.children(recursive=True)]
    }


def test_web_and_worker_scale_behind_the_proxy() -> None:
    services = _compose()["services"]

    for name, service in services.items():
        assert "container_name" not in service, name
    # Replicas of web and worker would fight over a fixed host port.
    assert "ports" not in services["web"] and "ports" not in services["worker"]
    assert "deploy" not in services["beat"], "beat is never scaled"
    # The proxy finds every web replica through Docker's DNS, re-resolved as they come and go.
    nginx = (ROOT / "deploy" / "nginx.conf").read_text()
    assert re.search(r"^\s*resolver 127\.0\.0\.11 valid=\d+s", nginx, re.M)
    assert re.search(r"^\s*server web:8000 resolve;", nginx, re.M)
    assert "proxy_pass http://web;" in nginx


def test_no_code_takes_a_session_level_advisory_lock() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for package in PROJECT_PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if SESSION_LOCK.search(line)
    ]

    assert found == []
