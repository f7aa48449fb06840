"""Regenerate the published message schemas and the AsyncAPI document in docs/.

    python scripts/schemas.py            # write docs/schemas/, docs/asyncapi.json, docs/huleedu/
    python scripts/schemas.py --check    # exit 1 (listing the files) if docs/ has drifted

The documents come from the pydantic models in ``application/schemas.py``; the
test ``tests/unit/test_schemas.py`` runs the same comparison as ``--check``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from application.schemas import (  # noqa: E402
    HULEEDU_DIR,
    SCHEMA_DIR,
    published_documents,
    published_huleedu_documents,
)

# Each set of documents and the folder under docs/ whose other JSON files are stale.
SETS = ((published_documents, SCHEMA_DIR), (published_huleedu_documents, HULEEDU_DIR))


def drifted(
    docs: Path, documents: Any = published_documents, folder: str = SCHEMA_DIR
) -> list[str]:
    """Paths under ``docs`` whose committed text differs from the models' (or is missing
    or no longer generated)."""
    wanted = documents()
    differing = [p for p, text in wanted.items() if _read(docs / p) != text]
    stale = [
        p.relative_to(docs).as_posix()
        for p in sorted((docs / folder).rglob("*.json"))
        if p.relative_to(docs).as_posix() not in wanted
    ]
    return sorted(differing + stale)


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


def write(docs: Path, documents: Any = published_documents, folder: str = SCHEMA_DIR) -> list[str]:
    wanted = documents()
    for stale in (docs / folder).rglob("*.json"):
        if stale.relative_to(docs).as_posix() not in wanted:
            stale.unlink()
    changed = []
    for relative, text in wanted.items():
        path = docs / relative
        if _read(path) != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            changed.append(relative)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs", help="the docs directory")
    args = parser.parse_args()
    if args.check:
        bad = [p for documents, folder in SETS for p in drifted(args.docs, documents, folder)]
        for path in bad:
            print(f"drifted: docs/{path}", file=sys.stderr)
        if bad:
            print("run: python scripts/schemas.py", file=sys.stderr)
        return 1 if bad else 0
    for documents, folder in SETS:
        for path in write(args.docs, documents, folder):
            print(f"wrote docs/{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
