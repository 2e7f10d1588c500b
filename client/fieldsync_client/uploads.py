"""The upload queue: photos, videos and signatures, sent apart from the ops with tus.

A file is saved (path, size, sha256, note, work order, job) before anything is sent, and
gets its `attachment_id` then, once: a retry, a restart or a new network never makes a
second upload of it. Chunks go one after another; the offset kept on the device is always
one the server confirmed, and on every (re)start the server's own offset wins. A file is
`uploaded` only when the server says `attached`.
"""

from __future__ import annotations

import hashlib
import mimetypes
import sqlite3
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fieldsync_client.backoff import Backoff
from fieldsync_client.model import (
    UNFINISHED_UPLOADS,
    Json,
    Network,
    PauseReason,
    UploadStatus,
)
from fieldsync_client.store import Store
from fieldsync_client.transport import Api, Refused, SignedOut, TransportError, header

MiB = 1024 * 1024
KINDS = ("photo", "video", "signature", "document")
# Checksum mismatches in a row before the chunk counts as a failed attempt.
CHECKSUM_RETRIES = 3


@dataclass
class UploadPolicy:
    chunk_size: int = 4 * MiB
    videos_on_wifi_only: bool = True
    checksum_chunks: bool = True
    backoff: Backoff = field(default_factory=Backoff)
    # How often a fully sent file asks whether the server has attached it yet.
    verify_poll: float = 1.0


@dataclass(frozen=True)
class Progress:
    files: int
    uploaded: int
    failed: int
    bytes_total: int
    bytes_confirmed: int
    by_status: dict[str, int]

    @property
    def text(self) -> str:
        """What the queue screen says: "Uploading 6 of 22", "Uploaded 22 of 22"."""
        if self.uploaded == self.files:
            return f"Uploaded {self.uploaded} of {self.files}"
        verb = "Uploading" if self.by_status.get(UploadStatus.UPLOADING.value) else "Waiting"
        return f"{verb} {min(self.uploaded + 1, self.files)} of {self.files}"


def file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while block := source.read(MiB):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()


def guess_kind(content_type: str) -> str:
    if content_type.startswith("video/"):
        return "video"
    if content_type.startswith("image/"):
        return "photo"
    return "document"


