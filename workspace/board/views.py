"""The dispatch board's pages: the board (and its grid alone, for live refreshes), a move,
and "has anything changed since" (one feed query, polled by the open board)."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, time, timedelta
from typing import Any

from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse
from django.views.decorators.http import require_GET, require_POST

from workorders.fields import EARLIEST, LATEST
from workspace.board.moves import Move, MoveRefused, board_move
from workspace.board.selectors import board_changed_since, board_day, board_for, zone_of
from workspace.site import dispatcher_of

NOT_A_DISPATCHER = "The dispatch board is for dispatchers of an organisation."


@require_GET
def board_view(request: HttpRequest) -> HttpResponse:
    dispatcher = dispatcher_of(request.user)
    if dispatcher is None or dispatcher.organization is None:
        return TemplateResponse(
            request,
            "admin/board.html",
            {
                **admin.site.each_context(request),
                "title": "Dispatch board",
                "refused": NOT_A_DISPATCHER,
            },
            status=403,
        )
    organization = dispatcher.organization
    day = board_day(organization, request.GET.get("day"))
    board = board_for(organization, day, request.GET.get("q", "")[:100])
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Dispatch board",
        "board": board,
        "previous_day": day - timedelta(days=1),
        "next_day": day + timedelta(days=1),
    }
    template = "admin/board_grid.html" if request.GET.get("fragment") else "admin/board.html"
    return TemplateResponse(request, template, context)


@require_POST
def move_view(request: HttpRequest) -> JsonResponse:
    dispatcher = dispatcher_of(request.user)
    if dispatcher is None or dispatcher.organization is None:
        return _refused("not_allowed", NOT_A_DISPATCHER, 403)
    try:
        move = _parse_move(request.body, zone_of(dispatcher.organization))
    except (ValueError, TypeError, KeyError) as exc:
        return _refused("invalid_move", f"This move cannot be read: {exc}", 400)
    try:
        op = board_move(dispatcher, move)
    except MoveRefused as refused:
        code = {404: "not_found", 409: "stale"}.get(refused.status, "refused")
        return _refused(code, refused.detail, refused.status)
    return JsonResponse({"status": op.status, "version": op.version})


@require_GET
def changes_view(request: HttpRequest) -> JsonResponse:
    dispatcher = dispatcher_of(request.user)
    if dispatcher is None or dispatcher.organization_id is None:
        return _refused("not_allowed", NOT_A_DISPATCHER, 403)
    after = request.GET.get("after", "0")
    cursor = int(after) if after.isascii() and after.isdigit() and len(after) < 19 else 0
    newest = board_changed_since(dispatcher.organization_id, cursor)
    return JsonResponse({"cursor": newest or cursor, "changed": newest is not None})


def _parse_move(body: bytes, zone: Any) -> Move:
    data = json.loads(body)
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version = data["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError("version must be a positive integer")
    assigned_to = data.get("assigned_to")
    if assigned_to is not None and (not isinstance(assigned_to, str) or len(assigned_to) > 150):
        raise ValueError("assigned_to must be a username or empty")
    start = None
    if data.get("start"):
        day = date.fromisoformat(str(data["day"]))
        if not EARLIEST.date() < day < LATEST.date():
            raise ValueError("day is outside the years the board plans")
        start = datetime.combine(day, time.fromisoformat(str(data["start"])), tzinfo=zone)
    return Move(uuid.UUID(str(data["work_order_id"])), version, assigned_to, start)


def _refused(code: str, detail: str, status: int) -> JsonResponse:
    return JsonResponse({"code": code, "detail": detail}, status=status)
