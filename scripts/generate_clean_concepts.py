"""Generate the Clean Structured Content concepts (PS3.15 Table E.3.4-1) as package data.

Usage: python scripts/generate_clean_concepts.py [PATH/TO/clean_struct_cont_concepts.csv] [OUTPUT_DIR]

Reads the table as extracted from the standard's DocBook source (../shared/ps3.15, see its
README) and writes `clean_struct_cont.json`, one row per concept name code and value type, so
that no concept is typed by hand.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from generate_rules import ACTION_CODES, DEFAULT_OUT, dump

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "ps3.15" / "clean_struct_cont_concepts.csv"
COLUMNS = ["coding_scheme", "code_value", "value_type", "code_meaning", "basic", "rtn_uids", "rtn_dev_id",
           "rtn_inst_id", "rtn_pat_chars", "rtn_long_full_dates", "rtn_long_modif_dates", "clean_desc"]


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    for row in table:
        if any(row[c] not in ACTION_CODES for c in COLUMNS[4:]) or not row["basic"]:
            raise SystemExit(f"unexpected action code in {row}")
    return [[row[c] for c in COLUMNS] for row in table]


def generate(csv_path: Path, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    dump(out_dir / "clean_struct_cont.json",
         {"source": "PS3.15 Table E.3.4-1", "edition": "2026c", "columns": COLUMNS, "rows": rows(csv_path)})


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_CSV
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    generate(source, out)
    print(f"wrote Clean Structured Content concepts from {source} to {out}")
