"""Clean Structured Content (PS3.15 E.3.4): each SR content item acted on by its concept name.

Content items (in a Content Sequence, Acquisition Context, Specimen Preparation step or Waveform
Annotation) carry their meaning in a Concept Name Code, not in a tag, so Table E.1-1 cannot say what
to do with their values; Table E.3.4-1 does, per concept, with the same option columns. The item
always stays (its value replaced, never removed), so the tree stays well formed and references
to items by position still hold: X and D both give a dummy value, U and UIDREF values a new UID.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from .profile import Profile
from .rules import OPTION_COLUMNS, resolve_row

CONTENT_SEQUENCE, ACQUISITION_CONTEXT, SPECIMEN_PREPARATION = 0x0040A730, 0x00400555, 0x00400610
SPECIMEN_STEP_ITEMS, WAVEFORM_ANNOTATION = 0x00400612, 0x0040B020
# The sequences the Clean Structured Content option cleans (its C column in Table E.1-1), and the
# Specimen Preparation steps' content items, wherever they occur.
STRUCTURED_SEQUENCES = frozenset({CONTENT_SEQUENCE, ACQUISITION_CONTEXT, SPECIMEN_PREPARATION,
                                  WAVEFORM_ANNOTATION, SPECIMEN_STEP_ITEMS})
# The sequences whose items are content items.
ITEM_SEQUENCES = frozenset({CONTENT_SEQUENCE, ACQUISITION_CONTEXT, SPECIMEN_STEP_ITEMS, WAVEFORM_ANNOTATION})
VALUE_TYPE, CONCEPT_NAME, CODE_VALUE, CODING_SCHEME = 0x0040A040, 0x0040A043, 0x00080100, 0x00080102
TEXT_VALUE, UNFORMATTED_TEXT, PERSON_NAME, UID = 0x0040A160, 0x00700006, 0x0040A123, 0x0040A124
DATE, TIME, DATETIME = 0x0040A121, 0x0040A122, 0x0040A120
MEASURED_VALUES, NUMERIC_VALUE, CONCEPT_CODE = 0x0040A300, 0x0040A30A, 0x0040A168
# Where each value type keeps its value.
VALUE_TAGS = {
    "TEXT": (TEXT_VALUE, UNFORMATTED_TEXT), "PNAME": (PERSON_NAME,), "DATE": (DATE,), "TIME": (TIME,),
    "DATETIME": (DATETIME,), "UIDREF": (UID,), "NUM": (MEASURED_VALUES, NUMERIC_VALUE),
    "CODE": (CONCEPT_CODE,),
}
# Concepts the table does not list: names go, text is cleaned, dates follow the temporal options as
# the listed ones do, UIDs are replaced unless kept; other values follow Table E.1-1.
_UNLISTED = {
    "TEXT": {"basic": "C"}, "PNAME": {"basic": "D"}, "UIDREF": {"basic": "U", "rtn_uids": "K"},
    **dict.fromkeys(("DATE", "TIME", "DATETIME"),
                    {"basic": "X", "rtn_long_full_dates": "K", "rtn_long_modif_dates": "C"}),
}


@cache
def concepts() -> dict[tuple[str, str, str], dict[str, str]]:
    """Table E.3.4-1 rows keyed by (coding scheme, code value, value type)."""
    text = resources.files(__package__).joinpath("data", "clean_struct_cont.json").read_text("utf-8")
    data = json.loads(text)
    return {tuple(row[:3]): _row(dict(zip(data["columns"], row, strict=True))) for row in data["rows"]}


def _row(cells: dict[str, str]) -> dict[str, str]:
    """A row with every column `rules.resolve_row` reads."""
    return {"tag": "", **dict.fromkeys(OPTION_COLUMNS.values(), ""), **cells}


@cache
def value_actions(scheme: str, code: str, value_type: str, profile: Profile) -> dict[int, str]:
    """Actions for a content item's value elements, by its concept; {} where Table E.1-1 decides."""
    row = concepts().get((scheme, code, value_type))
    if row is None:
        unlisted = _UNLISTED.get(value_type)
        if unlisted is None:
            return {}
        row = _row(unlisted)
    action = resolve_row(row, profile, "1")  # a content item's value is Type 1: X/D and X give D
    if action in "XD":
        action = "U" if value_type == "UIDREF" else "Z" if value_type == "NUM" else "D"
    actions = dict.fromkeys(VALUE_TAGS.get(value_type, ()), action)
    if value_type == "NUM" and action == "Z":  # no measured value (Type 2); a waveform's number dummied
        actions[NUMERIC_VALUE] = "D"
    return actions