class Uploader:
    def __init__(self, store: Store, api: Api, policy: UploadPolicy) -> None:
        self.store = store
        self.api = api
        self.policy = policy
        self._checked: dict[str, float] = {}

    # --- the queue ---------------------------------------------------------------------

    def add(
        self,
        work_order_id: str,
        path: Path,
        *,
        kind: str | None = None,
        note: str = "",
        job: str | None = None,
        filename: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """Save a file into the queue (status `saved`); the file must be complete on disk."""
        size, sha256 = file_digest(path)
        content_type = content_type or mimetypes.guess_type(path.name)[0]
        content_type = content_type or "application/octet-stream"
        kind = kind or guess_kind(content_type)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}")
        attachment_id = str(uuid.uuid4())
        with self.store.write() as db:
            position = db.execute("SELECT coalesce(max(position), 0) + 1 FROM uploads").fetchone()
            db.execute(
                "INSERT INTO uploads (attachment_id, position, job, work_order_id, path, filename,"
                " content_type, kind, size, sha256, note, status, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    attachment_id,
                    position[0],
                    job or work_order_id,
                    work_order_id,
                    str(path.resolve()),
                    filename or path.name,
                    content_type,
                    kind,
                    size,
                    sha256,
                    note,
                    UploadStatus.SAVED.value,
                    time.time(),
                    time.time(),
                ),
            )
            self.store.log(db, "upload", attachment_id, None, "saved", f"{kind} {size} bytes")
        return attachment_id

    def progress(self, job: str | None = None) -> Progress:
        items = self.store.uploads(job)
        by_status: dict[str, int] = {}
        for item in items:
            by_status[item["status"]] = by_status.get(item["status"], 0) + 1
        uploaded = by_status.get(UploadStatus.UPLOADED.value, 0)
        return Progress(
            files=len(items),
            uploaded=uploaded,
            failed=by_status.get(UploadStatus.FAILED.value, 0),
            bytes_total=sum(item["size"] for item in items),
            bytes_confirmed=sum(item["offset"] for item in items),
            by_status=by_status,
        )

    def pause(self, attachment_id: str | None, paused: bool) -> None:
        """A tap on pause / resume, for one file or (None) the whole queue."""
        for item in self._unfinished():
            if attachment_id in (None, item["attachment_id"]):
                self.store.upload_update(item["attachment_id"], user_paused=int(paused))
        self.refresh_states()

    def retry(self, attachment_id: str) -> str:
        """ "Failed - tap to retry": from the server's offset; a file the server refused
        after receiving all of it (checksum) starts again under a new attachment_id.
        Returns the id the file now has."""
        item = self._row(attachment_id)
        if item["server_status"] == "failed":
            new_id = str(uuid.uuid4())
            self.store.upload_replace_id(attachment_id, new_id, "retry tapped")
            attachment_id = new_id
        self.store.upload_update(
            attachment_id,
            UploadStatus.WAITING,
            "retry tapped",
            attempts=0,
            next_attempt_at=0,
            code=None,
            last_error=None,
        )
        return attachment_id

    def network_changed(self) -> None:
        """A usable network again: the backoff timers start over (the guide's rule)."""
        with self.store.write() as db:
            db.execute(
                "UPDATE uploads SET next_attempt_at = 0, attempts = 0 WHERE status IN"
                " ('saved', 'waiting', 'uploading', 'paused')"
            )
        self.refresh_states()

    # --- the work ------------------------------------------------------------------------

    def step(self, stop: Callable[[], bool]) -> float:
        """Do the next piece of work; returns how long nothing will be due (seconds)."""
        self.refresh_states()
        now = time.time()
        for item in self._unfinished():
            if self._gate(item, now) is None and _all_sent(item):
                self._check_attached(item)
        for item in self._unfinished():  # read again: a check may have finished some
            if self._gate(item, time.time()) is None and not _all_sent(item):
                self._send(item, stop)
                return 0.0
        now = time.time()
        remaining = self._unfinished()
        idle = (
            min(
                (i["next_attempt_at"] for i in remaining if i["next_attempt_at"] > now),
                default=now + 60,
            )
            - now
        )
        if any(_all_sent(item) for item in remaining):  # waiting for the server to attach
            idle = min(idle, self.policy.verify_poll)
        return max(0.0, idle)

    def refresh_states(self) -> None:
        """Every unfinished item shows why it is not moving, or that it is next."""
        now = time.time()
        for item in self._unfinished():
            gate = self._gate(item, now)
            if gate is not None:
                if (item["status"], item["reason"]) != (UploadStatus.PAUSED.value, gate.value):
                    self.store.upload_update(
                        item["attachment_id"], UploadStatus.PAUSED, reason=gate.value
                    )
            elif item["status"] in (UploadStatus.SAVED.value, UploadStatus.PAUSED.value):
                self.store.upload_update(item["attachment_id"], UploadStatus.WAITING, reason=None)

    def _unfinished(self) -> list[sqlite3.Row]:
        placeholders = ",".join("?" * len(UNFINISHED_UPLOADS))
        return self.store.db.execute(
            f"SELECT * FROM uploads WHERE status IN ({placeholders}) ORDER BY position",  # noqa: S608
            UNFINISHED_UPLOADS,
        ).fetchall()

    def _gate(self, item: sqlite3.Row, now: float) -> PauseReason | None:
        """Why `item` may not be sent now, or None."""
        network = self.store.network
        if item["user_paused"]:
            return PauseReason.USER
        if self.store.get("signed_out") == "1":
            return PauseReason.SIGNED_OUT
        if network == Network.OFFLINE:
            return PauseReason.NO_SIGNAL
        if (
            item["kind"] == "video"
            and network == Network.CELLULAR
            and self.policy.videos_on_wifi_only
            and not _all_sent(item)
        ):
            return PauseReason.WAITING_FOR_WIFI
        if item["next_attempt_at"] > now:
            return PauseReason.RETRYING
        return None

    def _send(self, item: sqlite3.Row, stop: Callable[[], bool]) -> None:
        attachment_id = item["attachment_id"]
        self.store.upload_update(attachment_id, UploadStatus.UPLOADING, reason=None)
        try:
            path, offset = self._open(item)
            self._send_chunks(attachment_id, path, offset, stop)
        except SignedOut:
            self.store.put("signed_out", "1")
            self.refresh_states()
        except Refused as exc:
            self._refused(attachment_id, exc)
        except TransportError as exc:
            self._retry_later(attachment_id, exc)
        except OSError as exc:  # the local file is gone or unreadable: a person must look
            self.store.upload_update(
                attachment_id, UploadStatus.FAILED, str(exc), last_error=str(exc), code="local_file"
            )

    def _open(self, item: sqlite3.Row) -> tuple[str, int]:
        """The upload's path on the server and its confirmed offset (created if need be)."""
        if item["upload_url"]:
            try:
                return item["upload_url"], self.api.tus_offset(item["upload_url"])
            except Refused as exc:
                if exc.status != 404:  # the server lost track of it: create it again
                    raise
        metadata = {
            "attachment_id": item["attachment_id"],
            "work_order_id": item["work_order_id"],
            "filename": item["filename"],
            "content_type": item["content_type"],
            "kind": item["kind"],
            "sha256": item["sha256"],
        }
        if item["note"]:
            metadata["note"] = item["note"]
        path, offset = self.api.tus_create(item["size"], metadata)
        self.store.upload_update(item["attachment_id"], upload_url=path, offset=offset)
        return path, offset

    def _send_chunks(
        self, attachment_id: str, path: str, offset: int, stop: Callable[[], bool]
    ) -> None:
        item = self._row(attachment_id)
        self.store.upload_update(attachment_id, offset=offset)
        mismatches = 0
        with Path(item["path"]).open("rb") as source:
            while offset < item["size"]:
                current = self._row(attachment_id)
                if stop() or self._gate(current, time.time()) is not None:
                    self.refresh_states()  # paused between chunks: nothing is lost
                    return
                source.seek(offset)
                chunk = source.read(min(self.policy.chunk_size, item["size"] - offset))
                if not chunk:  # the file shrank since it was saved: a person must look
                    raise OSError(f"{item['path']} is shorter than when it was saved")
                self._count_sent(attachment_id, len(chunk))
                response = self.api.tus_patch(path, offset, chunk, self.policy.checksum_chunks)
                if response.status_code == 409:  # someone else's idea of the offset: ask
                    offset = self.api.tus_offset(path)
                elif response.status_code == 460:
                    mismatches += 1
                    if mismatches >= CHECKSUM_RETRIES:
                        raise TransportError("chunk checksum failed repeatedly")
                else:
                    offset = int(header(response, "Upload-Offset"))
                    mismatches = 0
                    # Confirmed by the server, so a success resets the backoff too.
                    self.store.upload_update(
                        attachment_id, offset=offset, attempts=0, last_error=None
                    )
        self.store.upload_update(attachment_id, server_status="verifying")

    def _count_sent(self, attachment_id: str, nbytes: int) -> None:
        with self.store.write() as db:
            db.execute(
                "UPDATE uploads SET bytes_sent = bytes_sent + ? WHERE attachment_id = ?",
                (nbytes, attachment_id),
            )

    def _check_attached(self, item: sqlite3.Row) -> None:
        attachment_id = item["attachment_id"]
        if time.monotonic() - self._checked.get(attachment_id, 0.0) < self.policy.verify_poll:
            return
        self._checked[attachment_id] = time.monotonic()
        try:
            info = self.api.attachment(attachment_id)
        except SignedOut:
            self.store.put("signed_out", "1")
            return
        except (TransportError, Refused) as exc:
            self._retry_later(attachment_id, exc)
            return
        self._server_says(item, info)

    def _server_says(self, item: sqlite3.Row, info: dict[str, Json] | None) -> None:
        attachment_id = item["attachment_id"]
        status = None if info is None else str(info["status"])
        if status == "attached":
            self.store.upload_update(
                attachment_id, UploadStatus.UPLOADED, "attached", server_status=status
            )
        elif (
            status == "failed"
            and info is not None
            and info.get("code") in ("expired", "terminated")
        ):
            self._start_again(attachment_id, str(info.get("code")))
        elif status == "failed" and info is not None:
            detail = f"{info.get('code')}: {info.get('detail')}"
            self.store.upload_update(
                attachment_id,
                UploadStatus.FAILED,
                detail,
                server_status=status,
                code=info.get("code"),
                last_error=detail,
            )
        elif info is None:  # the server does not know it (any more): create it again
            self.store.upload_update(attachment_id, server_status=None, offset=0, upload_url=None)
        elif status == "uploading":  # not every byte is stored after all: send the rest
            self.store.upload_update(
                attachment_id, server_status=status, offset=int(info.get("offset") or 0)
            )
        else:
            self.store.upload_update(attachment_id, server_status=status)

    def _refused(self, attachment_id: str, exc: Refused) -> None:
        if exc.status == 410:  # expired or terminated: same file, new upload
            self._start_again(attachment_id, exc.code)
            return
        self.store.upload_update(
            attachment_id, UploadStatus.FAILED, str(exc), code=exc.code, last_error=str(exc)
        )

    def _start_again(self, attachment_id: str, why: str) -> None:
        self.store.upload_replace_id(attachment_id, str(uuid.uuid4()), why)

    def _retry_later(self, attachment_id: str, exc: Exception) -> None:
        item = self._row(attachment_id)
        attempts = item["attempts"] + 1
        delay = self.policy.backoff.delay(attempts)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            delay = max(delay, float(retry_after))
        self.store.upload_update(
            attachment_id,
            UploadStatus.PAUSED,
            f"retrying in {delay:.0f} s: {exc}",
            reason=PauseReason.RETRYING.value,
            attempts=attempts,
            next_attempt_at=time.time() + delay,
            last_error=str(exc),
        )

    def _row(self, attachment_id: str) -> sqlite3.Row:
        row = self.store.upload(attachment_id)
        if row is None:
            raise KeyError(attachment_id)
        return row


def _all_sent(item: sqlite3.Row) -> bool:
    return bool(item["upload_url"]) and item["offset"] >= item["size"]
