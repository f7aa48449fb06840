"""The long-running processes: worker, projector, outbox, sweep, and the runtime that runs them."""
