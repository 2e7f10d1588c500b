"""fieldsync reference client: an offline-first op queue, sync and resumable uploads.

    from fieldsync_client import Client
    phone = Client.setup(Path("phone-data"), "https://sync.example.com", "alice", "secret")
    phone.update("work_order", work_order_id, status="on_site")   # saved, queued
    phone.attach(work_order_id, Path("meter.jpg"), note="meter after repair")
    phone.run(stop_event)                                          # syncs and uploads

See client/README.md and `python -m fieldsync_client --help`.
"""

from fieldsync_client.backoff import Backoff
from fieldsync_client.client import Client, Settings
from fieldsync_client.model import Network, OpStatus, PauseReason, UploadStatus
from fieldsync_client.uploads import UploadPolicy

__all__ = [
    "Backoff",
    "Client",
    "Network",
    "OpStatus",
    "PauseReason",
    "Settings",
    "UploadPolicy",
    "UploadStatus",
]
