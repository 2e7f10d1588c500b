"""Services that write: create an upload, store its bytes, terminate it, verify and attach
the finished file, make thumbnails, and sweep (expiry, lost verifications, storage release).

``locks`` serialises the requests writing to one upload (a lease in its row); ``appender``
stores a PATCH body; ``uploads`` is the lifecycle around it; ``thumbnails`` runs after a
photo is attached. None of them imports the task module: the tasks are rung by name.
"""

from media.services.appender import BodySource, Checksum, upload_append
from media.services.locks import Lease, upload_lock
from media.services.thumbnails import thumbnail_create
from media.services.uploads import (
    FINISH_UPLOAD_TASK,
    MAX_PARTS,
    SWEEP_UPLOADS_TASK,
    THUMBNAIL_TASK,
    SweepReport,
    UploadMeta,
    part_size_for,
    upload_create,
    upload_finish,
    upload_release_storage,
    upload_terminate,
    uploads_sweep,
)

__all__ = [
    "FINISH_UPLOAD_TASK",
    "MAX_PARTS",
    "SWEEP_UPLOADS_TASK",
    "THUMBNAIL_TASK",
    "BodySource",
    "Checksum",
    "Lease",
    "SweepReport",
    "UploadMeta",
    "part_size_for",
    "thumbnail_create",
    "upload_append",
    "upload_create",
    "upload_finish",
    "upload_lock",
    "upload_release_storage",
    "upload_terminate",
    "uploads_sweep",
]
