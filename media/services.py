"""Services that write: create an upload, store its bytes, terminate it, verify and attach
the finished file, make thumbnails, and sweep (expiry, lost verifications, storage release).

Durability rule: an upload's ``offset`` only moves in a transaction that runs after the
object store has acknowledged the bytes it counts. Bytes arrive in any chunk size; they are
stored as multipart parts of ``part_size`` when there are enough of them, and the rest as
small "tail segment" objects (tusd's ``.part`` object, made append-only) that are merged into
the next part. No process keeps state between requests: any web process can take the next
chunk, and a restart of everything loses nothing that ``Upload-Offset`` counted.
"""

from __future__ import annotations

import hashlib
import math
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from io import BytesIO
from typing import Protocol

from botocore.exceptions import BotoCoreError, ClientError
from django.conf import settings
from django.db import DatabaseError, IntegrityError, OperationalError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone
from PIL import Image, ImageOps, UnidentifiedImageError

from accounts.models import User
from common.logging import log_event, log_warning
from media import storage
from media.entity import ATTACHMENT
from media.exceptions import BodyInterrupted, UploadError
from media.models import Kind, Upload, UploadPart, UploadStatus
from media.selectors import upload_for_user, upload_gone
from media.storage import ObjectStore, object_store
from operations.recording import Author, ChangeSet
from workorders.models import WorkOrder

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's floor for every part but the last
MAX_PARTS = 10_000  # S3's ceiling on parts per multipart upload
# Past this many tail segments they are merged into one, so a client sending tiny chunks
# cannot make a PATCH read thousands of objects.
MAX_TAIL_SEGMENTS = 32
THUMBNAIL_BOX = (320, 320)
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "image/webp"})
SWEEP_BATCH = 100


@dataclass(frozen=True)
class UploadMeta:
    """What a tus ``POST`` declares, already parsed from ``Upload-Metadata``."""

    attachment_id: uuid.UUID
    work_order_id: uuid.UUID
    filename: str
    content_type: str
    kind: str
    sha256: str = ""
    note: str = ""


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


# ============================================================================================
# Create
# ============================================================================================
def part_size_for(length: int) -> int:
    """The preferred part size, raised (in whole MiB) so the file fits in 10,000 parts."""
    needed = math.ceil(length / MAX_PARTS / MiB) * MiB
    preferred: int = settings.UPLOADS_PART_SIZE
    return max(MIN_PART_SIZE, preferred, needed)


def media_type(content_type: str) -> str:
    """``image/JPEG; q=1`` → ``image/jpeg``."""
    return content_type.split(";", maxsplit=1)[0].strip().lower()


def upload_check_limits(kind: str, content_type: str, length: int) -> None:
    """Per-kind size and content-type limits, checked before any byte is stored."""
    if kind not in Kind.values:
        raise UploadError("invalid_kind", f"kind must be one of {', '.join(Kind.values)}")
    allowed = settings.UPLOADS_CONTENT_TYPES[kind]
    if media_type(content_type) not in allowed:
        raise UploadError(
            "unsupported_content_type",
            f"a {kind} must be one of {', '.join(allowed)}",
            status=415,
        )
    limit = settings.UPLOADS_MAX_SIZE[kind]
    if length > limit:
        raise UploadError("upload_too_large", f"a {kind} may be at most {limit} bytes", status=413)


