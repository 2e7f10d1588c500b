"""What the dispatch board shows: one lane per technician (and one for unassigned work), each
work order of the day a block placed by its scheduled time. A bounded number of queries,
whatever the number of technicians and work orders."""

from __future__ import annotations

import uuid
import zoneinfo
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from django.db.models import Count, Max
from django.db.models.functions import Greatest
from django.utils import timezone

from accounts.models import Device, DeviceKind, Organization, Role, User
from operations.models import FeedEntry, Operation, OpStatus
from workorders.fields import EARLIEST, LATEST
from workorders.models import Status, WorkOrder
from workspace.annotations import count_of, open_conflicts_here, uploads_in_progress_here

FIRST_HOUR, LAST_HOUR = 6, 22  # the window shown, widened for work outside it
DONE = (Status.COMPLETED, Status.CANCELLED)
# A phone that has not synced for this long is shown as offline since then.
OFFLINE_AFTER = timedelta(minutes=15)
DEFAULT_LENGTH = timedelta(hours=1)


@dataclass(frozen=True)
class Block:
    id: uuid.UUID
    version: int
    title: str
    customer: str
    status: str
    start: datetime | None  # in the organisation's zone
    end: datetime | None
    open_conflicts: int
    uploading: int
    overdue: bool
    left: float = 0.0  # percent of the window
    width: float = 0.0

    @property
    def label(self) -> str:
        """What a screen reader says of the block."""
        when = f"{self.start:%H:%M} to {self.end:%H:%M}" if self.start and self.end else "no time"
        parts = [self.title or "untitled", self.customer, when, self.status.replace("_", " ")]
        if self.open_conflicts:
            parts.append(f"{self.open_conflicts} open conflict(s)")
        if self.uploading:
            parts.append(f"{self.uploading} attachment(s) uploading")
        if self.overdue:
            parts.append("overdue")
        return ", ".join(p for p in parts if p)


@dataclass
class Lane:
    username: str  # "" for the unassigned lane
    name: str
    blocks: list[Block] = field(default_factory=list)
    last_sync: datetime | None = None
    pending: int = 0
    offline_since: datetime | None = None


@dataclass
class Board:
    day: date
    zone: str
    first_hour: int
    last_hour: int
    unassigned: Lane
    lanes: list[Lane]
    cursor: int
    query: str

    @property
    def hours(self) -> list[int]:
        return list(range(self.first_hour, self.last_hour))

    @property
    def technicians(self) -> list[tuple[str, str]]:
        return [(lane.username, lane.name) for lane in self.lanes]


def board_day(organization: Organization, requested: str | None) -> date:
    """The requested day (YYYY-MM-DD, within the years times are held in), else today in
    the organisation's zone."""
    if requested:
        try:
            day = date.fromisoformat(requested)
        except ValueError:
            day = None
        if day is not None and EARLIEST.date() < day < LATEST.date():
            return day
    return timezone.now().astimezone(zone_of(organization)).date()


def board_for(organization: Organization, day: date, query: str = "") -> Board:
    zone = zone_of(organization)
    start = datetime.combine(day, time.min, tzinfo=zone)
    end = start + timedelta(days=1)
    technicians = list(
        User.objects.filter(organization=organization, role=Role.TECHNICIAN, is_active=True)
        .order_by("username")
        .values_list("pk", "username", "first_name", "last_name")
    )
    # The cursor is read first: a change committed while the board is read is then above
    # it, and the open board's next question finds it.
    cursor = (
        FeedEntry.objects.filter(organization=organization)
        .order_by("-pos")
        .values_list("pos", flat=True)
        .first()
    )
    orders = _work_orders(organization, start, end, zone)
    first, last = _window(orders, start)
    lanes = {
        pk: Lane(username, _name(username, first_n, last_n))
        for pk, username, first_n, last_n in technicians
    }
    unassigned = Lane("", "Unassigned")
    wanted = query.strip().lower()
    for assignee, block in orders:
        lane = lanes.get(assignee) if assignee is not None else unassigned
        if lane is None:
            continue  # assigned to someone not an active technician: the list page shows it
        if wanted and not _matches(wanted, block, lane):
            continue
        lane.blocks.append(_placed(block, start, first, last))
    _add_health(organization, lanes)
    shown = [
        lane for lane in lanes.values()
        if not wanted or lane.blocks or wanted in f"{lane.username} {lane.name}".lower()
    ]  # fmt: skip
    return Board(day, str(zone), first, last, unassigned, shown, cursor or 0, query)


