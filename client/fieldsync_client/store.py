"""The phone's local store: one SQLite file that is the whole truth on the device.

Everything the user does is committed here before any network call, and every network
answer is committed here before the next step: the process can be killed between any two
statements and start again from this file. Two processes may share it (the app's screens
and its background sync), so every write is one short `BEGIN IMMEDIATE` transaction and
readers use WAL snapshots.

Every state change of an op, an upload or a conflict is a row in `log` as well as a log
line, so "did my photo leave the phone?" always has an answer.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fieldsync_client.model import (
    FINISHED_STATUSES,
    OVERLAY_STATUSES,
    Json,
    Network,
    OpStatus,
    UploadStatus,
)

logger = logging.getLogger("fieldsync_client")

DB_NAME = "fieldsync.sqlite3"
SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 15_000
# A push body is at most 1 MiB; one op must fit in one with room for the envelope.
MAX_OP_BYTES = 1024 * 1024 - 16 * 1024

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    server_version INTEGER NOT NULL DEFAULT 0,
    server_state TEXT,
    server_fields TEXT NOT NULL DEFAULT '{}',
    state TEXT NOT NULL DEFAULT 'live',
    fields TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (entity, entity_id)
);
CREATE TABLE IF NOT EXISTS ops (
    seq INTEGER PRIMARY KEY,
    op_id TEXT NOT NULL UNIQUE,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    action TEXT NOT NULL,
    base_version INTEGER NOT NULL,
    fields TEXT NOT NULL,
    client_time TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    code TEXT,
    detail TEXT,
    version INTEGER,
    overridden_fields TEXT NOT NULL DEFAULT '[]',
    conflict_ids TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_by_status ON ops (status, seq);
CREATE INDEX IF NOT EXISTS ops_by_record ON ops (entity, entity_id, seq);
CREATE TABLE IF NOT EXISTS conflicts (
    id TEXT PRIMARY KEY,
    entity TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    field TEXT NOT NULL,
    base_value TEXT,
    server_value TEXT,
    client_value TEXT,
    op_id TEXT,
    status TEXT NOT NULL,
    choice TEXT,
    value TEXT,
    resolution TEXT,
    last_error TEXT,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS uploads (
    attachment_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    job TEXT NOT NULL,
    work_order_id TEXT NOT NULL,
    path TEXT NOT NULL,
    filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    kind TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL,
    reason TEXT,
    user_paused INTEGER NOT NULL DEFAULT 0,
    upload_url TEXT,
    "offset" INTEGER NOT NULL DEFAULT 0,
    bytes_sent INTEGER NOT NULL DEFAULT 0,
    server_status TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    code TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS uploads_by_job ON uploads (job, position);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    subject TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    old TEXT,
    new TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
"""


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(value: Json | Sequence[Json] | Mapping[str, Json]) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


