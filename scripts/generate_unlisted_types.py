"""Generate the types of the attributes Table E.1-1 does not list, for the safety net's decisions.

Usage: python scripts/generate_unlisted_types.py [PATH/TO/ps3.3] [OUTPUT_DIR]

Reads the PS3.3 IOD -> module -> attribute tables (../shared/ps3.3) and writes `unlisted_types.json`:
per module, the strictest type (1, 1C, 2, 2C) of each attribute E.1-1 does not list that the module
requires at the top level, and of those it requires at some sequence path, and per SOP class the
modules of its IOD. The safety net dummies a person name of Type 1 (else empties it), and
`--unlisted remove` keeps only what is required. Sequence paths are left out, which keeps the file
small (with them it would be about 50 times larger): an attribute required in some sequence of an
IOD counts as required in every sequence of that IOD.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from generate_iod_types import DEFAULT_PS33, RULES, STRICTEST_FIRST
from pydicom.datadict import tag_for_keyword

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "pipeline" / "deid" / "data"
REQUIRED = STRICTEST_FIRST[:4]  # 1, 1C, 2, 2C


def module_types(rows: list[dict], listed: set[str]) -> list[dict[str, str]]:
    """Tag (8 hex digits) -> strictest required type of one module's unlisted attributes, at the top
    level and in sequences."""
    found: list[dict[str, str]] = [{}, {}]
    for row in rows:
        tag = tag_for_keyword(row["keyword"])
        if tag is None or row["keyword"] in listed or row["type"] not in REQUIRED:
            continue
        key, where = f"{tag:08X}", found[bool(row["path"])]
        if key not in where or REQUIRED.index(row["type"]) < REQUIRED.index(where[key]):
            where[key] = row["type"]
    return [dict(sorted(where.items())) for where in found]


def generate(ps33: Path, out_dir: Path) -> None:
    sop_classes = json.loads((ps33 / "sop_class_iod_map.json").read_text("utf-8"))
    iods = json.loads((ps33 / "iod_module_map.json").read_text("utf-8"))
    attributes = json.loads((ps33 / "module_attribute_map.json").read_text("utf-8"))
    listed = {row[1] for row in json.loads(RULES.read_text("utf-8"))["rows"] if row[1]}
    modules: list[list[dict[str, str]]] = []
    iod_modules: list[list[int]] = []
    iod_index: dict[str, int] = {}
    for iod in sorted(set(sop_classes.values())):
        indices = []
        for module in iods.get(iod, []):
            types = module_types(attributes.get(module["key"], []), listed)
            if any(types) and types not in modules:
                modules.append(types)
            if any(types) and modules.index(types) not in indices:
                indices.append(modules.index(types))
        indices.sort()
        if indices not in iod_modules:
            iod_modules.append(indices)
        iod_index[iod] = iod_modules.index(indices)
    head = {"source": "PS3.3 IOD module and attribute tables, as highdicom 0.28.2 ships them",
            "content": "SOP Class UID -> IOD; IOD: module numbers; module: [top level, in sequences], "
                       "each tag -> strictest required type"}
    sop_lines = ",\n".join(f"  {json.dumps(uid)}: {iod_index[iod]}"
                            for uid, iod in sorted(sop_classes.items()))
    iod_lines = ",\n".join("  " + json.dumps(m, separators=(",", ":")) for m in iod_modules)
    module_lines = ",\n".join("  " + json.dumps(m, separators=(",", ":")) for m in modules)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "unlisted_types.json").write_text(
        json.dumps(head)[:-1] + f', "sop_classes": {{\n{sop_lines}}},\n"iods": [\n{iod_lines}\n],\n'
        f'"modules": [\n{module_lines}\n]}}\n', encoding="utf-8")


if __name__ == "__main__":
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_PS33
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    generate(source, out)
    print(f"wrote unlisted attribute types from {source} to {out / 'unlisted_types.json'}")
