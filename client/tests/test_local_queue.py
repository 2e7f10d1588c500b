"""The device's store on its own, no server: the queue, the local view, two processes."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from fieldsync_client.model import OpStatus
from fieldsync_client.store import Store
from fieldsync_client.sync import Syncer
from fieldsync_client.transport import Api

WO = "00000000-0000-4000-8000-000000000001"


def pulled(store: Store, version: int, **fields: object) -> None:
    """The server's state of the work order, as a pull would store it."""
    change = {
        "entity": "work_order",
        "entity_id": WO,
        "version": version,
        "state": "live",
        "fields": fields,
        "op_id": None,
    }
    syncer = Syncer(store, Api("http://unused"))
    with store.write() as db:
        syncer._apply_change(db, change)


def view(store: Store) -> dict[str, object]:
    """The work order as the phone's screens show it."""
    row = store.record("work_order", WO)
    assert row is not None
    fields: dict[str, object] = json.loads(row["fields"])
    return fields


def outcome(store: Store, op_id: str, status: str, version: int | None) -> None:
    syncer = Syncer(store, Api("http://unused"))
    with store.write() as db:
        syncer._apply_outcome(db, {"op_id": op_id, "status": status, "version": version})


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store(tmp_path)
    store.put("device_id", "11111111-1111-4111-8111-111111111111")
    return store


def test_each_change_is_an_op_with_the_next_seq_and_the_version_last_seen(store: Store) -> None:
    pulled(store, 3, status="scheduled", technician_notes="")
    first = store.op_enqueue("work_order", WO, "update", {"status": "on_site"})
    second = store.op_enqueue("comment", "c1", "create", {"work_order_id": WO, "body": "hi"})
    third = store.op_enqueue("comment", "c1", "update", {"body": "hello"})
    assert [op["seq"] for op in (first, second, third)] == [1, 2, 3]
    assert [op["base_version"] for op in (first, second, third)] == [3, 0, 1]
    assert {op["status"] for op in store.ops()} == {OpStatus.NEW.value}
    assert [row["new"] for row in store.log_rows()] == ["new", "new", "new"]


def test_an_edit_of_a_record_the_device_never_saw_is_refused_locally(store: Store) -> None:
    with pytest.raises(KeyError):
        store.op_enqueue("work_order", WO, "update", {"status": "on_site"})
    assert store.ops() == []


def test_the_local_view_is_the_server_state_with_unfinished_ops_on_top(store: Store) -> None:
    pulled(store, 1, status="scheduled", technician_notes="")
    op = store.op_enqueue("work_order", WO, "update", {"technician_notes": "valve"})
    assert view(store) == {"status": "scheduled", "technician_notes": "valve"}
    # Applied as version 2: still shown until the pulled state catches up with it
    outcome(store, op["op_id"], "applied", 2)
    assert view(store)["technician_notes"] == "valve"
    pulled(store, 2, status="scheduled", technician_notes="valve (server)")
    assert view(store)["technician_notes"] == "valve (server)"


def test_a_rejected_op_no_longer_shows_and_outcomes_never_move_back(store: Store) -> None:
    pulled(store, 1, status="scheduled")
    op = store.op_enqueue("work_order", WO, "update", {"status": "completed"})
    outcome(store, op["op_id"], "rejected", None)
    assert view(store)["status"] == "scheduled"
    outcome(store, op["op_id"], "pending", None)  # an older answer arriving late
    assert store.ops()[0]["status"] == OpStatus.REJECTED.value


def test_an_older_pulled_state_never_overwrites_a_newer_one(store: Store) -> None:
    pulled(store, 5, status="on_site")
    pulled(store, 4, status="scheduled")
    assert store.record("work_order", WO)["server_version"] == 5  # type: ignore[index]


def test_two_processes_sharing_the_store_never_share_a_seq(tmp_path: Path, store: Store) -> None:
    # Given the app's screens and its background agent, each with its own connection
    def edit(n: int) -> None:
        other = Store(tmp_path)
        for i in range(n):
            other.op_enqueue("comment", f"{threading.get_ident()}-{i}", "create", {"body": "x"})
        other.close()

    # When both queue changes at the same time
    workers = [threading.Thread(target=edit, args=(100,)) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    # Then every op has its own seq, with no gaps
    assert [op["seq"] for op in store.ops()] == list(range(1, 301))


def test_a_change_too_big_for_any_push_is_refused_before_it_takes_a_seq(store: Store) -> None:
    with pytest.raises(ValueError, match="1 MiB"):
        store.op_enqueue("comment", "c1", "create", {"body": "x" * 2_000_000})
    assert store.op_enqueue("comment", "c2", "create", {"body": "ok"})["seq"] == 1


def test_a_finished_op_never_moves_back_whatever_another_connection_does(
    store: Store,
) -> None:
    pulled(store, 1, status="scheduled")
    op = store.op_enqueue("work_order", WO, "update", {"status": "on_site"})
    outcome(store, op["op_id"], "applied", 2)
    with store.write() as db:  # a stale row (read as `new`) pushed by another process
        store.op_transition(db, op, OpStatus.SENDING)
        store.op_transition(db, op, OpStatus.ACCEPTED)
    assert store.ops()[0]["status"] == OpStatus.APPLIED.value
