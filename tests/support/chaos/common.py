"""What every part of the fault run shares: the repository root and the console."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console

ROOT = Path(__file__).resolve().parents[3]
console = Console(width=None if sys.stdout.isatty() else 140)
