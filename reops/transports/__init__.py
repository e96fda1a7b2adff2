"""L2: executors that run an Op on a host and return Results."""
