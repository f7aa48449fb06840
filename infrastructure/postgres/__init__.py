"""PostgreSQL: the event store, its recorder, readers, LISTEN and the tables beside it."""
