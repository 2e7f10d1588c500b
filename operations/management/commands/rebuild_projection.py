from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations.projection import projection_check


class Command(BaseCommand):
    help = (
        "Rebuild every record's current state from the event log and report any difference "
        "from the live tables (exit 1 if there is one). --fix overwrites the live tables."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--fix", action="store_true", help="write the rebuilt state")

    def handle(self, *args: Any, **options: Any) -> None:
        differences = projection_check(fix=options["fix"])
        for difference in differences[:1000]:
            self.stdout.write(str(difference))
        if differences and not options["fix"]:
            raise CommandError(f"{len(differences)} difference(s) between events and records")
        verb = "fixed" if differences else "found"
        self.stdout.write(f"projection check: {len(differences)} difference(s) {verb}")