class Store:
    """One connection to the device's SQLite file (use one per thread or process)."""

    def __init__(self, data_dir: Path) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.path = data_dir / DB_NAME
        # Autocommit mode: transactions are only the explicit ones in `write()`.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit survives the phone losing power, not only the app being killed.
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        # Idempotent DDL: two processes opening a new file at once both succeed.
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction, taken at once so two writers never deadlock."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- meta -----------------------------------------------------------------------------

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row["value"])

    def put(self, key: str, value: str) -> None:
        with self.write() as db:
            self.put_in(db, key, value)

    @staticmethod
    def put_in(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def require(self, key: str) -> str:
        value = self.get(key)
        if value is None:
            raise RuntimeError(f"this device is not set up ({key} missing): run `init` first")
        return value

    @property
    def device_id(self) -> str:
        return self.require("device_id")

    @property
    def network(self) -> Network:
        return Network(self.get("network") or Network.WIFI.value)

    # --- the log --------------------------------------------------------------------------

    def log(
        self,
        db: sqlite3.Connection,
        subject: str,
        subject_id: str,
        old: str | None,
        new: str,
        detail: str = "",
    ) -> None:
        """A state change, inside the caller's transaction (so it is logged iff it happened)."""
        db.execute(
            "INSERT INTO log (at, subject, subject_id, old, new, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (now_rfc3339(), subject, subject_id, old, new, detail),
        )
        logger.info(
            "%s %s: %s -> %s%s",
            subject,
            subject_id,
            old or "-",
            new,
            f" ({detail})" if detail else "",
            extra={"subject": subject, "subject_id": subject_id, "old": old, "new": new},
        )

    def log_rows(self, limit: int = 50) -> list[sqlite3.Row]:
        rows = self.db.execute("SELECT * FROM log ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        return list(reversed(rows))

    # --- records and the op queue ---------------------------------------------------------

    def record(self, entity: str, entity_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM records WHERE entity = ? AND entity_id = ?", (entity, entity_id)
        ).fetchone()
        return row

    def records(self, entity: str | None = None) -> list[sqlite3.Row]:
        if entity is None:
            return self.db.execute("SELECT * FROM records ORDER BY entity, entity_id").fetchall()
        return self.db.execute(
            "SELECT * FROM records WHERE entity = ? ORDER BY entity_id", (entity,)
        ).fetchall()

    def op_enqueue(
        self, entity: str, entity_id: str, action: str, fields: Mapping[str, Json]
    ) -> sqlite3.Row:
        """Save a local change and queue it as an op, in one transaction: the local view
        shows it at once, and it cannot exist without its op (or the op without it)."""
        if len(dumps(dict(fields))) > MAX_OP_BYTES:
            # Refused before it takes a seq: a seq the server never gets would hold up every
            # later op of this device until the server gives up waiting for it.
            raise ValueError(f"the change is over {MAX_OP_BYTES} bytes; the server takes 1 MiB")
        with self.write() as db:
            seq = int(self._get(db, "next_seq", "1"))
            self.put_in(db, "next_seq", str(seq + 1))
            row = db.execute(
                "SELECT server_version FROM records WHERE entity = ? AND entity_id = ?",
                (entity, entity_id),
            ).fetchone()
            if action != "create" and row is None:
                raise KeyError(f"no {entity} {entity_id} on this device: pull it first")
            # A record this device created and the server has not sent back yet is at
            # version 1 once that create applies; the server never sets our own ops
            # against each other, so 1 is what we have seen.
            base_version = 0 if row is None else max(1, int(row["server_version"]))
            if action == "create":
                base_version = 0
            op_id = str(uuid.uuid4())
            db.execute(
                "INSERT INTO ops (seq, op_id, entity, entity_id, action, base_version, fields,"
                " client_time, status, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    seq,
                    op_id,
                    entity,
                    entity_id,
                    action,
                    base_version,
                    dumps(dict(fields)),
                    now_rfc3339(),
                    OpStatus.NEW.value,
                    time.time(),
                ),
            )
            self.log(db, "op", op_id, None, OpStatus.NEW.value, f"{action} {entity} seq {seq}")
            self.rebuild_view(db, entity, entity_id)
            op: sqlite3.Row = db.execute("SELECT * FROM ops WHERE seq = ?", (seq,)).fetchone()
        return op

    @staticmethod
    def _get(db: sqlite3.Connection, key: str, default: str) -> str:
        row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else str(row["value"])

    def rebuild_view(self, db: sqlite3.Connection, entity: str, entity_id: str) -> None:
        """The local view of a record: the server's last state with this device's unfinished
        ops on top, in seq order (an op applied on the server keeps showing until the pulled
        state has caught up with it)."""
        row = db.execute(
            "SELECT * FROM records WHERE entity = ? AND entity_id = ?", (entity, entity_id)
        ).fetchone()
        server_version = 0 if row is None else int(row["server_version"])
        server_state = None if row is None else row["server_state"]
        fields: dict[str, Json] = {} if row is None else json.loads(row["server_fields"])
        state = server_state or "live"
        placeholders = ",".join("?" * len(OVERLAY_STATUSES))
        ops = db.execute(
            f"SELECT action, fields, status, version FROM ops WHERE entity = ? AND entity_id = ?"  # noqa: S608 - placeholders only
            f" AND (status IN ({placeholders}) OR (status IN ('applied', 'conflict')"
            " AND version > ?)) ORDER BY seq",
            (entity, entity_id, *OVERLAY_STATUSES, server_version),
        ).fetchall()
        for op in ops:
            if op["action"] == "delete":
                state = "deleted"
            elif state != "deleted":
                fields.update(json.loads(op["fields"]))
        if row is None and not ops:
            return
        if row is None:
            db.execute(
                "INSERT INTO records (entity, entity_id, state, fields) VALUES (?, ?, ?, ?)",
                (entity, entity_id, state, dumps(fields)),
            )
        else:
            db.execute(
                "UPDATE records SET state = ?, fields = ? WHERE entity = ? AND entity_id = ?",
                (state, dumps(fields), entity, entity_id),
            )

    def ops(self, statuses: Sequence[str] | None = None, limit: int = 1_000_000) -> list[Any]:
        if statuses is None:
            return self.db.execute("SELECT * FROM ops ORDER BY seq LIMIT ?", (limit,)).fetchall()
        placeholders = ",".join("?" * len(statuses))
        return self.db.execute(
            f"SELECT * FROM ops WHERE status IN ({placeholders}) ORDER BY seq LIMIT ?",  # noqa: S608
            (*statuses, limit),
        ).fetchall()

    def op_counts(self) -> dict[str, int]:
        rows = self.db.execute("SELECT status, count(*) AS n FROM ops GROUP BY status")
        return {str(row["status"]): int(row["n"]) for row in rows}

    def op_transition(
        self,
        db: sqlite3.Connection,
        op: sqlite3.Row,
        status: OpStatus,
        why: str = "",
        **columns: Any,
    ) -> None:
        """Move one op forward to `status` (with extra columns), logged when it changed.

        Ops only move forward (new → sending → accepted → finished), whatever another
        connection did since `op` was read: a finished op never changes again."""
        current = db.execute("SELECT status FROM ops WHERE seq = ?", (op["seq"],)).fetchone()
        if current is None or _RANK[current["status"]] > _RANK[status.value]:
            return
        if current["status"] in FINISHED_STATUSES:
            return
        sets = ", ".join(f"{name} = ?" for name in ["status", "updated_at", *columns])
        db.execute(
            f"UPDATE ops SET {sets} WHERE seq = ?",  # noqa: S608 - column names are ours
            (status.value, time.time(), *columns.values(), op["seq"]),
        )
        if current["status"] != status.value:
            self.log(db, "op", op["op_id"], current["status"], status.value, why)

    # --- uploads --------------------------------------------------------------------------

    def upload(self, attachment_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self.db.execute(
            "SELECT * FROM uploads WHERE attachment_id = ?", (attachment_id,)
        ).fetchone()
        return row

    def uploads(self, job: str | None = None) -> list[sqlite3.Row]:
        if job is None:
            return self.db.execute("SELECT * FROM uploads ORDER BY position").fetchall()
        return self.db.execute(
            "SELECT * FROM uploads WHERE job = ? ORDER BY position", (job,)
        ).fetchall()

    def upload_update(
        self,
        attachment_id: str,
        status: UploadStatus | None = None,
        detail: str = "",
        **columns: Any,
    ) -> None:
        """Change an upload's columns; a change of status (or of pause reason) is logged."""
        with self.write() as db:
            row = db.execute(
                "SELECT status, reason FROM uploads WHERE attachment_id = ?", (attachment_id,)
            ).fetchone()
            if row is None:
                return
            if row["status"] == UploadStatus.UPLOADED.value:
                return  # attached on the server: nothing about it changes any more
            if status is not None:
                columns["status"] = status.value
            columns["updated_at"] = time.time()
            sets = ", ".join(f'"{name}" = ?' for name in columns)
            db.execute(
                f"UPDATE uploads SET {sets} WHERE attachment_id = ?",  # noqa: S608 - our names
                (*columns.values(), attachment_id),
            )
            old = _upload_state(row["status"], row["reason"])
            new = _upload_state(
                columns.get("status", row["status"]), columns.get("reason", row["reason"])
            )
            if old != new:
                self.log(db, "upload", attachment_id, old, new, detail)

    def upload_replace_id(self, old_id: str, new_id: str, detail: str) -> None:
        """The server will never take more bytes under `old_id` (it expired): start the same
        local file again under a new id, from byte 0."""
        with self.write() as db:
            db.execute(
                'UPDATE uploads SET attachment_id = ?, upload_url = NULL, "offset" = 0,'
                " server_status = NULL, updated_at = ? WHERE attachment_id = ?",
                (new_id, time.time(), old_id),
            )
            self.log(db, "upload", old_id, "uploading", f"restarted as {new_id}", detail)


_RANK = {"new": 0, "sending": 1, "accepted": 2, "applied": 3, "conflict": 3, "rejected": 3}


def _upload_state(status: str, reason: str | None) -> str:
    return f"{status}({reason})" if status == UploadStatus.PAUSED.value and reason else status
