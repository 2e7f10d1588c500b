"""The client as an app uses it: local edits that never wait for the network, and a
background agent that syncs ops and uploads files whenever the phone has signal.

The screens and the agent may live in two processes (or threads): each opens its own
`Client` on the same data directory, and the SQLite file is the only thing they share.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fieldsync_client.backoff import Backoff
from fieldsync_client.model import (
    OVERLAY_STATUSES,
    ConflictStatus,
    Json,
    Network,
    UploadStatus,
)
from fieldsync_client.store import Store, dumps
from fieldsync_client.sync import ClientBug, Syncer, SyncReport
from fieldsync_client.transport import DEFAULT_TIMEOUT, Api, Refused, SignedOut, TransportError
from fieldsync_client.uploads import Progress, Uploader, UploadPolicy

logger = logging.getLogger("fieldsync_client")
# After an unexpected error in a loop, the pause before it runs again.
CRASH_PAUSE = 5.0
# How often the agent looks at the store for new work while it waits (cheap local reads).
WAKE_INTERVAL = 0.25


@dataclass
class Settings:
    """Behaviour knobs; the defaults are what a phone should do."""

    sync_interval: float = 30.0  # pull at least this often while online
    outcome_poll: float = 1.0  # while ops wait to be applied, pull this often
    push_batch: int = 50
    backoff: Backoff = field(default_factory=Backoff)
    upload: UploadPolicy = field(default_factory=UploadPolicy)
    timeout: tuple[float, float] = DEFAULT_TIMEOUT


class Client:
    def __init__(self, data_dir: Path, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.settings.upload.backoff = self.settings.backoff
        self.store = Store(data_dir)

    @classmethod
    def setup(
        cls,
        data_dir: Path,
        server_url: str,
        username: str,
        password: str,
        *,
        device_id: str | None = None,
        settings: Settings | None = None,
    ) -> Client:
        """First start on a phone: sign in and name this install (once, ever)."""
        client = cls(data_dir, settings)
        token = Api(server_url, timeout=client.settings.timeout).token(username, password)
        with client.store.write() as db:
            client.store.put_in(db, "server_url", server_url.rstrip("/"))
            client.store.put_in(db, "username", username)
            client.store.put_in(db, "token", token)
            client.store.put_in(db, "signed_out", "0")
            if client.store.get("device_id") is None:
                client.store.put_in(db, "device_id", device_id or str(uuid.uuid4()))
            client.store.log(db, "device", client.store.device_id, None, "signed_in", username)
        return client

    def login(self, password: str) -> None:
        token = self.api().token(self.store.require("username"), password)
        with self.store.write() as db:
            self.store.put_in(db, "token", token)
            self.store.put_in(db, "signed_out", "0")
            self.store.log(db, "device", self.store.device_id, "signed_out", "signed_in")

    def close(self) -> None:
        self.store.close()

    def api(self) -> Api:
        return Api(self.store.require("server_url"), self.store.get("token"), self.settings.timeout)

    # --- local changes: saved and queued at once, never waiting for the network ---------

    def create(self, entity: str, fields: Mapping[str, Json], entity_id: str | None = None) -> str:
        entity_id = entity_id or str(uuid.uuid4())
        self.store.op_enqueue(entity, entity_id, "create", fields)
        return entity_id

    def update(self, entity: str, entity_id: str, **fields: Json) -> str:
        return str(self.store.op_enqueue(entity, entity_id, "update", fields)["op_id"])

    def delete(self, entity: str, entity_id: str) -> str:
        return str(self.store.op_enqueue(entity, entity_id, "delete", {})["op_id"])

    def comment(self, work_order_id: str, body: str) -> str:
        return self.create("comment", {"work_order_id": work_order_id, "body": body})

    def attach(self, work_order_id: str, path: Path, **options: Any) -> str:
        """Queue a file (photo, video, signature…) for `work_order_id`; see Uploader.add."""
        return self._uploader(self.api()).add(work_order_id, path, **options)

    def set_network(self, network: Network) -> None:
        """What the OS says about connectivity; a usable network restarts retry timers."""
        old = self.store.network
        with self.store.write() as db:
            self.store.put_in(db, "network", network.value)
            self.store.log(db, "network", self.store.device_id, old.value, network.value)
        if network not in (Network.OFFLINE, old):
            with self.store.write() as db:
                self.store.put_in(db, "sync_retry_at", "0")
                self.store.put_in(db, "sync_failures", "0")
            self._uploader(self.api()).network_changed()

    def pause_uploads(self, attachment_id: str | None = None, paused: bool = True) -> None:
        self._uploader(self.api()).pause(attachment_id, paused)

    def retry_upload(self, attachment_id: str) -> str:
        return self._uploader(self.api()).retry(attachment_id)

    def resolve(self, conflict_id: str, choice: str, value: Json = None) -> None:
        """Keep mine (`mine`/`client`), accept server (`server`) or `custom` with a value.
        Saved on the device at once; the agent tells the server."""
        wire = {"mine": "client", "client": "client", "server": "server", "custom": "custom"}
        if choice not in wire:
            raise ValueError("choice must be mine, server or custom")
        with self.store.write() as db:
            row = db.execute("SELECT status FROM conflicts WHERE id = ?", (conflict_id,)).fetchone()
            if row is None:
                raise KeyError(f"no conflict {conflict_id} on this device")
            db.execute(
                "UPDATE conflicts SET status = ?, choice = ?, value = ? WHERE id = ?",
                (ConflictStatus.RESOLVING.value, wire[choice], dumps(value), conflict_id),
            )
            self.store.log(db, "conflict", conflict_id, row["status"], "resolving", choice)

    # --- what the screens show ---------------------------------------------------------

    def record(self, entity: str, entity_id: str) -> dict[str, Json] | None:
        row = self.store.record(entity, entity_id)
        return None if row is None else _record(row)

    def records(self, entity: str | None = None) -> list[dict[str, Json]]:
        return [_record(row) for row in self.store.records(entity)]

    def conflicts(self, status: str | None = "open") -> list[dict[str, Json]]:
        rows = self.store.db.execute(
            "SELECT * FROM conflicts WHERE ? IS NULL OR status = ? ORDER BY updated_at",
            (status, status),
        ).fetchall()
        return [dict(row) for row in rows]

    def progress(self, job: str | None = None) -> Progress:
        return self._uploader(None).progress(job)

    def status(self) -> dict[str, Json]:
        uploads: dict[str, int] = {}
        for item in self.store.uploads():
            key = item["status"] + (f"({item['reason']})" if item["reason"] else "")
            uploads[key] = uploads.get(key, 0) + 1
        progress = self.progress()
        return {
            "device_id": self.store.get("device_id"),
            "user": self.store.get("username"),
            "server": self.store.get("server_url"),
            "network": self.store.network.value,
            "signed_out": self.store.get("signed_out") == "1",
            "last_pull_at": self.store.get("last_pull_at"),
            "last_sync_error": self.store.get("last_sync_error"),
            "ops": self.store.op_counts(),
            "uploads": uploads,
            "upload_progress": progress.text if progress.files else "no files",
            "open_conflicts": len(self.conflicts("open")),
        }

    def is_idle(self) -> bool:
        """Nothing left that the agent could still do (user-paused and wifi-held files,
        and failed ones, wait for a person)."""
        placeholders = ",".join("?" * len(OVERLAY_STATUSES))
        busy_ops = self.store.db.execute(
            f"SELECT count(*) FROM ops WHERE status IN ({placeholders})",  # noqa: S608
            OVERLAY_STATUSES,
        ).fetchone()[0]
        resolving = self.store.db.execute(
            "SELECT count(*) FROM conflicts WHERE status = 'resolving'"
        ).fetchone()[0]
        moving = [
            item
            for item in self.store.uploads()
            if item["status"] not in (UploadStatus.UPLOADED.value, UploadStatus.FAILED.value)
            and not (
                item["status"] == UploadStatus.PAUSED.value
                and item["reason"] in ("user", "waiting_for_wifi")
            )
        ]
        return not busy_ops and not resolving and not moving

    # --- the agent ---------------------------------------------------------------------

    def sync_once(self) -> SyncReport:
        """One round now (push, resolutions, pull, conflicts); raises when offline."""
        api = self.api()
        try:
            return Syncer(self.store, api, self.settings.push_batch).sync()
        finally:
            api.close()

    def run(self, stop: threading.Event, until_idle: bool = False) -> None:
        """Sync and upload until `stop` is set (or, with `until_idle`, nothing is left).

        Two threads, each with its own connection to the store: a long video never holds up
        a status change, and a slow sync never holds up a photo.
        """
        data_dir = self.store.data_dir
        done = threading.Event()
        threads = [
            threading.Thread(target=_loop, args=(data_dir, self.settings, job, stop, done))
            for job in (SyncLoop, UploadLoop)
        ]
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set():
                if until_idle and self.is_idle():
                    break
                if not any(thread.is_alive() for thread in threads):
                    break
                stop.wait(WAKE_INTERVAL)
        finally:
            done.set()
            for thread in threads:
                thread.join()

    def _uploader(self, api: Api | None) -> Uploader:
        return Uploader(self.store, api or Api("http://unused"), self.settings.upload)


def _record(row: Any) -> dict[str, Json]:
    return {
        "entity": row["entity"],
        "entity_id": row["entity_id"],
        "version": row["server_version"],
        "state": row["state"],
        "fields": json.loads(row["fields"]),
        "server_fields": json.loads(row["server_fields"]),
    }


class Loop:
    """One of the agent's two jobs: `step` does what is due and says when to look again;
    `wake` says whether something happened meanwhile that should not wait that long."""

    def step(self, client: Client, stopping: Callable[[], bool]) -> float:
        raise NotImplementedError

    def wake(self, client: Client) -> bool:
        raise NotImplementedError


def _loop(
    data_dir: Path,
    settings: Settings,
    job: type[Loop],
    stop: threading.Event,
    done: threading.Event,
) -> None:
    client = Client(data_dir, settings)
    loop = job()

    def stopping() -> bool:
        return stop.is_set() or done.is_set()

    try:
        while not stopping():
            try:
                wait = loop.step(client, stopping)
            except Exception:  # a bug must not stop the phone syncing for good
                logger.exception("%s failed; trying again in %s s", job.__name__, CRASH_PAUSE)
                wait = CRASH_PAUSE
            deadline = time.monotonic() + wait
            # Short naps: a local change, a new network or a stop is noticed within one.
            while time.monotonic() < deadline and not stopping():
                if loop.wake(client):
                    break
                time.sleep(min(WAKE_INTERVAL, max(0.0, deadline - time.monotonic())))
    finally:
        client.close()


class SyncLoop(Loop):
    def step(self, client: Client, stopping: Callable[[], bool]) -> float:
        return _sync_step(client)

    def wake(self, client: Client) -> bool:
        return _sync_wake(client)


def _sync_wake(client: Client) -> bool:
    """Work that should not wait for the timer: a new op, a tap on resolve."""
    store = client.store
    if store.network == Network.OFFLINE or store.get("signed_out") == "1":
        return False
    if float(store.get("sync_retry_at", "0") or 0) > time.time():
        return False
    unsent = store.db.execute("SELECT 1 FROM ops WHERE status = 'new' LIMIT 1").fetchone()
    resolving = store.db.execute(
        "SELECT 1 FROM conflicts WHERE status = 'resolving' LIMIT 1"
    ).fetchone()
    return unsent is not None or resolving is not None


def _sync_step(client: Client) -> float:
    """One sync round if one is due; returns seconds until the next is due."""
    store = client.store
    if store.network == Network.OFFLINE or store.get("signed_out") == "1":
        return client.settings.sync_interval
    retry_at = float(store.get("sync_retry_at", "0") or 0)
    if retry_at > time.time():
        return retry_at - time.time()
    try:
        client.sync_once()
    except SignedOut as exc:
        _sync_failed(client, exc, signed_out=True)
        return client.settings.sync_interval
    except (TransportError, Refused, ClientBug) as exc:
        # Refusals of a whole request need a person (or a fixed app); until then the
        # queue waits, and the reason shows in `status`.
        return _sync_failed(client, exc)
    with store.write() as db:
        store.put_in(db, "sync_failures", "0")
        store.put_in(db, "last_sync_error", "")
    waiting = store.db.execute(
        "SELECT 1 FROM ops WHERE status IN ('new', 'sending', 'accepted') LIMIT 1"
    ).fetchone()
    return client.settings.outcome_poll if waiting else client.settings.sync_interval


def _sync_failed(client: Client, error: Exception, signed_out: bool = False) -> float:
    store = client.store
    failures = int(store.get("sync_failures", "0") or 0) + 1
    delay = client.settings.backoff.delay(failures)
    retry_after = getattr(error, "retry_after", None)
    if retry_after:
        delay = max(delay, float(retry_after))
    with store.write() as db:
        store.put_in(db, "sync_failures", str(failures))
        store.put_in(db, "sync_retry_at", str(time.time() + delay))
        store.put_in(db, "last_sync_error", str(error))
        db.execute("UPDATE ops SET last_error = ? WHERE status = 'sending'", (str(error),))
        if signed_out:
            store.put_in(db, "signed_out", "1")
        store.log(
            db,
            "sync",
            store.device_id,
            "syncing",
            "signed_out" if signed_out else "retrying",
            f"in {delay:.0f} s: {error}",
        )
    return delay


class UploadLoop(Loop):
    """Keeps its uploader between steps; wakes on any change another connection commits
    (a new file, a tap on pause or resume, a new network), which SQLite's data_version
    shows without reading a table."""

    def __init__(self) -> None:
        self.uploader: Uploader | None = None
        self.seen_version = -1

    def step(self, client: Client, stopping: Callable[[], bool]) -> float:
        if self.uploader is None:
            self.uploader = Uploader(client.store, client.api(), client.settings.upload)
        self.uploader.api.session.headers["Authorization"] = f"Token {client.store.get('token')}"
        self.seen_version = _data_version(client)
        return self.uploader.step(stopping)

    def wake(self, client: Client) -> bool:
        return _data_version(client) != self.seen_version


def _data_version(client: Client) -> int:
    return int(client.store.db.execute("PRAGMA data_version").fetchone()[0])
