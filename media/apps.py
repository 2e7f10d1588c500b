from django.apps import AppConfig


class MediaConfig(AppConfig):
    name = "media"
    verbose_name = "Attachments and uploads"

    def ready(self) -> None:
        from media.entity import ATTACHMENT
        from workorders.registry import register

        register(ATTACHMENT)
