"""The fault run (scripts/chaos.py): processes, faults, readers and the history checker."""
