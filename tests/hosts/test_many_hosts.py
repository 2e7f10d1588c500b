"""Many hosts, one system: fieldsync on several hosts behind a load balancer loses a web host
and a worker host at once, mid-upload and mid-apply, and nothing a phone was told is lost or
done twice (tests/hosts/cluster.py for the hosts, tests/hosts/scenario.py for the run).

`make test-hosts` runs it; `make test` does not (marker `hosts`). It needs root and
`ip netns`, and installs Debian's haproxy and faketime when they are missing; without them it
is skipped, except under CI, where not being able to run it is a failure.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from tests.field.fieldday import sha256_of
from tests.hosts import balancer, network
from tests.hosts.cluster import SHARED_SETTINGS, SKEW, Cluster, faketime_library
from tests.hosts.scenario import LOST_WORKER, SURVIVING_WORKER, Run, play

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(900)]

MiB = 1024 * 1024
# Debian package → how to tell it is installed.
PACKAGES: dict[str, Callable[[], str | None]] = {
    "haproxy": lambda: shutil.which("haproxy"),
    "faketime": faketime_library,
}


def cannot_run(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the hosts test: {reason}")
    pytest.skip(reason)


def install_missing_packages() -> str | None:
    """apt-get install what is missing (an update first if the lists are stale); None when
    all is there, else why not."""
    missing = [name for name, found in PACKAGES.items() if not found()]
    if not missing:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", *missing]
    for attempt in ([install], [["apt-get", "update", "-qq"], install]):
        results = [
            subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
            for argv in attempt
        ]
        if all(result.returncode == 0 for result in results):
            return None
    return f"could not install {', '.join(missing)}: {results[-1].stderr.strip()[-500:]}"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    reason = network.unavailable() or install_missing_packages()
    if reason is not None:
        cannot_run(reason)
    workdir = tmp_path_factory.mktemp("hosts")
    try:
        with network.exclusive(), Cluster(workdir / "hosts") as cluster:
            yield play(cluster, workdir)
    finally:
        # Logs and every host's directory are kept when asked (HOSTS_KEEP=1).
        if os.environ.get("HOSTS_KEEP"):
            print(f"hosts: kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def test_every_op_a_phone_was_told_accepted_is_finished_exactly_once(run: Run) -> None:
    # Given what the server holds and what each phone (and the desk) was told
    server = {
        op_id: (device, status)
        for op_id, device, status in run.cluster.sql(
            "SELECT op_id::text, device_id::text, status FROM operations_operation"
        )
    }
    events = Counter(
        op_id
        for (op_id,) in run.cluster.sql(
            "SELECT op_id::text FROM operations_event WHERE op_id IS NOT NULL"
        )
    )
    told_in_outage = 0
    for client in [run.dispatcher, *(phone.ui for phone in run.phones)]:
        store = client.store
        ops = {op["op_id"]: op for op in store.ops()}
        told = {
            str(row["subject_id"]): str(row["at"])
            for row in store.db.execute(
                "SELECT subject_id, at FROM log WHERE subject = 'op' AND new = 'accepted'"
            )
        }
        # Then the server holds exactly the ops the phone saved: none lost, none extra
        assert {op_id for op_id, (dev, _) in server.items() if dev == store.device_id} == set(ops)
        assert told and set(told) <= set(ops)
        # And each is finished, as the phone was told, with exactly one event
        for op_id, op in ops.items():
            assert (op["status"], server[op_id][1]) == ("applied", "applied"), dict(op)
            assert events[op_id] == 1, op_id
        told_in_outage += sum(run.loss.at <= _epoch(at) < run.loss.back_at for at in told.values())
    # And phones were told `accepted` while the hosts were gone, too
    assert told_in_outage > 0


def test_an_upload_cut_off_with_its_web_host_resumes_on_the_other_from_the_stored_offset(
    run: Run,
) -> None:
    # Given the uploads the lost web host was writing, with the offset Postgres held for
    # each at the loss (what the store had confirmed), the requests the balancer saw, and
    # how many bytes each phone put on the wire for each file
    loss = run.loss
    logged = balancer.requests_logged(run.cluster.request_log)
    sent = {
        str(item["attachment_id"]): int(item["bytes_sent"])
        for phone in run.phones
        for item in phone.ui.store.uploads()
    }
    assert loss.writing, "the lost web host was writing no upload"
    for upload, stored in loss.writing.items():
        after = [r for r in logged if r.upload == upload and r.began > loss.at]
        # When the phone, cut off, asked again (HEAD): the survivor answered
        head = next(r for r in after if r.method == "HEAD")
        assert (head.server, head.status) == (loss.survivor, 200)
        # Then with exactly the stored offset, below what the phone had sent by then (the
        # chunk on its way when the host was lost is not counted, nothing before it lost)
        sent_by_then = sent[upload] - sum(
            r.length or 0 for r in after if r.method == "PATCH" and r.began > head.began
        )
        assert head.confirmed == stored < sent_by_then
        # And the upload went on from there, on the survivor
        resumed = next(r for r in after if r.method == "PATCH" and r.status == 204)
        assert (resumed.server, resumed.offset) == (loss.survivor, stored)


def test_the_cut_uploads_lease_lapses_by_itself_and_the_survivor_takes_it_over(run: Run) -> None:
    # Given the lease the cut PATCH held in its upload's row at the loss, and what was seen
    # of the row after (by Postgres' clock, as the lease is)
    loss = run.loss
    lease = float(SHARED_SETTINGS["UPLOADS_LOCK_LEASE_SECONDS"])
    assert loss.lease_token
    # Then no one renewed it: it lapsed at most UPLOADS_LOCK_LEASE_SECONDS after the loss
    assert loss.at < loss.lease_lapses_at <= loss.at + lease + 0.5
    # And while it ran no request took it (the phone's retries were refused 423 or waited)
    while_running = [held for at, held in loss.lease_seen if at < loss.lease_lapses_at]
    assert while_running
    assert all(while_running)
    # And once it lapsed a request of the phone on the survivor took the upload over, soon
    assert loss.lease_lapses_at <= loss.lease_taken_at < loss.lease_lapses_at + 30
    # By itself: before Postgres had dropped a single session of the lost hosts
    assert loss.lease_lapses_at < loss.reaped_at


def test_every_file_is_attached_once_whole_with_the_phones_checksum(run: Run) -> None:
    attached = {
        row[0]: row[1:]
        for row in run.cluster.sql(
            "SELECT a.id::text, a.work_order_id::text, a.sha256, a.size, u.object_key"
            " FROM media_attachment a JOIN media_upload u ON u.id = a.id"
        )
    }
    s3 = run.cluster.s3.client()
    for phone in run.phones:
        items = {item["attachment_id"]: item for item in phone.ui.store.uploads()}
        assert {item["status"] for item in items.values()} == {"uploaded"}
        assert {key for key, row in attached.items() if row[0] in phone.visits} == set(items)
        for attachment_id, item in items.items():
            _, sha256, size, key = attached[attachment_id]
            assert (sha256, size) == (sha256_of(phone.files[attachment_id]), item["size"])
            stored = hashlib.sha256()
            for block in s3.get_object(Bucket=run.cluster.s3.bucket, Key=key)["Body"].iter_chunks(
                MiB
            ):
                stored.update(block)
            assert stored.hexdigest() == sha256


def test_what_the_lost_worker_left_is_finished_on_the_surviving_worker(run: Run) -> None:
    # Given who applied each op and attached each file, by the workers' own logs
    cluster, loss = run.cluster, run.loss
    applied_by: dict[str, set[str]] = {}
    attached_by: dict[str, set[str]] = {}
    for name in (LOST_WORKER, SURVIVING_WORKER):
        for record in cluster.log_events(name, "celery-worker", "ops.finished"):
            for op in record["ops"]:
                applied_by.setdefault(op[0], set()).add(name)
        for record in cluster.log_events(name, "celery-worker", "upload.attached"):
            attached_by.setdefault(record["upload_id"], set()).add(name)
    # When the worker host was lost with the held device's apply open and work waiting
    held = {
        op_id
        for (op_id,) in cluster.sql(
            "SELECT op_id::text FROM operations_operation WHERE device_id = %s",
            (loss.held_device,),
        )
    }
    assert loss.pending & held
    assert loss.unfinished
    # Then the survivor applied every op left pending, and attached every file left
    for op_id in loss.pending:
        assert applied_by.get(op_id) == {SURVIVING_WORKER}, op_id
    for upload_id in loss.unfinished:
        assert attached_by.get(upload_id) == {SURVIVING_WORKER}, upload_id
    # And both workers had been working before
    assert {LOST_WORKER, SURVIVING_WORKER} == {w for ws in applied_by.values() for w in ws}


def test_postgres_drops_the_lost_hosts_sessions_and_their_row_locks(run: Run) -> None:
    loss = run.loss
    # Given the sessions Postgres still had for the lost hosts right after the loss: the
    # worker's apply round inside its transaction, holding sync-state rows, the held
    # device's among them (its next round waits for it)
    assert any(
        host == LOST_WORKER and in_transaction and states
        for host, in_transaction, states in loss.orphans
    )
    assert loss.held_row_locked
    # Then they were dropped (devstack.services.DEAD_CLIENT_SETTINGS), the web host's idle
    # pooled ones too, before the web host came back, so no returning host freed them
    assert loss.at < loss.reaped_at < loss.back_at
    assert loss.reaped_at - loss.at < 90


def test_the_balancer_routes_around_the_lost_web_host_by_readyz_and_back(run: Run) -> None:
    cluster, loss = run.cluster, run.loss
    logged = balancer.requests_logged(cluster.request_log)
    # Given the start, when /readyz said 503 (no Celery worker yet): both out of rotation
    # (a check under way shows "* L7STS" and no code: the last one failed all the same)
    assert set(cluster.startup_states) == {"web1", "web2"}
    assert all(
        s.down and "L7STS" in s.check_status and s.check_code in ("503", "0")
        for s in cluster.startup_states.values()
    ), cluster.startup_states
    # When the web host was lost, the balancer took it out within its health checks
    assert loss.down_at - loss.at < 15
    # Then every request from then until its cable went back in went to the survivor, and
    # succeeded
    outage = [r for r in logged if loss.down_at <= r.began < loss.returning_at]
    assert outage
    assert {r.server for r in outage} == {loss.survivor}
    assert all(r.status < 500 for r in outage), [r for r in outage if r.status >= 500]
    assert not [r for r in logged if r.server == "<NOSRV>"]
    # And once back (its /readyz 200 again) it took phones' requests again
    assert any(
        r.server == loss.web and r.began >= loss.back_at and 200 <= r.status < 300 for r in logged
    )


def test_the_skewed_worker_ran_its_clock_ahead_and_changed_no_outcome(run: Run) -> None:
    # Given the ops each worker applied (their own logs) and the times the database holds:
    # received_at by a web host's clock, finished_at by the applying worker's
    cluster = run.cluster
    lag = {
        op_id: float(seconds)
        for op_id, seconds in cluster.sql(
            "SELECT op_id::text, extract(epoch FROM finished_at - received_at)"
            " FROM operations_operation"
        )
    }
    by_worker = {
        name: [
            lag[op[0]]
            for record in cluster.log_events(name, "celery-worker", "ops.finished")
            for op in record["ops"]
        ]
        for name in (LOST_WORKER, SURVIVING_WORKER)
    }
    # Then every op the skewed worker finished looks finished SKEW seconds after it arrived
    # or later (its clock ran ahead), the other worker's did not: the skew was real, and the
    # outcomes (checked above) did not depend on it
    assert min(by_worker[SURVIVING_WORKER]) >= SKEW - 0.01
    assert min(by_worker[LOST_WORKER]) < SKEW


def test_the_run_is_summarised(run: Run) -> None:
    start = run.cluster.events[0][0]
    print()
    for at, what in run.cluster.events:
        print(f"{at - start:7.1f} s  {what}")
    loss = run.loss
    (upload,) = loss.writing
    refused = [
        r
        for r in balancer.requests_logged(run.cluster.request_log)
        if r.upload == upload and r.began > loss.at and r.status == 423
    ]
    print(f"(times from {start:.3f}, the wall clock, as in the balancer's log)")
    print(
        f"lost {loss.web} and {LOST_WORKER} at {loss.at - start:.1f} s; balancer had it out"
        f" {loss.down_at - loss.at:.1f} s later; the cut upload's lease lapsed"
        f" {loss.lease_lapses_at - loss.at:.1f} s later ({len(refused)} PATCH refused 423 until"
        f" then) and {loss.survivor} took it {loss.lease_taken_at - loss.at:.1f} s later;"
        f" Postgres dropped their sessions {loss.reaped_at - loss.at:.1f} s later;"
        f" {loss.web} back at {loss.back_at - start:.1f} s;"
        f" {len(loss.pending)} ops and {len(loss.unfinished)} uploads were left unfinished"
    )
    print(
        "sessions of the lost hosts right after (host, in a transaction, holding sync-state"
        f" rows): {sorted(loss.orphans)}"
    )


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