def upload_create(user: User, meta: UploadMeta, length: int) -> Upload:
    """Start an upload, or return the one already started under this ``attachment_id``
    (the phone may never have seen the first answer)."""
    upload_check_limits(meta.kind, meta.content_type, length)
    work_order = WorkOrder.objects.filter(
        pk=meta.work_order_id, organization_id=user.org_id
    ).first()
    if work_order is None or not (user.is_dispatcher or work_order.assigned_to_id == user.pk):
        raise UploadError("not_found", f"work order {meta.work_order_id} not found", 404)
    now = timezone.now()
    upload = Upload(
        id=meta.attachment_id,
        organization_id=user.org_id,
        work_order_id=meta.work_order_id,
        created_by=user,
        kind=meta.kind,
        filename=meta.filename,
        content_type=meta.content_type,
        note=meta.note,
        declared_sha256=meta.sha256,
        length=length,
        part_size=part_size_for(length),
        object_key=storage.final_key(user.org_id, meta.attachment_id),
        last_activity_at=now,
        status_changed_at=now,
    )
    try:
        with transaction.atomic():
            upload.save(force_insert=True)
    except IntegrityError:
        return _existing_upload(user, meta, length)
    log_event(
        "upload.created",
        upload_id=str(upload.id),
        work_order_id=str(meta.work_order_id),
        kind=meta.kind,
        length=length,
    )
    return upload


def _existing_upload(user: User, meta: UploadMeta, length: int) -> Upload:
    existing = Upload.objects.filter(pk=meta.attachment_id).first()
    if existing is None:  # deleted between our insert and this read: cannot happen today
        raise UploadError("attachment_id_reused", "this attachment_id cannot be used", 409)
    try:
        upload = upload_for_user(user, existing.pk)
    except UploadError as exc:
        raise UploadError(
            "attachment_id_reused", "this attachment_id belongs to another upload", 409
        ) from exc
    if upload.length != length or upload.work_order_id != meta.work_order_id:
        raise UploadError(
            "attachment_id_reused",
            "this attachment_id was created with another length or work order",
            409,
        )
    gone = upload_gone(upload)
    if gone is not None:
        raise gone
    return upload


# ============================================================================================
# Append (PATCH)
# ============================================================================================
def upload_lock_key(upload_id: uuid.UUID) -> int:
    return int.from_bytes(upload_id.bytes[:8], "big", signed=True)


@contextmanager
def upload_lock(upload_id: uuid.UUID, wait_seconds: float) -> Iterator[None]:
    """Hold the upload's lock: a session-level Postgres advisory lock on this thread's
    connection. Postgres frees it when the session ends, so a process that dies holding it
    (even by SIGKILL) leaves nothing locked; a live holder keeps it. Waits up to
    ``wait_seconds`` for a holder that is finishing, then answers 423."""
    key = upload_lock_key(upload_id)
    if not _try_lock(upload_id):  # the usual case costs one round trip
        _wait_for_lock(key, wait_seconds)
    try:
        yield
    finally:
        _unlock(key)


def _wait_for_lock(key: int, wait_seconds: float) -> None:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, true)",
                [f"{max(1, int(wait_seconds * 1000))}ms"],
            )
            cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    except OperationalError as exc:
        if getattr(exc.__cause__, "sqlstate", None) == "55P03":  # lock_not_available
            raise UploadError(
                "upload_locked", "another request is writing to this upload; retry", 423
            ) from exc
        raise


def _unlock(key: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
    except DatabaseError:
        # Ending the session is what releases a session lock we could not release by hand.
        connection.close()


def _try_lock(upload_id: uuid.UUID) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [upload_lock_key(upload_id)])
        row = cursor.fetchone()
    return bool(row and row[0])


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
    with upload_lock(upload_id, settings.UPLOADS_LOCK_WAIT_SECONDS):
        upload = upload_for_user(user, upload_id)
        gone = upload_gone(upload)
        if gone is not None:
            raise gone
        if offset != upload.offset:
            raise UploadError(
                "offset_mismatch",
                f"the upload is at offset {upload.offset}, not {offset}",
                409,
                {"Upload-Offset": str(upload.offset)},
            )
        remaining = upload.length - upload.offset
        if content_length is not None and content_length > remaining:
            raise _too_long(upload)
        if upload.status != UploadStatus.UPLOADING:
            # Finished already: an empty PATCH (a retry after a lost answer) is fine.
            if body.readinto(memoryview(bytearray(1))):
                raise _too_long(upload)
            return upload
        with _buffers.borrow(upload.part_size) as buffer:
            _append_body(upload, body, checksum, buffer)
    return upload


