"""The benchmark (scripts/bench.py): its sections and its report."""
