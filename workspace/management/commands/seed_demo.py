from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand
from django.utils import timezone

from accounts.services import field_user_create
from operations.services import op_submit_local
from workorders.fields import format_datetime
from workorders.models import WorkOrder

ORG = "demo"
DISPATCHER = ("dispatcher", "dispatch-demo")
TECHNICIANS = (("alice", "field-demo"), ("bob", "field-demo"))
JOBS = (
    ("Boiler service", "12 Harbour Road", "Nora Quinn"),
    ("Replace thermostat", "4 Mill Lane", "Owen Park"),
    ("Leaking radiator valve", "88 King Street", "Priya Shah"),
    ("Annual gas safety check", "3 Elm Close", "Tom Reyes"),
    ("No hot water", "17 Station Road", "Ada Lowe"),
    ("Install smart meter", "250 High Street", "Ben Ortiz"),
    ("Heat pump commissioning", "9 Orchard Way", "Cleo Hart"),
    ("Noisy extractor fan", "61 Bridge Street", "Dev Patel"),
    ("Underfloor heating fault", "5 Quarry Hill", "Eve Moss"),
    ("Pressure drop on system", "140 Park Avenue", "Finn Cole"),
    ("Fit new cylinder", "22 Chapel Row", "Gia Laurent"),
    ("Power flush", "7 Castle View", "Hugo Brandt"),
)


class Command(BaseCommand):
    help = "Seed a demo organisation (one dispatcher, two technicians, a dozen work orders) once."

    def handle(self, *args: Any, **options: Any) -> None:
        dispatcher = field_user_create(ORG, "dispatcher", *DISPATCHER)
        techs = [field_user_create(ORG, "technician", name, pw) for name, pw in TECHNICIANS]
        if not WorkOrder.objects.filter(organization_id=dispatcher.org_id).exists():
            start = timezone.now().replace(minute=0, second=0, microsecond=0)
            for i, (title, address, customer) in enumerate(JOBS):
                wo = uuid.uuid4()
                when = start + timedelta(hours=2 * i)
                fields = {
                    "title": title,
                    "address": address,
                    "customer_name": customer,
                    "priority": ("normal", "high", "low", "urgent")[i % 4],
                    "status": "scheduled",
                    "scheduled_start": format_datetime(when),
                    "scheduled_end": format_datetime(when + timedelta(hours=1)),
                    "assigned_to": techs[i % 2].username,
                }
                op_submit_local(dispatcher, "work_order", wo, "create", 0, fields)
                for label in ("Isolate supply", "Inspect and test", "Customer sign-off"):
                    item = {"work_order_id": str(wo), "label": label}
                    op_submit_local(dispatcher, "checklist_item", uuid.uuid4(), "create", 0, item)
            self.stdout.write(f"Seeded {len(JOBS)} work orders in organisation {ORG!r}.")
        self.stdout.write("Demo logins (API: POST /api/v1/auth/token; admin: /admin/):")
        self.stdout.write(f"  dispatcher  {DISPATCHER[0]} / {DISPATCHER[1]}")
        for name, pw in TECHNICIANS:
            self.stdout.write(f"  technician  {name} / {pw}")
