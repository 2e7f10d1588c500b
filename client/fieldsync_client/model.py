"""The states an op, an upload and a conflict go through on the device, and their names."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

# JSON values as the wire carries them.
Json = Any


class OpStatus(StrEnum):
    """new → sending → accepted → applied | conflict | rejected.

    `sending` is written before the request leaves: after a crash or a lost answer the same
    ops (same ids, same seqs) are sent again, and the server answers `duplicate`.
    """

    NEW = "new"
    SENDING = "sending"
    ACCEPTED = "accepted"
    APPLIED = "applied"
    CONFLICT = "conflict"
    REJECTED = "rejected"


# Ops whose fields still show in the local view on top of the server's state.
OVERLAY_STATUSES = (OpStatus.NEW.value, OpStatus.SENDING.value, OpStatus.ACCEPTED.value)
UNSENT_STATUSES = (OpStatus.NEW.value, OpStatus.SENDING.value)
FINISHED_STATUSES = (OpStatus.APPLIED.value, OpStatus.CONFLICT.value, OpStatus.REJECTED.value)


class UploadStatus(StrEnum):
    """saved → waiting → uploading → paused(reason) → uploaded | failed.

    `uploaded` only once the server says the file is attached (stored whole, checksum
    verified, linked to its work order); until then the local file is kept.
    """

    SAVED = "saved"
    WAITING = "waiting"
    UPLOADING = "uploading"
    PAUSED = "paused"
    UPLOADED = "uploaded"
    FAILED = "failed"


UNFINISHED_UPLOADS = (
    UploadStatus.SAVED.value,
    UploadStatus.WAITING.value,
    UploadStatus.UPLOADING.value,
    UploadStatus.PAUSED.value,
)


class PauseReason(StrEnum):
    USER = "user"  # paused by a tap; only a tap resumes it
    NO_SIGNAL = "no_signal"  # the phone says it is offline
    WAITING_FOR_WIFI = "waiting_for_wifi"  # a video on cellular, under the wifi-only policy
    RETRYING = "retrying"  # the last attempt failed; the next one is at next_attempt_at
    SIGNED_OUT = "signed_out"  # the token was refused; log in again


class Network(StrEnum):
    """What the phone's OS says about connectivity (the CLI's `network` setting)."""

    WIFI = "wifi"
    CELLULAR = "cellular"
    OFFLINE = "offline"


class ConflictStatus(StrEnum):
    OPEN = "open"
    RESOLVING = "resolving"  # chosen on the device, not yet accepted by the server
    RESOLVED = "resolved"
