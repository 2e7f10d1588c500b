"""The apply cursor leaves the account's Device row for a row of the sync engine's own.

The fields are copied over here and dropped from accounts.Device by
accounts/0003_device_sync_state_moved; both directions keep every value.
"""

import django.db.models.deletion
from django.db import migrations, models

_FIELDS = ("done_seq", "gap_since", "gap_seq", "skipped_seqs", "compacted_seq", "last_error")


def copy_to_sync_state(apps, schema_editor):
    Device = apps.get_model("accounts", "Device")
    DeviceSyncState = apps.get_model("operations", "DeviceSyncState")
    rows = Device.objects.values("id", *_FIELDS).iterator(chunk_size=2000)
    batch = []
    for row in rows:
        batch.append(DeviceSyncState(device_id=row.pop("id"), **row))
        if len(batch) == 2000:
            DeviceSyncState.objects.bulk_create(batch)
            batch = []
    DeviceSyncState.objects.bulk_create(batch)


def copy_back_to_device(apps, schema_editor):
    Device = apps.get_model("accounts", "Device")
    DeviceSyncState = apps.get_model("operations", "DeviceSyncState")
    for state in DeviceSyncState.objects.iterator(chunk_size=2000):
        Device.objects.filter(pk=state.device_id).update(
            **{name: getattr(state, name) for name in _FIELDS}
        )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_api_token_device"),
        ("operations", "0001_initial"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeviceSyncState",
            fields=[
                (
                    "device",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="sync_state",
                        serialize=False,
                        to="accounts.device",
                    ),
                ),
                ("done_seq", models.BigIntegerField(default=0)),
                ("gap_since", models.DateTimeField(blank=True, null=True)),
                ("gap_seq", models.BigIntegerField(blank=True, null=True)),
                ("skipped_seqs", models.JSONField(blank=True, default=list)),
                ("compacted_seq", models.BigIntegerField(default=0)),
                ("last_error", models.TextField(blank=True, default="")),
            ],
        ),
        migrations.RunPython(copy_to_sync_state, copy_back_to_device),
    ]
