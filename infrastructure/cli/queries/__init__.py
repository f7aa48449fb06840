"""What batchctl commands ask: each query returns plain data (no rich, no printing).

One module per command group; the commands (``infrastructure/cli/*.py``) render
what these return through ``infrastructure/cli/output.py``.
"""
