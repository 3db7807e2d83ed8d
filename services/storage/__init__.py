"""The storage service: every durable topic -> MongoDB, idempotent by key (see app.py)."""
