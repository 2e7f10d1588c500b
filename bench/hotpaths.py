"""Hot paths in-process: the server CPU and queries of one phone's sync, part by part.

Not a load test: one thread, no network, no contention. It answers "what does a push, an
apply and a pull cost on their own, and where does it go", so every change to a hot path can
be measured before and after it. `python -m devstack exec -- .venv/bin/python -m bench
hotpaths` prints a table; `BENCH_PROFILE=push|apply|pull` adds a cProfile of that part.

Set-up: an organisation of BENCH_HOT_PHONES technicians (default 50), 3 work orders of 3
checklist items each, applied. Then BENCH_HOT_ROUNDS rounds (default 3) of: every phone
pushes 5 ops (notes, ticks, a status, a comment) through Django's WSGI handler; one drain
applies them all as the worker does (its CPU shared out per phone); every phone pulls from
its cursor, then pulls again and finds nothing new. CPU is this thread's: Postgres' is not
in it.
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.processes import setup_django

PARTS = ("push", "apply", "pull", "pull_empty")
CLIENT_TIME = "2026-11-23T08:00:00Z"


@dataclass
class Meter:
    cpu: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})
    # Wall time: the CPU plus Postgres' part (and waits).
    wall: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})
    queries: dict[str, list[int]] = field(default_factory=lambda: {p: [] for p in PARTS})
    profiles: dict[str, cProfile.Profile] = field(default_factory=dict)

    def run(self, part: str, call: Callable[[], Any]) -> Any:
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        profile = self.profiles.get(part)
        with CaptureQueriesContext(connection) as captured:
            start, began = time.thread_time(), time.perf_counter()
            if profile is not None:
                profile.enable()
            result = call()
            if profile is not None:
                profile.disable()
            self.cpu[part].append(time.thread_time() - start)
            self.wall[part].append(time.perf_counter() - began)
        self.queries[part].append(len(captured.captured_queries))
        return result


@dataclass
class Phone:
    token: str
    device_id: uuid.UUID
    work_orders: list[uuid.UUID]
    items: list[uuid.UUID]
    versions: dict[uuid.UUID, int]
    seq: int = 0
    cursor: str | None = None


def main() -> int:
    setup_django()
    from django.test import Client

    phones_n = int(os.environ.get("BENCH_HOT_PHONES", "50"))
    rounds = int(os.environ.get("BENCH_HOT_ROUNDS", "3"))
    meter = Meter()
    wanted = os.environ.get("BENCH_PROFILE", "")
    if wanted:
        meter.profiles[wanted] = cProfile.Profile(time.thread_time)  # CPU, not waiting
    client = Client()
    phones = setup_phones(client, phones_n)
    rng = random.Random(7)
    # One round untimed: first-request costs (imports, caches) are not a sync's.
    for r in range(rounds + 1):
        sync_round(client, phones, rng, meter if r > 0 else Meter())
    _report(meter, phones_n * rounds)
    return 0


def setup_phones(client: Any, count: int) -> list[Phone]:
    from accounts.services import field_user_create, token_issue
    from operations.services import device_apply_pending

    org = f"hot-{uuid.uuid4().hex[:8]}"
    dispatcher = field_user_create(org, "dispatcher", f"{org}-d", "pw-hot-1")
    admin_token = token_issue(dispatcher)
    admin_device = uuid.uuid4()
    phones: list[Phone] = []
    ops: list[dict[str, Any]] = []
    for n in range(count):
        tech = field_user_create(org, "technician", f"{org}-t{n}", "pw-hot-1")
        phone = Phone(token_issue(tech), uuid.uuid4(), [], [], {})
        for w in range(3):
            wo = uuid.uuid4()
            phone.work_orders.append(wo)
            ops.append(_op(len(ops) + 1, "work_order", wo, "create", 0, {
                "title": f"Boiler {n}-{w}", "address": "1 Harbour Street", "status": "scheduled",
                "customer_name": "Morag Campbell", "assigned_to": tech.username,
            }))  # fmt: skip
            for c in range(3):
                item = uuid.uuid4()
                phone.items.append(item)
                fields = {"work_order_id": str(wo), "label": f"Step {c}"}
                ops.append(_op(len(ops) + 1, "checklist_item", item, "create", 0, fields))
        phones.append(phone)
    for i in range(0, len(ops), 500):
        _post(client, admin_token, admin_device, ops[i : i + 500])
    while device_apply_pending(admin_device):
        pass
    for phone in phones:
        while _pull(client, phone):
            pass
    return phones


def _op(
    seq: int, entity: str, entity_id: uuid.UUID, action: str, base: int, fields: dict[str, Any]
) -> dict[str, Any]:
    return {
        "op_id": str(uuid.uuid4()), "seq": seq, "entity": entity, "entity_id": str(entity_id),
        "action": action, "base_version": base, "fields": fields, "client_time": CLIENT_TIME,
    }  # fmt: skip


def _post(client: Any, token: str, device: uuid.UUID, ops: list[dict[str, Any]]) -> None:
    body = json.dumps({"device_id": str(device), "ops": ops})
    response = client.post(
        "/api/v1/sync/push", body, content_type="application/json",
        HTTP_AUTHORIZATION=f"Token {token}",
    )  # fmt: skip
    results = response.json()["results"]
    if response.status_code != 200 or any(r["status"] != "accepted" for r in results):
        raise RuntimeError(f"push answered {response.status_code}: {results[:3]}")


def _pull(client: Any, phone: Phone) -> bool:
    query = {"device_id": str(phone.device_id)}
    if phone.cursor:
        query["cursor"] = phone.cursor
    response = client.get("/api/v1/sync/pull", query, HTTP_AUTHORIZATION=f"Token {phone.token}")
    if response.status_code != 200:
        raise RuntimeError(f"pull answered {response.status_code}: {response.content[:300]!r}")
    data = response.json()
    for change in data["changes"]:
        phone.versions[uuid.UUID(change["entity_id"])] = change["version"]
    phone.cursor = data["cursor"]
    return bool(data["has_more"])


def sync_round(client: Any, phones: list[Phone], rng: random.Random, meter: Meter) -> None:
    """Every phone pushes; the worker drains them all (as it does under load, many devices
    a round), its cost shared out per phone; every phone pulls, then pulls again."""
    from operations.services import ops_apply_drain

    # BENCH_HOT_DRAIN_EVERY: how many pushes one drain finds (default: every phone's).
    every = int(os.environ.get("BENCH_HOT_DRAIN_EVERY", "0")) or len(phones)
    for start in range(0, len(phones), every):
        group = phones[start : start + every]
        for phone in group:
            ops = _edits(phone, rng)
            meter.run("push", lambda p=phone, o=ops: _post(client, p.token, p.device_id, o))  # type: ignore[misc]
        before = len(meter.cpu["apply"])
        meter.run("apply", lambda: ops_apply_drain(budget_seconds=3600))
        cpu, queries = meter.cpu["apply"].pop(), meter.queries["apply"].pop()
        wall = meter.wall["apply"].pop()
        meter.cpu["apply"][before:] = [cpu / len(group)] * len(group)
        meter.wall["apply"][before:] = [wall / len(group)] * len(group)
        meter.queries["apply"][before:] = [queries // len(group)] * len(group)
    for phone in phones:
        meter.run("pull", lambda p=phone: _pull(client, p))  # type: ignore[misc]
        meter.run("pull_empty", lambda p=phone: _pull(client, p))  # type: ignore[misc]


def _edits(phone: Phone, rng: random.Random) -> list[dict[str, Any]]:
    ops = []
    for kind in ("notes", "tick", "tick", "status", "comment"):
        phone.seq += 1
        wo = rng.choice(phone.work_orders)
        if kind == "notes":
            notes = {"technician_notes": f"Visit {phone.seq}: valve replaced."}
            ops.append(_op(phone.seq, "work_order", wo, "update", phone.versions[wo], notes))
        elif kind == "status":
            status = ("en_route", "on_site", "on_hold")[phone.seq % 3]
            ops.append(_op(phone.seq, "work_order", wo, "update", phone.versions[wo],
                           {"status": status}))  # fmt: skip
        elif kind == "tick":
            item = rng.choice(phone.items)
            ops.append(_op(phone.seq, "checklist_item", item, "update", phone.versions[item],
                           {"done": rng.random() < 0.5}))  # fmt: skip
        else:
            fields = {"work_order_id": str(wo), "body": f"Call back ({phone.seq})."}
            ops.append(_op(phone.seq, "comment", uuid.uuid4(), "create", 0, fields))
    return ops


def _report(meter: Meter, syncs: int) -> None:
    print(f"bench hotpaths: {syncs} syncs in-process (5 ops each), CPU of this thread")
    print("(apply: one drain of every phone's push per round, shared out per phone)")
    print("| part | CPU p50 | CPU mean | wall p50 | queries |")
    print("|---|---:|---:|---:|---:|")
    for part in PARTS:
        cpu, wall = meter.cpu[part], meter.wall[part]
        queries = statistics.median(meter.queries[part])
        print(
            f"| {part} | {statistics.median(cpu) * 1000:.2f} ms | "
            f"{statistics.fmean(cpu) * 1000:.2f} ms | {statistics.median(wall) * 1000:.2f} ms | "
            f"{queries:.0f} |"
        )
    for part, profile in meter.profiles.items():
        out = io.StringIO()
        stats = pstats.Stats(profile, stream=out)
        stats.sort_stats("cumulative").print_stats(int(os.environ.get("BENCH_PROFILE_LINES", "45")))
        stats.sort_stats("tottime").print_stats(25)
        print(f"\n## cProfile of {part}\n{out.getvalue()}")


if __name__ == "__main__":
    sys.exit(main())
