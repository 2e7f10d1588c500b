"""Appending a PATCH body to an upload (tus core + checksum).

Durability rule: an upload's ``offset`` only moves in a transaction that runs after the
object store has acknowledged the bytes it counts. Bytes arrive in any chunk size; they are
stored as multipart parts of ``part_size`` when there are enough of them, and the rest as
small "tail segment" objects (tusd's ``.part`` object, made append-only) that are merged into
the next part. No process keeps state between requests: any web process can take the next
chunk, and a restart of everything loses nothing that ``Upload-Offset`` counted.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import connection
from django.utils import timezone

from accounts.models import User
from common.db import release_connection
from common.doorbell import ring_after_commit
from common.logging import log_event, log_warning
from common.metrics import UPLOAD_BYTES
from media import storage
from media.exceptions import BodyInterrupted, Refusal, UploadError
from media.models import Upload, UploadPart, UploadStatus
from media.selectors import upload_gone
from media.services.locks import Lease, lease_lost, upload_lock
from media.services.uploads import FINISH_UPLOAD_TASK
from media.storage import ObjectStore, object_store

# Past this many tail segments they are merged into one, so a client sending tiny chunks
# cannot make a PATCH read thousands of objects.
MAX_TAIL_SEGMENTS = 32


class BodySource(Protocol):
    """A request body, read into the caller's buffer (no copy on the way where it can be
    helped). ``readinto`` returns 0 at the end and raises ``BodyInterrupted`` when the
    client stops sending early."""

    def readinto(self, buffer: memoryview) -> int: ...


@dataclass(frozen=True)
class Checksum:
    """A tus ``Upload-Checksum``: the digest of one PATCH body."""

    algorithm: str
    digest: bytes


def upload_append(
    user: User,
    upload_id: uuid.UUID,
    offset: int,
    body: BodySource,
    content_length: int | None,
    checksum: Checksum | None = None,
) -> Upload:
    """Store a PATCH body at ``offset`` (tus core + checksum). Without a checksum, every
    byte received is kept even if the client vanishes mid-body; with one, the body counts
    only as a whole, once its digest matched."""
    # Only its writer takes the lease (and reads the row with it); anyone else is refused.
    with upload_lock(upload_id, settings.UPLOADS_LOCK_WAIT_SECONDS, writer=user) as lease:
        upload = lease.upload
        assert upload is not None
        gone = upload_gone(upload)
        if gone is not None:
            raise gone
        if offset != upload.offset:
            raise UploadError(
                "offset_mismatch",
                f"the upload is at offset {upload.offset}, not {offset}",
                Refusal.CONFLICT,
                {"Upload-Offset": str(upload.offset)},
            )
        remaining = upload.length - upload.offset
        if content_length is not None and content_length > remaining:
            raise _too_long(upload)
        if upload.status != UploadStatus.UPLOADING:
            # Finished already: an empty PATCH (a retry after a lost answer) is fine.
            release_connection()
            if body.readinto(memoryview(bytearray(1))):
                raise _too_long(upload)
            return upload
        with _buffers.borrow(upload.part_size) as buffer:
            _append_body(upload, lease, body, content_length, checksum, buffer)
    return upload


def _append_body(
    upload: Upload,
    lease: Lease,
    body: BodySource,
    content_length: int | None,
    checksum: Checksum | None,
    buffer: bytearray,
) -> None:
    appender = _Appender(upload, lease, object_store(), content_length, checksum, buffer)
    try:
        appender.pump(body)
    except BodyInterrupted as exc:
        if checksum is not None:
            raise UploadError(
                "body_incomplete", "the body ended early; nothing was kept", Refusal.INVALID
            ) from exc
        appender.finish()
        raise UploadError(
            "body_incomplete",
            "the body ended early; the bytes received were kept",
            Refusal.INVALID,
            {"Upload-Offset": str(upload.offset)},
        ) from exc
    appender.verify()
    appender.finish()


def _too_long(upload: Upload) -> UploadError:
    return UploadError(
        "upload_length_exceeded",
        f"the body goes past Upload-Length ({upload.length})",
        Refusal.TOO_LARGE,
        {"Upload-Offset": str(upload.offset)},
    )


class _Buffers:
    """Part buffers reused from request to request. A new one must be zeroed and have every
    page faulted in, a few milliseconds per 8 MiB here; a few idle ones per process are
    kept (the rest are freed, so memory stays bounded)."""

    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self._idle: dict[int, list[bytearray]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def borrow(self, size: int) -> Iterator[bytearray]:
        with self._lock:
            idle = self._idle.get(size)
            buffer = idle.pop() if idle else bytearray(size)
        try:
            yield buffer
        finally:
            with self._lock:
                idle = self._idle.setdefault(size, [])
                if len(idle) < self.max_idle:
                    idle.append(buffer)


_buffers = _Buffers(max_idle=2)


class _Appender:
    """Writes one PATCH body into parts and tail segments, and commits the offset.

    The body is read straight into one part-sized buffer, reused for every part of the
    request: on this hardware a copy of each byte costs about as much as sending it, so
    bytes are not copied between pieces. The committed tail segments (``[start, size]``)
    precede the received bytes: the front of the buffer (``reserved``) is kept for them and
    they are fetched only when a full part is ready. Memory: one part per request.

    It holds the upload's lease (``lease``), never a database connection while it waits for
    the phone: it renews the lease before each wait and each write to the object store, and
    every row it writes is fenced by the lease's token. Its last commit (``finish``) gives
    the lease back in the same statement.
    """

    def __init__(
        self,
        upload: Upload,
        lease: Lease,
        store: ObjectStore,
        content_length: int | None,
        checksum: Checksum | None,
        buffer: bytearray,
    ) -> None:
        self.upload = upload
        self.lease = lease
        self.store = store
        self.content_length = content_length
        self.checksum = checksum
        self.hasher = hashlib.new(checksum.algorithm) if checksum else None
        self.buffer = buffer
        self.view = memoryview(self.buffer)
        self.tail: list[list[int]] = [list(seg) for seg in upload.tail]
        self.tail_size = upload.tail_size
        self.reserved = self.tail_size  # buffer[:reserved] is for the tail segments
        self.filled = self.reserved  # received bytes are buffer[reserved:filled]
        self.committed_parts = (upload.offset - self.tail_size) // upload.part_size
        self.new_parts: list[UploadPart] = []  # uploaded, not committed yet
        self.spent: list[list[int]] = []  # segments merged into uploaded objects
        self.received = 0
        self.limit = upload.length - upload.offset

    @property
    def stored_end(self) -> int:
        """File offset up to which bytes are in the object store (the buffer starts here)."""
        return (self.committed_parts + len(self.new_parts)) * self.upload.part_size + (
            self.tail_size
        )

    @property
    def pending(self) -> int:
        return self.filled - self.reserved

    def pump(self, body: BodySource) -> None:
        """Read the body to its end, uploading each part as it fills (the body's last one is
        left to ``finish``, whose commit ends the request)."""
        part_size = self.upload.part_size
        while True:
            if self.filled == part_size:
                if self.received == self.content_length:
                    return
                self._upload_full_part()
                self._commit_part()
            self.lease.renew_if_due()
            release_connection()  # the phone may take its time: the API may not wait for it
            received = body.readinto(self.view[self.filled :])
            if not received:
                return
            if self.hasher is not None:
                self.hasher.update(self.view[self.filled : self.filled + received])
            self.filled += received
            self.received += received
            if self.received > self.limit:
                raise _too_long(self.upload)

    def verify(self) -> None:
        if self.checksum is None or self.hasher is None:
            return
        if self.hasher.digest() != self.checksum.digest:
            raise UploadError(
                "checksum_mismatch",
                f"the body does not match its {self.checksum.algorithm} Upload-Checksum",
                Refusal.CHECKSUM_MISMATCH,
                {"Upload-Offset": str(self.upload.offset)},
            )

    def finish(self) -> None:
        """Store what is left of the body and commit (the whole upload, if this was the
        last byte), giving the lease back in the same statement: nothing follows."""
        if self.stored_end + self.pending == self.upload.length:
            self._store_last_bytes()
            self._commit(final=True, give_back=True)
        elif self.filled == self.upload.part_size:
            self._upload_full_part()
            self._commit(give_back=True)
        elif self.pending:
            self._store_segment()
            self._commit(give_back=True)
        elif self.new_parts:
            self._commit(give_back=True)

    # --- storing ----------------------------------------------------------------------
    def _assemble(self) -> bytearray | bytes:
        """The buffer with the tail segments fetched into its front: the next object."""
        position = 0
        for start, size in self.tail:
            data = self.store.get(storage.segment_key(self.upload.id, start, size))
            if len(data) != size:
                raise RuntimeError(f"tail segment {start}-{size} of {self.upload.id} is damaged")
            self.view[position : position + size] = data
            position += size
        self.spent += self.tail
        self.tail, self.tail_size, self.reserved = [], 0, 0
        # A whole part goes as the buffer itself; anything shorter as a copy of its bytes.
        return self.buffer if self.filled == len(self.buffer) else bytes(self.view[: self.filled])

    def _upload_full_part(self) -> None:
        self._upload_part(self._assemble())
        self.filled = 0

    def _upload_part(self, data: bytearray | bytes) -> None:
        self._ensure_multipart()
        self.lease.renew_if_due()
        number = self.committed_parts + len(self.new_parts) + 1
        stored = self.store.upload_part(
            self.upload.object_key,
            self.upload.multipart_id,
            number,
            data,
            checksummed=self.upload.part_checksums,
        )
        self.new_parts.append(
            UploadPart(
                upload=self.upload,
                number=number,
                etag=stored.etag,
                size=len(data),
                checksum=stored.checksum,
            )
        )

    def _ensure_multipart(self) -> None:
        if self.upload.multipart_id:
            return
        self.lease.renew_if_due()
        multipart_id = self.store.create_multipart(
            self.upload.object_key, self.upload.content_type, self.upload.filename
        )
        # Recorded at once (even before a checksum is known): it names no bytes, and a
        # later PATCH must add its parts to this multipart upload, not start another.
        recorded = Upload.objects.filter(
            pk=self.upload.pk, multipart_id="", lease_token=self.lease.token
        ).update(multipart_id=multipart_id, part_checksums=True)
        if not recorded:
            raise lease_lost()
        self.upload.multipart_id, self.upload.part_checksums = multipart_id, True

    def _store_last_bytes(self) -> None:
        data = self._assemble()
        self.filled = 0
        if self.upload.multipart_id or self.committed_parts or self.new_parts:
            if data:
                self._upload_part(data)
        else:
            # The whole file is smaller than a part: one plain object, no multipart.
            self.lease.renew_if_due()
            self.store.put(
                self.upload.object_key, bytes(data), self.upload.content_type, self.upload.filename
            )

    def _store_segment(self) -> None:
        if len(self.tail) >= MAX_TAIL_SEGMENTS:
            start = self.tail[0][0]
            data = bytes(self._assemble())
        else:
            start = self.stored_end
            data = bytes(self.view[self.reserved : self.filled])
        self.lease.renew_if_due()
        self.store.put(storage.segment_key(self.upload.id, start, len(data)), data)
        self.tail.append([start, len(data)])
        self.tail_size += len(data)
        self.reserved = self.filled = self.tail_size

    # --- committing -------------------------------------------------------------------
    def _commit_part(self) -> None:
        """Commit a part as soon as it is stored, so that a body breaking later loses none
        of it; unless the body counts only as a whole (a checksum), or this was the file's
        last part: ``finish`` commits that one together with the verification it needs (a
        crash between two commits would leave a file that every client takes for done and
        no worker is asked to verify)."""
        if self.checksum is None and self.stored_end < self.upload.length:
            self._commit()

    def _commit(self, final: bool = False, give_back: bool = False) -> None:
        """Record the new parts and move the offset in one statement fenced by the lease
        (``_COMMIT_SQL``); it renews the lease too, or gives it back (``give_back``: this
        request writes nothing more)."""
        upload = self.upload
        now = timezone.now()
        # The last part may be short, and a small file is one plain object: count by length.
        new_offset = upload.length if final else self.stored_end
        tail = [list(segment) for segment in self.tail]
        with connection.cursor() as cursor:
            cursor.execute(
                _COMMIT_SQL,
                {
                    "offset": new_offset,
                    "tail": json.dumps(tail),
                    "now": now,
                    "final": final,
                    "verifying": UploadStatus.VERIFYING.value,
                    "give_back": give_back,
                    "lease": self.lease.seconds,
                    "id": upload.pk,
                    "start": upload.offset,
                    "uploading": UploadStatus.UPLOADING.value,
                    "token": self.lease.token,
                    "numbers": [part.number for part in self.new_parts],
                    "etags": [part.etag for part in self.new_parts],
                    "sizes": [part.size for part in self.new_parts],
                    "checksums": [part.checksum for part in self.new_parts],
                },
            )
            moved = cursor.fetchone() == (1,)
        if not moved:
            if not Upload.objects.filter(pk=upload.pk, lease_token=self.lease.token).exists():
                raise lease_lost()
            raise UploadError(
                "offset_mismatch", "the upload moved under us; retry", Refusal.CONFLICT
            )
        if give_back:
            self.lease.given_back = True
        else:
            self.lease.renewed()
        if final:
            ring_after_commit(FINISH_UPLOAD_TASK, str(upload.pk))
            upload.status, upload.status_changed_at = UploadStatus.VERIFYING, now
        UPLOAD_BYTES.inc(new_offset - upload.offset)
        upload.offset, upload.tail, upload.last_activity_at = new_offset, tail, now
        self.committed_parts += len(self.new_parts)
        self.new_parts = []
        self._delete_spent()
        log_event(
            "upload.stored" if not final else "upload.complete",
            upload_id=str(upload.pk),
            offset=new_offset,
            length=upload.length,
        )

    def _delete_spent(self) -> None:
        spent, self.spent = self.spent, []
        if not spent:
            return
        try:
            self.store.delete_many(
                [storage.segment_key(self.upload.id, start, size) for start, size in spent]
            )
        except (BotoCoreError, ClientError) as exc:
            # Garbage only: the whole tail prefix is deleted when the upload ends.
            log_warning(
                "upload.segment_delete_failed", upload_id=str(self.upload.id), error=repr(exc)
            )


# The upload row moves only while the lease holds it and it is still at the offset the
# request started from; the parts are inserted only if it moved. One statement: one round
# trip, atomic without a transaction of its own. Django's Now() (``lease_free``,
# ``Lease.expiry``) is STATEMENT_TIMESTAMP() on Postgres; so is the renewed expiry here.
_COMMIT_SQL = """
    WITH moved AS (
        UPDATE media_upload
        SET "offset" = %(offset)s, tail = %(tail)s::jsonb, last_activity_at = %(now)s,
            status = CASE WHEN %(final)s THEN %(verifying)s ELSE status END,
            status_changed_at = CASE WHEN %(final)s THEN %(now)s ELSE status_changed_at END,
            lease_token = CASE WHEN %(give_back)s THEN NULL ELSE lease_token END,
            lease_expires_at = CASE WHEN %(give_back)s THEN NULL
                ELSE STATEMENT_TIMESTAMP() + %(lease)s * INTERVAL '1 second' END
        WHERE id = %(id)s AND "offset" = %(start)s AND status = %(uploading)s
          AND lease_token = %(token)s
        RETURNING id
    ), parts AS (
        INSERT INTO media_uploadpart (upload_id, number, etag, size, checksum)
        SELECT moved.id, part.number, part.etag, part.size, part.checksum
        FROM moved, unnest(%(numbers)s::integer[], %(etags)s::text[], %(sizes)s::bigint[],
                           %(checksums)s::text[])
            AS part (number, etag, size, checksum)
    )
    SELECT count(*) FROM moved
"""
