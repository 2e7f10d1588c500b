"""Drop the apply cursor from Device: operations/0002_devicesyncstate copied it to the sync
engine's DeviceSyncState first (and copies it back when migrating backwards)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_api_token_device"),
        ("operations", "0002_devicesyncstate"),
    ]

    operations = [
        migrations.RemoveField(model_name="device", name="done_seq"),
        migrations.RemoveField(model_name="device", name="gap_since"),
        migrations.RemoveField(model_name="device", name="gap_seq"),
        migrations.RemoveField(model_name="device", name="skipped_seqs"),
        migrations.RemoveField(model_name="device", name="compacted_seq"),
        migrations.RemoveField(model_name="device", name="last_error"),
    ]
