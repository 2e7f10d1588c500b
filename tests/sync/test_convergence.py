"""Property: whatever order the same ops arrive in — shuffled batches, a device's later ops
before its earlier ones, retries of whole batches, applies at random moments — the records
end up the same.

Each device applies in seq order whatever the arrival order, so what is left to chance is
how different devices' ops interleave. The contract settles two devices writing the same
field by arrival on purpose (last_writer_wins, manual, and server_wins between two
technicians keep whichever the server saw first or last), so each device here writes
fields of its own; appends (comments) come from every device.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from accounts.models import User
from tests.fixtures import Phone, apply_now, client_for
from workorders.models import Comment, WorkOrder
from workorders.registry import WORK_ORDER

pytestmark = pytest.mark.django_db(transaction=True)

# Which fields each device writes: disjoint, across all three merge rules.
DEVICE_FIELDS = {
    "office": ("address", "title", "priority"),
    "phone": ("technician_notes", "status"),
    "tablet": ("arrived_at", "completed_at"),
}
VALUES = {
    "address": st.sampled_from(["1 Main St", "2 Side St", "3 Back Ln"]),
    "title": st.sampled_from(["Boiler", "Valve", "Pump"]),
    "priority": st.sampled_from(["low", "high", "urgent"]),
    # NUL and unpaired surrogates are refused at push (Postgres text cannot hold them);
    # other text must converge.
    "technician_notes": st.text(
        st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=5
    ),
    "arrived_at": st.sampled_from([None, "2026-11-23T09:00:00Z", "2026-11-23T10:30:00Z"]),
    "completed_at": st.sampled_from([None, "2026-11-23T11:00:00Z"]),
    "status": st.sampled_from(["en_route", "on_site", "completed"]),
}


@dataclass(frozen=True)
class Step:
    device: str
    work_order: int  # index into the scenario's work orders
    fields: dict[str, Any] | None  # None: append a comment


@st.composite
def steps(draw: st.DrawFn) -> list[Step]:
    out: list[Step] = []
    for _ in range(draw(st.integers(3, 14))):
        device = draw(st.sampled_from(sorted(DEVICE_FIELDS)))
        wo = draw(st.integers(0, 1))
        if draw(st.booleans()) and device != "office":
            out.append(Step(device, wo, None))
            continue
        names = draw(
            st.lists(st.sampled_from(DEVICE_FIELDS[device]), min_size=1, max_size=2, unique=True)
        )
        out.append(Step(device, wo, {n: draw(VALUES[n]) for n in names}))
    return out


def _run(
    users: dict[str, User], scenario: list[Step], rng: random.Random
) -> tuple[list[dict[str, Any]], list[set[str]]]:
    """Create two fresh work orders, replay the scenario's ops in an order chosen by rng,
    and return each record's values and its comments."""
    office = Phone(users["office"], client_for(users["office"]))
    phones = {name: Phone(users[name], client_for(users[name])) for name in ("phone", "tablet")}
    devices = {"office": office, **phones}
    work_orders = [str(uuid.uuid4()), str(uuid.uuid4())]
    office.push(*(
        office.op("work_order", wo, "create", 0, title="Job", assigned_to=users["phone"].username)
        for wo in work_orders
    ))  # fmt: skip
    apply_now()
    per_device: dict[str, list[dict[str, Any]]] = {name: [] for name in devices}
    for step in scenario:
        phone = devices[step.device]
        wo = work_orders[step.work_order]
        if step.fields is None:
            body = {"work_order_id": wo, "body": f"{step.device}:{phone.seq + 1}"}
            per_device[step.device].append(
                phone.op("comment", str(uuid.uuid4()), "create", 0, **body)
            )
        else:
            per_device[step.device].append(phone.op("work_order", wo, "update", 1, **step.fields))
    batches: list[tuple[str, list[dict[str, Any]]]] = []
    for name, ops in per_device.items():
        cut = (
            sorted(rng.sample(range(1, len(ops)), k=min(len(ops) - 1, rng.randint(0, 3))))
            if len(ops) > 1
            else []
        )
        bounds = [0, *cut, len(ops)]
        batches += [(name, ops[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
    rng.shuffle(batches)
    batches += rng.sample(batches, k=min(len(batches), rng.randint(0, 2)))  # lost responses
    for name, ops in batches:
        results = devices[name].push(*ops)
        assert all(r["status"] in {"accepted", "duplicate"} for r in results), results
        if rng.random() < 0.5:
            apply_now()
    apply_now()
    records = [WorkOrder.objects.select_related("assigned_to").get(pk=wo) for wo in work_orders]
    values = [WORK_ORDER.values(r) for r in records]
    comments = [
        set(Comment.objects.filter(work_order_id=wo).values_list("body", flat=True))
        for wo in work_orders
    ]
    return values, comments


@pytest.fixture
def users(make_user: Callable[..., User]) -> dict[str, User]:
    tech = make_user("technician")
    return {"office": make_user("dispatcher"), "phone": tech, "tablet": tech}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(scenario=steps(), seed_a=st.integers(0, 2**32), seed_b=st.integers(0, 2**32))
def test_any_arrival_order_converges(
    users: dict[str, User], scenario: list[Step], seed_a: int, seed_b: int
) -> None:
    first = _run(users, scenario, random.Random(seed_a))
    second = _run(users, scenario, random.Random(seed_b))
    assert first == second
