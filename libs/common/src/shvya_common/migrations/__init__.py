"""Numbered SQL migrations, applied in order by `shvya_common.db.migrate`."""
