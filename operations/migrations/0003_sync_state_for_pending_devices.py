"""The apply now claims devices by their sync state row, which a push makes with a device's
first ops. Devices with ops pending from before get theirs here (the sweep would otherwise
find them only once their ops are stale)."""

from django.db import migrations

FORWARD = """
    INSERT INTO operations_devicesyncstate
        (device_id, done_seq, gap_since, gap_seq, skipped_seqs, compacted_seq, last_error)
    SELECT DISTINCT device_id, 0, NULL::timestamptz, NULL::bigint, '[]'::jsonb, 0, ''
    FROM operations_operation WHERE status = 'pending'
    ON CONFLICT DO NOTHING
"""


class Migration(migrations.Migration):
    dependencies = [("operations", "0002_devicesyncstate")]

    operations = [migrations.RunSQL(FORWARD, reverse_sql=migrations.RunSQL.noop)]