def _append_body(
    upload: Upload, body: BodySource, checksum: Checksum | None, buffer: bytearray
) -> None:
    appender = _Appender(upload, object_store(), checksum, buffer)
    try:
        appender.pump(body)
    except BodyInterrupted as exc:
        if checksum is not None:
            raise UploadError(
                "body_incomplete", "the body ended early; nothing was kept", 400
            ) from exc
        appender.finish()
        raise UploadError(
            "body_incomplete",
            "the body ended early; the bytes received were kept",
            400,
            {"Upload-Offset": str(upload.offset)},
        ) from exc
    appender.verify()
    appender.finish()


def _too_long(upload: Upload) -> UploadError:
    return UploadError(
        "upload_length_exceeded",
        f"the body goes past Upload-Length ({upload.length})",
        413,
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
    """

    def __init__(
        self, upload: Upload, store: ObjectStore, checksum: Checksum | None, buffer: bytearray
    ) -> None:
        self.upload = upload
        self.store = store
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
        """Read the body to its end, uploading each part as it fills."""
        part_size = self.upload.part_size
        while True:
            if self.filled == part_size:
                self._upload_part(self._assemble())
                self.filled = 0
                if self.checksum is None:
                    self._commit()
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
                460,
                {"Upload-Offset": str(self.upload.offset)},
            )

    def finish(self) -> None:
        """Store what is left of the body and commit (the whole upload, if this was the
        last byte)."""
        if self.stored_end + self.pending == self.upload.length:
            self._store_last_bytes()
            self._commit(final=True)
        elif self.pending:
            self._store_segment()
            self._commit()
        elif self.new_parts:
            self._commit()

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

    def _upload_part(self, data: bytearray | bytes) -> None:
        self._ensure_multipart()
        number = self.committed_parts + len(self.new_parts) + 1
        etag = self.store.upload_part(
            self.upload.object_key, self.upload.multipart_id, number, data
        )
        self.new_parts.append(
            UploadPart(upload=self.upload, number=number, etag=etag, size=len(data))
        )

    def _ensure_multipart(self) -> None:
        if self.upload.multipart_id:
            return
        multipart_id = self.store.create_multipart(
            self.upload.object_key, self.upload.content_type, self.upload.filename
        )
        # Recorded at once (even before a checksum is known): it names no bytes, and a
        # later PATCH must add its parts to this multipart upload, not start another.
        Upload.objects.filter(pk=self.upload.pk, multipart_id="").update(multipart_id=multipart_id)
        self.upload.multipart_id = multipart_id

    def _store_last_bytes(self) -> None:
        data = self._assemble()
        self.filled = 0
        if self.upload.multipart_id or self.committed_parts or self.new_parts:
            if data:
                self._upload_part(data)
        else:
            # The whole file is smaller than a part: one plain object, no multipart.
            self.store.put_file(
                self.upload.object_key, bytes(data), self.upload.content_type, self.upload.filename
            )

    def _store_segment(self) -> None:
        if len(self.tail) >= MAX_TAIL_SEGMENTS:
            start = self.tail[0][0]
            data = bytes(self._assemble())
        else:
            start = self.stored_end
            data = bytes(self.view[self.reserved : self.filled])
        self.store.put(storage.segment_key(self.upload.id, start, len(data)), data)
        self.tail.append([start, len(data)])
        self.tail_size += len(data)
        self.reserved = self.filled = self.tail_size

    # --- committing -------------------------------------------------------------------
    def _commit(self, final: bool = False) -> None:
        upload = self.upload
        now = timezone.now()
        # The last part may be short, and a small file is one plain object: count by length.
        new_offset = upload.length if final else self.stored_end
        changes: dict[str, object] = {
            "offset": new_offset,
            "tail": [list(segment) for segment in self.tail],
            "last_activity_at": now,
        }
        if final:
            changes |= {"status": UploadStatus.VERIFYING, "status_changed_at": now}
        with transaction.atomic():
            UploadPart.objects.bulk_create(self.new_parts)
            # Conditional on the offset we started from: belt and braces behind the lock.
            moved = Upload.objects.filter(
                pk=upload.pk, offset=upload.offset, status=UploadStatus.UPLOADING
            ).update(**changes)
            if moved != 1:
                raise UploadError("offset_mismatch", "the upload moved under us; retry", 409)
            if final:
                transaction.on_commit(lambda: ring_finish(upload.pk))
        for name, value in changes.items():
            setattr(upload, name, value)
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


# ============================================================================================
# Terminate (DELETE)
# ============================================================================================
def upload_terminate(user: User, upload_id: uuid.UUID) -> None:
    """tus termination: the upload is ended for good and its stored bytes deleted."""
    with upload_lock(upload_id, settings.UPLOADS_LOCK_WAIT_SECONDS):
        upload = upload_for_user(user, upload_id)
        if upload.status == UploadStatus.FAILED and upload.code == "terminated":
            return  # a retry after a lost answer
        gone = upload_gone(upload)
        if gone is not None:
            raise gone
        if upload.status != UploadStatus.UPLOADING:
            raise UploadError("upload_finished", "a finished upload cannot be terminated", 409)
        _fail(upload, UploadStatus.UPLOADING, "terminated", "terminated by the client")
    log_event("upload.terminated", upload_id=str(upload_id))


# ============================================================================================
# Finish: assemble, verify, attach
# ============================================================================================
def ring_finish(upload_id: uuid.UUID) -> None:
    """Ask a worker to finish the upload. Best effort: the sweep re-rings what is lost."""
    from media.tasks import finish_upload_task

    try:
        finish_upload_task.apply_async(args=(str(upload_id),), retry=False)
    except Exception as exc:  # noqa: BLE001 - any broker failure is survivable here
        log_warning("upload.ring_failed", upload_id=str(upload_id), error=repr(exc))


def upload_finish(upload_id: uuid.UUID) -> str:
    """Complete the multipart upload, sha256 the stored object and attach it. Safe to run
    twice or concurrently: the claim and the attach are conditional updates. Returns the
    upload's status afterwards."""
    upload = _claim_verification(upload_id)
    if upload is None:
        return Upload.objects.filter(pk=upload_id).values_list("status", flat=True).first() or ""
    try:
        return _verify_and_attach(upload)
    except Exception:
        # Give the claim back so the task's retry can claim it at once.
        Upload.objects.filter(pk=upload_id, verify_claimed_at=upload.verify_claimed_at).update(
            verify_claimed_at=None
        )
        raise


def _verify_and_attach(upload: Upload) -> str:
    store = object_store()
    if upload.multipart_id:
        parts = list(
            UploadPart.objects.filter(upload_id=upload.pk)
            .order_by("number")
            .values_list("number", "etag")
        )
        # False means an earlier attempt completed it; the digest below checks the result.
        store.complete(upload.object_key, upload.multipart_id, parts)
    digest, size = _digest(store, upload.object_key)
    if size != upload.length:
        _fail(
            upload,
            UploadStatus.VERIFYING,
            "size_mismatch",
            f"stored {size} bytes, not {upload.length}",
        )
        return UploadStatus.FAILED
    if upload.declared_sha256 and upload.declared_sha256 != digest:
        _fail(
            upload,
            UploadStatus.VERIFYING,
            "sha256_mismatch",
            f"the stored file's sha256 is {digest}, not the declared {upload.declared_sha256}",
        )
        return UploadStatus.FAILED
    return _attach(upload, digest)


def _claim_verification(upload_id: uuid.UUID) -> Upload | None:
    now = timezone.now()
    lease = now - timedelta(seconds=settings.UPLOADS_VERIFY_LEASE_SECONDS)
    claimed = (
        Upload.objects.filter(pk=upload_id, status=UploadStatus.VERIFYING)
        .filter(Q(verify_claimed_at__isnull=True) | Q(verify_claimed_at__lt=lease))
        .update(verify_claimed_at=now, verify_attempts=F("verify_attempts") + 1)
    )
    return Upload.objects.get(pk=upload_id) if claimed else None


def _digest(store: ObjectStore, key: str) -> tuple[str, int]:
    hasher = hashlib.sha256()
    size = 0
    for chunk in store.stream(key):
        hasher.update(chunk)
        size += len(chunk)
    return hasher.hexdigest(), size


def _attach(upload: Upload, digest: str) -> str:
    """Create the attachment record (version 1, with its event and feed entry) and mark the
    upload attached, in one transaction. The work order's version does not change."""
    with transaction.atomic():
        locked = Upload.objects.select_for_update().get(pk=upload.pk)
        if locked.status != UploadStatus.VERIFYING:
            return locked.status
        changes = ChangeSet(locked.organization_id)
        changes.create(
            ATTACHMENT,
            locked.pk,
            {
                "work_order_id": str(locked.work_order_id),
                "kind": locked.kind,
                "filename": locked.filename,
                "content_type": locked.content_type,
                "size": locked.length,
                "sha256": digest,
                "note": locked.note,
            },
            Author(actor_id=locked.created_by_id),
        )
        changes.flush()
        now = timezone.now()
        Upload.objects.filter(pk=locked.pk).update(
            status=UploadStatus.ATTACHED, sha256=digest, status_changed_at=now, tail=[]
        )
        if locked.kind == Kind.PHOTO:
            transaction.on_commit(lambda: ring_thumbnail(locked.pk))
    _release_tail(upload)
    log_event("upload.attached", upload_id=str(upload.pk), sha256=digest, size=upload.length)
    return UploadStatus.ATTACHED


def _fail(upload: Upload, expected: str, code: str, detail: str) -> bool:
    """Move the upload to ``failed`` (if it is still in ``expected``) and release its
    storage. Returns whether this call made the move."""
    moved = Upload.objects.filter(pk=upload.pk, status=expected).update(
        status=UploadStatus.FAILED,
        code=code,
        detail=detail[:2000],
        status_changed_at=timezone.now(),
    )
    if moved:
        log_event("upload.failed", upload_id=str(upload.pk), code=code, detail=detail)
        upload_release_storage(upload)
    return bool(moved)


def upload_release_storage(upload: Upload) -> None:
    """Delete everything a failed upload stored (idempotent), then record that."""
    store = object_store()
    store.abort_multipart_uploads(upload.object_key)
    store.delete_prefix(storage.tail_prefix(upload.pk))
    store.delete(upload.object_key)
    Upload.objects.filter(pk=upload.pk, status=UploadStatus.FAILED).update(
        released_at=timezone.now()
    )


def _release_tail(upload: Upload) -> None:
    try:
        object_store().delete_prefix(storage.tail_prefix(upload.pk))
    except (BotoCoreError, ClientError) as exc:  # leftover segments are garbage, not data
        log_warning("upload.tail_release_failed", upload_id=str(upload.pk), error=repr(exc))


# ============================================================================================
# Thumbnails
# ============================================================================================
def ring_thumbnail(upload_id: uuid.UUID) -> None:
    from media.tasks import make_thumbnail_task

    try:
        make_thumbnail_task.apply_async(args=(str(upload_id),), retry=False)
    except Exception as exc:  # noqa: BLE001 - a missing thumbnail is cosmetic
        log_warning("upload.thumbnail_ring_failed", upload_id=str(upload_id), error=repr(exc))


def thumbnail_create(upload_id: uuid.UUID) -> str:
    """Make a photo's JPEG thumbnail for the admin; returns its key ("" when none)."""
    upload = Upload.objects.filter(
        pk=upload_id, status=UploadStatus.ATTACHED, kind=Kind.PHOTO
    ).first()
    if upload is None or upload.thumbnail_key:
        return upload.thumbnail_key if upload else ""
    if media_type(upload.content_type) not in THUMBNAIL_TYPES:
        return ""
    store = object_store()
    try:
        with Image.open(BytesIO(store.get(upload.object_key))) as image:
            image.draft("RGB", (THUMBNAIL_BOX[0] * 2, THUMBNAIL_BOX[1] * 2))
            thumbnail = ImageOps.exif_transpose(image).convert("RGB")
            thumbnail.thumbnail(THUMBNAIL_BOX)
            out = BytesIO()
            thumbnail.save(out, "JPEG", quality=80)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
        log_warning("upload.thumbnail_failed", upload_id=str(upload_id), error=repr(exc))
        return ""
    key = storage.thumbnail_key(upload.organization_id, upload.pk)
    store.put(key, out.getvalue(), "image/jpeg")
    Upload.objects.filter(pk=upload.pk).update(thumbnail_key=key)
    return key


# ============================================================================================
# Sweep
# ============================================================================================
@dataclass
class SweepReport:
    expired: int = 0
    released: int = 0
    requeued: int = 0


def uploads_sweep(now: datetime | None = None) -> SweepReport:
    """Expire idle unfinished uploads, release what failed uploads still store, and hand
    out again verifications that a dead worker (or a lost message) left behind."""
    now = now or timezone.now()
    report = SweepReport()
    report.expired = _expire_idle(now)
    report.released = _release_failed()
    report.requeued = _requeue_verifications(now)
    if report.expired or report.released or report.requeued:
        log_event("uploads.swept", **vars(report))
    return report


def _expire_idle(now: datetime) -> int:
    cutoff = now - timedelta(seconds=settings.UPLOADS_EXPIRY_SECONDS)
    idle = Upload.objects.filter(status=UploadStatus.UPLOADING, last_activity_at__lt=cutoff)
    expired = 0
    for upload in idle.order_by("last_activity_at")[:SWEEP_BATCH]:
        if not _try_lock(upload.pk):
            continue  # a request is writing to it right now: not idle after all
        try:
            moved = Upload.objects.filter(
                pk=upload.pk, status=UploadStatus.UPLOADING, last_activity_at__lt=cutoff
            ).update(
                status=UploadStatus.FAILED,
                code="expired",
                detail=f"no bytes arrived for {settings.UPLOADS_EXPIRY_SECONDS} seconds",
                status_changed_at=now,
            )
        finally:
            _unlock(upload_lock_key(upload.pk))
        if moved:
            expired += 1
            log_event("upload.expired", upload_id=str(upload.pk), offset=upload.offset)
            upload_release_storage(upload)
    return expired


def _release_failed() -> int:
    unreleased = Upload.objects.filter(status=UploadStatus.FAILED, released_at__isnull=True)
    uploads = list(unreleased.order_by("status_changed_at")[:SWEEP_BATCH])
    for upload in uploads:
        upload_release_storage(upload)
    return len(uploads)


def _requeue_verifications(now: datetime) -> int:
    lease = now - timedelta(seconds=settings.UPLOADS_VERIFY_LEASE_SECONDS)
    # Unclaimed for as long as a pending op may wait: its doorbell was lost.
    unrung = now - timedelta(seconds=settings.SYNC_STALE_PENDING_SECONDS)
    stale = Q(verify_claimed_at__lt=lease) | Q(
        verify_claimed_at__isnull=True, status_changed_at__lt=unrung
    )
    ids = list(
        Upload.objects.filter(stale, status=UploadStatus.VERIFYING).values_list("pk", flat=True)[
            :SWEEP_BATCH
        ]
    )
    # Clear dead claims so the next worker may claim at once, whatever its lease setting.
    Upload.objects.filter(pk__in=ids, verify_claimed_at__lt=lease).update(verify_claimed_at=None)
    for upload_id in ids:
        ring_finish(upload_id)
    return len(ids)
