"""Push the op queue, pull what changed, and settle conflicts: one sync round.

Each step commits what it learned before the next network call, so a round cut short
anywhere (no signal, the app killed) leaves the queue in a state the next round continues:
ops marked `sending` are sent again with the same ids and seqs, and the pull cursor only
moves together with the changes it covered.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from fieldsync_client.model import (
    ConflictStatus,
    Json,
    OpStatus,
)
from fieldsync_client.store import Store, dumps, now_rfc3339
from fieldsync_client.transport import Api, Refused, SignedOut

PUSH_BATCH = 50
PULL_LIMIT = 500
# Ops looked up one by one after a pull (answers the pull's outcomes did not carry).
STRAGGLER_LOOKUPS = 50
BATCH_TOO_LARGE = 413


@dataclass
class SyncReport:
    pushed: int = 0
    accepted: int = 0
    rejected: int = 0
    changes: int = 0
    outcomes: int = 0
    resolutions: int = 0
    errors: list[str] = field(default_factory=list)


class ClientBug(RuntimeError):
    """The server called our request malformed: retrying the same bytes cannot help."""


class Syncer:
    def __init__(self, store: Store, api: Api, batch: int = PUSH_BATCH) -> None:
        self.store = store
        self.api = api
        self.batch = batch

    def sync(self) -> SyncReport:
        report = SyncReport()
        self.push(report)
        self.resolve_chosen(report)
        self.pull(report)
        self.refresh_conflicts()
        return report

    # --- push ------------------------------------------------------------------------------

    def push(self, report: SyncReport) -> None:
        """Send every unsent op, oldest first, in small batches."""
        while True:
            ops = self.store.ops(("new", "sending"), limit=self.batch)
            if not ops:
                return
            self._mark_sending(ops)
            try:
                results = self.api.push(self.store.device_id, [_wire(op) for op in ops])
            except SignedOut:
                raise
            except Refused as exc:
                if exc.status == BATCH_TOO_LARGE and len(ops) > 1:
                    self.batch = max(1, len(ops) // 2)
                    continue
                if exc.status == BATCH_TOO_LARGE:
                    self._reject_locally(ops[0], "batch_too_large", exc.detail)
                    continue
                raise ClientBug(str(exc)) from exc
            report.pushed += len(ops)
            self._record_results(ops, results, report)

    def _mark_sending(self, ops: list[sqlite3.Row]) -> None:
        with self.store.write() as db:
            for op in ops:
                self.store.op_transition(
                    db, op, OpStatus.SENDING, "pushing", attempts=op["attempts"] + 1
                )

    def _record_results(
        self, ops: list[sqlite3.Row], results: list[dict[str, Json]], report: SyncReport
    ) -> None:
        by_id = {str(result.get("op_id")): result for result in results}
        with self.store.write() as db:
            for op in ops:
                result = by_id.get(op["op_id"])
                if result is None:  # not answered: stays `sending`, goes again next round
                    continue
                if result["status"] in ("accepted", "duplicate"):
                    report.accepted += 1
                    self.store.op_transition(
                        db, op, OpStatus.ACCEPTED, str(result["status"]), last_error=None
                    )
                else:
                    report.rejected += 1
                    code, detail = str(result.get("code", "")), str(result.get("detail", ""))
                    self.store.op_transition(
                        db, op, OpStatus.REJECTED, f"{code}: {detail}", code=code, detail=detail
                    )
                    self.store.rebuild_view(db, op["entity"], op["entity_id"])

    def _reject_locally(self, op: sqlite3.Row, code: str, detail: str) -> None:
        with self.store.write() as db:
            self.store.op_transition(db, op, OpStatus.REJECTED, code, code=code, detail=detail)
            self.store.rebuild_view(db, op["entity"], op["entity_id"])

    # --- pull ------------------------------------------------------------------------------

    def pull(self, report: SyncReport) -> None:
        """Follow the cursor until the server has nothing more; one transaction per page."""
        resync: set[tuple[str, str]] | None = None  # records seen since starting over
        while True:
            cursor = self.store.get("cursor")
            try:
                page = self.api.pull(self.store.device_id, cursor, PULL_LIMIT)
            except SignedOut:
                raise
            except Refused as exc:
                if exc.code != "cursor_expired" or resync is not None:
                    raise
                resync = set()
                self._start_over()
                continue
            with self.store.write() as db:
                for change in page["changes"]:
                    self._apply_change(db, change, resync is not None)
                    if resync is not None:
                        resync.add((str(change["entity"]), str(change["entity_id"])))
                for outcome in page["outcomes"]:
                    self._apply_outcome(db, outcome)
                self.store.put_in(db, "cursor", str(page["cursor"]))
                self.store.put_in(db, "last_done_seq", str(page["last_done_seq"]))
                self.store.put_in(db, "last_pull_at", now_rfc3339())
            report.changes += len(page["changes"])
            report.outcomes += len(page["outcomes"])
            if not page["has_more"]:
                break
        if resync is not None:
            self._forget_unseen(resync)
        self._look_up_stragglers(report)

    def _start_over(self) -> None:
        """The server no longer keeps history back to our cursor: pull everything again.
        Records stay on the device meanwhile (the pull may be cut off); see _forget_unseen."""
        with self.store.write() as db:
            db.execute("DELETE FROM meta WHERE key = 'cursor'")
            self.store.log(db, "device", self.store.device_id, "synced", "resync", "cursor_expired")

    def _forget_unseen(self, seen: set[tuple[str, str]]) -> None:
        """After a complete pull from the start: what it did not send has left our scope
        (our own unsent records stay)."""
        with self.store.write() as db:
            rows = db.execute(
                "SELECT entity, entity_id FROM records WHERE server_state IS NOT NULL AND NOT"
                " EXISTS (SELECT 1 FROM ops WHERE ops.entity = records.entity AND ops.entity_id"
                " = records.entity_id AND ops.status IN ('new', 'sending', 'accepted'))"
            ).fetchall()
            for row in rows:
                if (row["entity"], row["entity_id"]) not in seen:
                    db.execute(
                        "DELETE FROM records WHERE entity = ? AND entity_id = ?",
                        (row["entity"], row["entity_id"]),
                    )

    def _apply_change(
        self, db: sqlite3.Connection, change: dict[str, Json], full: bool = False
    ) -> None:
        """Store the server's state of a record; an older state never replaces a newer one,
        except in a full pull from the start (`full`), which is the server's truth."""
        entity, entity_id = str(change["entity"]), str(change["entity_id"])
        if change["state"] == "revoked":
            db.execute(
                "DELETE FROM records WHERE entity = ? AND entity_id = ?", (entity, entity_id)
            )
            return
        db.execute(
            "INSERT INTO records (entity, entity_id, server_version, server_state, server_fields)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT (entity, entity_id) DO UPDATE SET"
            " server_version = excluded.server_version, server_state = excluded.server_state,"
            " server_fields = excluded.server_fields"
            " WHERE ? OR excluded.server_version >= records.server_version",
            (
                entity,
                entity_id,
                int(change["version"]),
                change["state"],
                dumps(change["fields"]),
                full,
            ),
        )
        self.store.rebuild_view(db, entity, entity_id)

    def _apply_outcome(self, db: sqlite3.Connection, outcome: dict[str, Json]) -> None:
        op = db.execute("SELECT * FROM ops WHERE op_id = ?", (str(outcome["op_id"]),)).fetchone()
        if op is None or op["status"] in ("applied", "conflict", "rejected"):
            return  # never moves back; an outcome seen twice changes nothing
        status = str(outcome["status"])
        if status == "pending":
            if op["status"] != OpStatus.ACCEPTED.value:
                self.store.op_transition(db, op, OpStatus.ACCEPTED, "the server has it")
            return
        self.store.op_transition(
            db,
            op,
            OpStatus(status),
            str(outcome.get("code") or ""),
            version=outcome.get("version"),
            overridden_fields=dumps(outcome.get("overridden_fields") or []),
            conflict_ids=dumps(outcome.get("conflict_ids") or []),
            code=outcome.get("code"),
            detail=outcome.get("detail"),
            last_error=None,
        )
        self.store.rebuild_view(db, op["entity"], op["entity_id"])

    def _look_up_stragglers(self, report: SyncReport) -> None:
        """Ops the server calls finished (seq ≤ last_done_seq) whose outcome we have not
        seen: ask for each (an outcome older than our cursor, e.g. after a resync)."""
        done = int(self.store.get("last_done_seq", "0") or 0)
        rows = self.store.db.execute(
            "SELECT op_id FROM ops WHERE status = 'accepted' AND seq <= ? ORDER BY seq LIMIT ?",
            (done, STRAGGLER_LOOKUPS),
        ).fetchall()
        for row in rows:
            outcome = self.api.op(row["op_id"])
            if outcome is None:
                continue
            with self.store.write() as db:
                self._apply_outcome(db, outcome)
            report.outcomes += 1

    # --- conflicts ---------------------------------------------------------------------------

    def resolve_chosen(self, report: SyncReport) -> None:
        """Send the resolutions the user chose on the device (saved locally first)."""
        rows = self.store.db.execute(
            "SELECT * FROM conflicts WHERE status = ?", (ConflictStatus.RESOLVING.value,)
        ).fetchall()
        for row in rows:
            value = None if row["value"] is None else json.loads(row["value"])
            try:
                answer = self.api.resolve(row["id"], row["choice"], value)
                resolution = dumps(answer["conflict"].get("resolution"))
                detail = f"{row['choice']}, version {answer.get('version')}"
            except SignedOut:
                raise  # the choice stays `resolving`: sent again once signed in
            except Refused as exc:
                if exc.code not in ("already_resolved", "not_found"):
                    with self.store.write() as db:
                        db.execute(
                            "UPDATE conflicts SET status = 'open', last_error = ? WHERE id = ?",
                            (str(exc), row["id"]),
                        )
                        self.store.log(db, "conflict", row["id"], "resolving", "open", str(exc))
                    continue
                resolution, detail = None, exc.code
            with self.store.write() as db:
                db.execute(
                    "UPDATE conflicts SET status = 'resolved', resolution = ?, last_error = NULL"
                    " WHERE id = ?",
                    (resolution, row["id"]),
                )
                self.store.log(db, "conflict", row["id"], "resolving", "resolved", detail)
            report.resolutions += 1

    def refresh_conflicts(self) -> None:
        """The server's open conflicts in our scope; ours that it no longer lists were
        resolved elsewhere (the dispatcher, another device)."""
        open_now = {str(item["id"]): item for item in self.api.conflicts("open")}
        with self.store.write() as db:
            known = {
                row["id"]: row["status"]
                for row in db.execute("SELECT id, status FROM conflicts WHERE status != 'resolved'")
            }
            for conflict_id, item in open_now.items():
                if conflict_id in known:
                    continue
                db.execute(
                    "INSERT INTO conflicts (id, entity, entity_id, field, base_value,"
                    " server_value, client_value, op_id, status, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open', strftime('%s','now'))"
                    " ON CONFLICT (id) DO NOTHING",
                    (
                        conflict_id,
                        item["entity"],
                        item["entity_id"],
                        item["field"],
                        dumps(item.get("base_value")),
                        dumps(item.get("server_value")),
                        dumps(item.get("client_value")),
                        item.get("op_id"),
                    ),
                )
                self.store.log(db, "conflict", conflict_id, None, "open", str(item["field"]))
            for conflict_id, status in known.items():
                if status == ConflictStatus.OPEN.value and conflict_id not in open_now:
                    db.execute(
                        "UPDATE conflicts SET status = 'resolved' WHERE id = ?", (conflict_id,)
                    )
                    self.store.log(db, "conflict", conflict_id, "open", "resolved", "elsewhere")


def _wire(op: sqlite3.Row) -> dict[str, Json]:
    return {
        "op_id": op["op_id"],
        "seq": op["seq"],
        "entity": op["entity"],
        "entity_id": op["entity_id"],
        "action": op["action"],
        "base_version": op["base_version"],
        "fields": json.loads(op["fields"]),
        "client_time": op["client_time"],
    }
