"""batchctl: the operator's command line (CONTRACT §6)."""
