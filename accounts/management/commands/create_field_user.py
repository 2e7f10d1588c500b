from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Role
from accounts.services import field_user_create
from common.exceptions import DomainError


class Command(BaseCommand):
    help = "Create an organisation (if needed) and a dispatcher or technician. Idempotent."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--org", required=True)
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--username", required=True)
        parser.add_argument("--password", required=True)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            user = field_user_create(
                options["org"], options["role"], options["username"], options["password"]
            )
        except DomainError as exc:
            raise CommandError(exc.detail) from exc
        self.stdout.write(f"{user.username} ({user.role}) in {options['org']}")
