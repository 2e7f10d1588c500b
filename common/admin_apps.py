"""The admin app as the dispatchers see it. Kept apart from ``common.admin_site``: INSTALLED_APPS
imports this module before any model can be, and the site needs models."""

from __future__ import annotations

from django.contrib.admin.apps import AdminConfig


class FieldsyncAdminConfig(AdminConfig):
    """Replaces ``django.contrib.admin`` in INSTALLED_APPS, so ``admin.site`` (and every
    ``@admin.register``, including other apps') is the dispatchers' site."""

    default_site = "common.admin_site.FieldsyncAdminSite"