def board_changed_since(organization_id: int, cursor: int) -> int | None:
    """The newest feed position after ``cursor`` (one indexed query), else None."""
    return (
        FeedEntry.objects.filter(organization_id=organization_id, pos__gt=cursor)
        .order_by("-pos")
        .values_list("pos", flat=True)
        .first()
    )


def zone_of(organization: Organization) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(organization.time_zone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return zoneinfo.ZoneInfo("UTC")


def _name(username: str, first: str, last: str) -> str:
    return f"{first} {last}".strip() or username


def _work_orders(
    organization: Organization, start: datetime, end: datetime, zone: zoneinfo.ZoneInfo
) -> list[tuple[int | None, Block]]:
    rows = (
        WorkOrder.objects.filter(
            organization=organization,
            deleted=False,
            scheduled_start__gte=start,
            scheduled_start__lt=end,
        )
        .annotate(
            n_conflicts=count_of(open_conflicts_here(), "work_order_id"),
            n_uploading=count_of(uploads_in_progress_here(), "work_order_id"),
        )
        .order_by("scheduled_start", "title")
        .values_list(
            "pk", "version", "title", "customer_name", "status", "scheduled_start",
            "scheduled_end", "assigned_to_id", "n_conflicts", "n_uploading",
        )
    )  # fmt: skip
    now = timezone.now()
    out: list[tuple[int | None, Block]] = []
    for pk, version, title, customer, status, s, e, assignee, n_conflicts, n_uploading in rows:
        block_start = s.astimezone(zone) if s else None
        block_end = e.astimezone(zone) if e else None
        if block_start and (block_end is None or block_end <= block_start):
            block_end = block_start + DEFAULT_LENGTH
        overdue = block_end is not None and block_end < now and status not in DONE
        block = Block(
            pk, version, title, customer, status, block_start, block_end,
            n_conflicts, n_uploading, overdue,
        )  # fmt: skip
        out.append((assignee, block))
    return out


def _window(orders: list[tuple[int | None, Block]], start: datetime) -> tuple[int, int]:
    first, last = FIRST_HOUR, LAST_HOUR
    for _, block in orders:
        if block.start is not None and block.end is not None:
            first = min(first, block.start.hour)
            end_hours = (block.end - start).total_seconds() / 3600
            last = max(last, min(24, int(end_hours) + (0 if end_hours.is_integer() else 1)))
    return first, last


def _placed(block: Block, day_start: datetime, first: int, last: int) -> Block:
    if block.start is None or block.end is None:
        return block
    span = (last - first) * 3600
    offset = (block.start - day_start).total_seconds() - first * 3600
    length = (block.end - block.start).total_seconds()
    left = max(0.0, min(100.0, 100 * offset / span))
    width = max(1.5, min(100.0 - left, 100 * length / span))
    return Block(**{**block.__dict__, "left": round(left, 3), "width": round(width, 3)})


def _matches(wanted: str, block: Block, lane: Lane) -> bool:
    text = f"{block.title} {block.customer} {lane.username} {lane.name}".lower()
    return wanted in text


def _add_health(organization: Organization, lanes: dict[int, Lane]) -> None:
    """Last sync and pending ops per technician: two grouped queries for all of them."""
    last_sync = (
        Device.objects.filter(organization=organization, kind=DeviceKind.CLIENT)
        .values("user_id")
        .annotate(last=Max(Greatest("last_push_at", "last_pull_at")))
        .values_list("user_id", "last")
    )
    pending = (
        Operation.objects.filter(organization=organization, status=OpStatus.PENDING)
        .values("user_id")
        .annotate(n=Count("op_id"))
        .values_list("user_id", "n")
    )
    now = timezone.now()
    for user_id, last in last_sync:
        if user_id in lanes:
            lanes[user_id].last_sync = last
            if last is not None and now - last > OFFLINE_AFTER:
                lanes[user_id].offline_since = last
    for user_id, count in pending:
        if user_id in lanes:
            lanes[user_id].pending = count
