"""The per-upload lock that serialises the requests writing to one upload: a lease in the
upload's row.

A PATCH body streams for as long as a phone takes to send it, minutes on a weak signal. A
session-level advisory lock would pin a database connection for all that time (so a
handful of slow phones would take every connection of a process's pool) and, with a pool,
would stay with the connection if it were ever not released. A lease holds nothing between
its statements: ``Upload.lease_token`` says which request holds the upload and
``lease_expires_at`` (Postgres' clock, the same for every host) when the lease lapses unless
its holder renews it. The holder renews it while it works and gives it back when it ends,
however it ends; a process killed outright leaves a lease that lapses after
UPLOADS_LOCK_LEASE_SECONDS. Every write of the holder is conditional on its token (the
fence), so a holder whose lease lapsed and was taken by another request changes nothing:
it answers 423 and the phone resumes from the stored offset.

Round trips: taking the lease returns the upload's row (no second read), a fenced commit of
the holder renews the lease in the same statement, and the holder's last commit may give it
back in that statement too (``Lease.given_back``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError
from django.db.models import Q
from django.db.models.expressions import CombinedExpression
from django.db.models.functions import Now

from accounts.models import User
from common.db import release_connection
from common.logging import log_warning
from media.exceptions import Refusal, UploadError
from media.models import Upload
from media.selectors import upload_for_writer

# Polling for a lease another request holds: from this interval, doubling, up to the cap.
_FIRST_POLL, _MAX_POLL = 0.02, 0.25


class Lease:
    """A held upload lease: its token, and renewal as its holder works."""

    def __init__(self, upload_id: uuid.UUID, token: uuid.UUID, seconds: float) -> None:
        self.upload_id = upload_id
        self.token = token
        self.seconds = seconds
        self.renewed_at = time.monotonic()
        # The row as the lease was taken (fresh: nobody else writes while we hold it).
        self.upload: Upload | None = None
        # Set once a fenced write of the holder cleared the lease: nothing left to give back.
        self.given_back = False

    def renew_if_due(self) -> None:
        """Renew once a third of the lease has gone by. Called before each wait on the phone
        and each write to the object store, so a lease lapses only if one of those takes
        longer than two thirds of it (UPLOADS_LOCK_LEASE_SECONDS is kept above
        UPLOADS_READ_TIMEOUT_SECONDS, which bounds a wait for the phone)."""
        if time.monotonic() - self.renewed_at >= self.seconds / 3:
            self.renew()

    def renew(self) -> None:
        renewed = Upload.objects.filter(pk=self.upload_id, lease_token=self.token).update(
            lease_expires_at=self.expiry()
        )
        if not renewed:
            raise lease_lost()
        self.renewed_at = time.monotonic()

    def renewed(self) -> None:
        """A fenced write of the holder set ``expiry()`` along with its own changes."""
        self.renewed_at = time.monotonic()

    def expiry(self) -> CombinedExpression:
        return Now() + timedelta(seconds=self.seconds)


def lease_lost() -> UploadError:
    return UploadError(
        "upload_locked",
        "this request's hold on the upload lapsed and another request took it; retry",
        Refusal.LOCKED,
    )


@contextmanager
def upload_lock(
    upload_id: uuid.UUID, wait_seconds: float, writer: User | None = None
) -> Iterator[Lease]:
    """Hold the upload's lease for the block. Waits up to ``wait_seconds`` for a holder that
    is finishing (without a database connection), then answers 423.

    With ``writer``, only the upload's writer (the user who started it) takes it: in the
    same statement, so a user who may not write never holds it, and anyone else is refused
    (``upload_for_writer``) before any wait."""
    lease = Lease(upload_id, uuid.uuid4(), settings.UPLOADS_LOCK_LEASE_SECONDS)
    _take(lease, wait_seconds, writer)
    try:
        yield lease
    finally:
        _give_back(lease)


def _take(lease: Lease, wait_seconds: float, writer: User | None) -> None:
    deadline = time.monotonic() + wait_seconds
    pause = _FIRST_POLL
    while not _try_take(lease, writer):
        if writer is not None and pause == _FIRST_POLL:
            upload_for_writer(writer, lease.upload_id)  # not busy but not theirs: refused
        left = deadline - time.monotonic()
        if left <= 0:
            raise UploadError(
                "upload_locked", "another request is writing to this upload; retry", Refusal.LOCKED
            )
        release_connection()
        time.sleep(min(pause, left))
        pause = min(pause * 2, _MAX_POLL)


# lease_free() as SQL (Django's Now() is STATEMENT_TIMESTAMP() on Postgres), returning the
# row so that the holder need not read it again. With a writer: only if the upload is theirs
# (``upload_for_writer``: the user who started it, in its organisation).
_TAKE_SQL = """
    UPDATE media_upload
    SET lease_token = %(token)s,
        lease_expires_at = STATEMENT_TIMESTAMP() + %(seconds)s * INTERVAL '1 second'
    WHERE id = %(id)s AND (lease_token IS NULL OR lease_expires_at < STATEMENT_TIMESTAMP())
      AND (%(writer)s::bigint IS NULL
           OR (created_by_id = %(writer)s AND organization_id = %(organization)s))
    RETURNING *
"""


def _try_take(lease: Lease, writer: User | None = None) -> bool:
    params = {
        "token": lease.token,
        "seconds": lease.seconds,
        "id": lease.upload_id,
        "writer": writer.pk if writer else None,
        "organization": writer.org_id if writer else None,
    }
    taken = list(Upload.objects.raw(_TAKE_SQL, params))
    lease.renewed_at = time.monotonic()
    lease.upload = taken[0] if taken else None
    return bool(taken)


def _give_back(lease: Lease) -> None:
    if lease.given_back:
        return
    try:
        Upload.objects.filter(pk=lease.upload_id, lease_token=lease.token).update(
            lease_token=None, lease_expires_at=None
        )
    except DatabaseError as exc:
        # The database is away: the lease lapses by itself after its time.
        log_warning("upload.lease_not_released", upload_id=str(lease.upload_id), error=repr(exc))


def lease_free() -> Q:
    """Uploads no request holds right now (no lease, or a lapsed one)."""
    return Q(lease_token__isnull=True) | Q(lease_expires_at__lt=Now())
