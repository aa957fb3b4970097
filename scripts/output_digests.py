"""Rewrite tests/data/output_digests.tsv from this tree's engine and pipeline (after a deliberate change).

Usage: python scripts/output_digests.py
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from digests import DIGESTS, fixed_archive, run_digests  # noqa: E402
from samples import SECRET  # noqa: E402

import pipeline  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fixed_archive(root / "source")
        pipeline.run(str(root / "source"), str(root / "dest"), tables=str(root / "tables"), secret=SECRET)
        lines = run_digests(root / "source", root / "dest", root / "tables")
    DIGESTS.write_text("\n".join(lines) + "\n")
    print(f"{len(lines)} objects -> {DIGESTS}")


if __name__ == "__main__":
    main()
