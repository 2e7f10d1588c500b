"""Services that write, one module per stage of an op's life:

- ``push``: accept a pushed batch durably and answer per op;
- ``apply``: apply a device's pending ops with the merge rules;
- ``pull``: a page of the change feed for a device;
- ``retention``: the sweep that re-rings lost work, and compaction of old history;
- ``local``: ops made on the server side (the dispatchers' workspace, demo data);
- ``state``: the per-device sync state row they share.
"""

from operations.services.apply import DRAIN_TASK, device_apply_pending, ops_apply_drain
from operations.services.local import op_submit_local
from operations.services.pull import sync_pull
from operations.services.push import APPLY_TASK, PushResult, op_batch_accept, ring_device
from operations.services.retention import history_compact, ops_sweep

__all__ = [
    "APPLY_TASK",
    "DRAIN_TASK",
    "PushResult",
    "device_apply_pending",
    "history_compact",
    "op_batch_accept",
    "op_submit_local",
    "ops_apply_drain",
    "ops_sweep",
    "ring_device",
    "sync_pull",
]
