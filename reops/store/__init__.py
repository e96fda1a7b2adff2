"""L4: the durable store (SQLite) and the job queue, with their record types."""
