"""The workspace app, and the admin app as the dispatchers see it. Kept apart from
``workspace.site``: INSTALLED_APPS imports this module before any model can be, and the site
needs models."""

from __future__ import annotations

from django.apps import AppConfig

# Imported as a module: Django would take any AppConfig with ``default = True`` in this
# module's namespace (AdminConfig is one) as the config of the plain "workspace" entry.
from django.contrib.admin import apps as admin_apps


class WorkspaceConfig(AppConfig):
    """The workspace's own app: its templates, its ``admin`` module and ``seed_demo``."""

    name = "workspace"
    verbose_name = "Dispatcher workspace"


class FieldsyncAdminConfig(admin_apps.AdminConfig):
    """Replaces ``django.contrib.admin`` in INSTALLED_APPS, so ``admin.site`` (and every page
    registered on it, Django's own included) is the dispatchers' site."""

    # Else AdminConfig's ``default = True`` makes this the config of the "workspace" entry.
    default = False
    default_site = "workspace.site.FieldsyncAdminSite"
