from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Organisations, people and devices"

    def ready(self) -> None:
        from accounts import signals
        from accounts.api import schema  # noqa: F401 - registers the OpenAPI auth scheme

        signals.connect()
