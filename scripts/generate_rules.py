"""Generate the engine's rule tables from the DICOM standard's own PS3.15 DocBook source.

Usage: python scripts/generate_rules.py [PATH/TO/part15.xml] [OUTPUT_DIR]

Reads Table E.1-1 (Application Level Confidentiality Profile Attributes) and Table E.3.10-1
(Safe Private Attributes) and writes them as JSON package data, so that no rule is typed by hand.
"""

from __future__ import annotations

import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

from pydicom.datadict import keyword_for_tag

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_XML = ROOT.parent / "shared" / "ps3.15" / "source" / "part15.xml"
DEFAULT_OUT = ROOT / "pipeline" / "deid" / "data"

NS = {"db": "http://docbook.org/ns/docbook"}
XML_ID = "{http://www.w3.org/XML/1998/namespace}id"

E1_1_HEADER = [
    "Attribute Name", "Tag", "Retd. (from PS3.6)", "In Std. Comp. IOD (from PS3.3)",
    "Basic Prof.", "Rtn. Safe Priv. Opt.", "Rtn. UIDs Opt.", "Rtn. Dev. Id. Opt.",
    "Rtn. Inst. Id. Opt.", "Rtn. Pat. Chars. Opt.", "Rtn. Long. Full Dates Opt.",
    "Rtn. Long. Modif. Dates Opt.", "Clean Desc. Opt.", "Clean Struct. Cont. Opt.",
    "Clean Graph. Opt.",
]
E1_1_COLUMNS = [
    "tag", "keyword", "name", "retired", "in_std_comp_iod", "basic", "rtn_safe_priv",
    "rtn_uids", "rtn_dev_id", "rtn_inst_id", "rtn_pat_chars", "rtn_long_full_dates",
    "rtn_long_modif_dates", "clean_desc", "clean_struct_cont", "clean_graph",
]
E3_10_HEADER = ["Data Element", "Private Creator", "VR", "VM", "Meaning"]
ACTION_CODES = {"", "D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"}
SINGLE_TAG = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


def cell_text(cell: ET.Element) -> str:
    """Flatten a cell the way the standard prints it: olinks become their document name."""
    parts: list[str] = []

    def walk(node: ET.Element) -> None:
        if node.tag == f"{{{NS['db']}}}olink":
            parts.append(node.get("targetdoc", ""))
        elif node.text:
            parts.append(node.text)
        for child in node:
            walk(child)
            if child.tail:
                parts.append(child.tail)

    walk(cell)
    return " ".join("".join(parts).replace("\u200b", "").split())


def table_rows(root: ET.Element, table_id: str, header: list[str]) -> list[list[str]]:
    """Return a table's body rows after checking its header is the one this script expects."""
    table = next(t for t in root.iter(f"{{{NS['db']}}}table") if t.get(XML_ID) == table_id)
    found = [cell_text(th) for th in table.findall("db:thead/db:tr/db:th", NS)]
    if found != header:
        raise SystemExit(f"{table_id}: unexpected header {found}")
    rows = []
    for tr in table.findall("db:tbody/db:tr", NS):
        cells = tr.findall("db:td", NS)
        if len(cells) != len(header) or any(
            c.get("rowspan", "1") != "1" or c.get("colspan", "1") != "1" for c in cells
        ):
            raise SystemExit(f"{table_id}: irregular row {[cell_text(c) for c in cells]}")
        rows.append([cell_text(c) for c in cells])
    return rows


def keyword(tag: str, name: str) -> str:
    """The data dictionary's keyword; for attributes newer than pydicom, the PS3.6 naming rule."""
    match = SINGLE_TAG.match(tag)
    if not match:
        return {"Overlay Data": "OverlayData", "Overlay Comments": "OverlayComments"}.get(name, "")
    known = keyword_for_tag(int(match[1] + match[2], 16))
    if known:
        return known
    words = re.sub(r"\(.*?\)", "", name).replace("'", "").split()
    return "".join(w[:1].upper() + w[1:] for w in re.sub(r"[^0-9A-Za-z ]", " ", " ".join(words)).split())


def e1_1(root: ET.Element) -> list[list[str]]:
    out = []
    for name, tag, retired, iod, *actions in table_rows(root, "table_E.1-1", E1_1_HEADER):
        if any(a not in ACTION_CODES for a in actions) or {retired, iod} - {"Y", "N"}:
            raise SystemExit(f"E.1-1: unexpected cell in row {name} {tag}")
        out.append([tag, keyword(tag, name), name, retired, iod, *actions])
    return out


def e3_10(root: ET.Element) -> list[list[str]]:
    rows = table_rows(root, "table_E.3.10-1", E3_10_HEADER)
    return [[creator, tag.upper().replace("XX", "xx"), meaning, vr, vm]
            for tag, creator, vr, vm, meaning in rows]


def edition(root: ET.Element) -> str:
    subtitle = root.findtext("db:subtitle", "", NS)
    match = re.search(r"PS3\.15 (\d{4}[a-z])", subtitle)
    if not match:
        raise SystemExit(f"cannot read the edition from {subtitle!r}")
    return match[1]


def dump(path: Path, document: dict) -> None:
    """One row per line, so that a change of the standard reads as a small diff."""
    rows = document.pop("rows")
    head = json.dumps(document, ensure_ascii=False)[:-1]
    body = ",\n".join("  " + json.dumps(r, ensure_ascii=False) for r in rows)
    path.write_text(f'{head}, "rows": [\n{body}\n]}}\n', encoding="utf-8")


def generate(xml_path: Path, out_dir: Path) -> None:
    root = ET.parse(xml_path).getroot()
    ed = edition(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    dump(out_dir / "table_e1_1.json",
         {"source": "PS3.15 Table E.1-1", "edition": ed, "columns": E1_1_COLUMNS,
          "rows": e1_1(root)})
    dump(out_dir / "safe_private.json",
         {"source": "PS3.15 Table E.3.10-1", "edition": ed,
          "columns": ["private_creator", "tag", "name", "vr", "vm"], "rows": e3_10(root)})


if __name__ == "__main__":
    xml = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_XML
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else DEFAULT_OUT
    generate(xml, out)
    print(f"wrote rule tables from {xml} to {out}")
