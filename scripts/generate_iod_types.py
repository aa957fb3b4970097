"""Generate the attribute types that resolve PS3.15's compound action codes (X/Z, Z/D, X/Z/U*, ...).

Usage: python scripts/generate_iod_types.py [PATH/TO/ps3.3] [OUTPUT_DIR]

Reads the PS3.3 IOD -> module -> attribute tables (../shared/ps3.3, see its README) and the Table
E.1-1 rules this repository ships, and writes `iod_types.json`: for each IOD, the type (1, 1C, 2,
2C) of every attribute whose E.1-1 code is compound (or X, see `typed_tags`) in any column, keyed
by its tag and the tags of the sequences above it. When an attribute appears at one path in
several modules of an IOD, the strictest type wins: the one that keeps the most (1 > 1C > 2 > 2C
> 3). To keep the table small, only those attributes are kept, Type 3 is left out (it resolves
like an attribute the IOD does not define: to the first code), and IODs with identical tables
share one entry.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from pydicom.datadict import tag_for_keyword

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PS33 = ROOT.parent / "shared" / "ps3.3"
DEFAULT_OUT = ROOT / "pipeline" / "deid" / "data"
RULES = ROOT / "pipeline" / "deid" / "data" / "table_e1_1.json"
SINGLE_TAG = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")
STRICTEST_FIRST = ["1", "1C", "2", "2C", "3"]  # the one that keeps the most first


def typed_tags(rules: dict) -> dict[str, str]:
    """Keyword -> tag (8 hex digits) of the rows whose action can depend on the attribute's type.

    Those are the rows with a compound code in any column, and those with X alone in a column,
    except sequences: an attribute the IOD requires is emptied or dummied rather than removed,
    but a sequence the table removes is never kept.
    """
    found = {}
    for row in rules["rows"]:
        tag, keyword, *_ = row
        codes = row[5:]
        if any("/" in code for code in codes) or ("X" in codes and not keyword.endswith("Sequence")):
            single = SINGLE_TAG.match(tag)
            if single:
                found[keyword] = single[1] + single[2]
    return found


def hex_tag(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise SystemExit(f"sequence keyword {keyword!r} is not in pydicom's data dictionary")
    return f"{tag:08X}"


def iod_table(modules: list[dict], attributes: dict[str, list[dict]],
              wanted: dict[str, str]) -> dict[str, dict[str, str]]:
    """Tag -> {sequence path ('' at the top, else tags joined by '/') -> strictest type but 3}."""
    table: dict[str, dict[str, str]] = {}
    for module in modules:
        for row in attributes.get(module["key"], []):
            tag = wanted.get(row["keyword"])
            if tag is None or row["type"] not in STRICTEST_FIRST:
                continue
            path = "/".join(hex_tag(k) for k in row["path"])
            known = table.setdefault(tag, {}).get(path)
            if known is None or STRICTEST_FIRST.index(row["type"]) < STRICTEST_FIRST.index(known):
                table[tag][path] = row["type"]
    required = {tag: {path: kind for path, kind in sorted(paths.items()) if kind != "3"}
                for tag, paths in sorted(table.items())}
    return {tag: paths for tag, paths in required.items() if paths}


def generate(ps33: Path, out_dir: Path) -> None:
    sop_classes = json.loads((ps33 / "sop_class_iod_map.json").read_text("utf-8"))
    iods = json.loads((ps33 / "iod_module_map.json").read_text("utf-8"))
    attributes = json.loads((ps33 / "module_attribute_map.json").read_text("utf-8"))
    wanted = typed_tags(json.loads(RULES.read_text("utf-8")))
    tables: list[dict] = []
    iod_index: dict[str, int] = {}
    for iod in sorted(set(sop_classes.values())):
        table = iod_table(iods.get(iod, []), attributes, wanted)
        if table not in tables:
            tables.append(table)
        iod_index[iod] = tables.index(table)
    head = {"source": "PS3.3 IOD module and attribute tables, as highdicom 0.28.2 ships them",
            "content": "SOP Class UID -> table; table: tag -> sequence path -> type (3 left out)"}
    sop_lines = ",\n".join(f"  {json.dumps(uid)}: {iod_index[iod]}"
                            for uid, iod in sorted(sop_classes.items()))
    table_lines = ",\n".join("  " + json.dumps(t, separators=(",", ":")) for t in tables)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "iod_types.json").write_text(
        json.dumps(head)[:-1] + f', "sop_classes": {{\n{sop_lines}}},\n"tables": [\n{table_lines}\n]}}\n',
        encoding="utf-8")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PS33
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    generate(source, out)
    print(f"wrote attribute types from {source} to {out / 'iod_types.json'}")
