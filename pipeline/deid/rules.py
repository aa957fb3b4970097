"""Resolve PS3.15 Table E.1-1 into one action per attribute for a given profile."""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache
from importlib import resources

from pydicom.datadict import dictionary_has_tag, get_entry, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from . import iods, unlisted
from .profile import Profile

# The option column each profile flag switches on (retain_private_tags has none: it is ours).
OPTION_COLUMNS = {
    "retain_safe_private": "rtn_safe_priv",
    "retain_uids": "rtn_uids",
    "retain_device_identity": "rtn_dev_id",
    "retain_institution_identity": "rtn_inst_id",
    "retain_patient_characteristics": "rtn_pat_chars",
    "retain_long_full_dates": "rtn_long_full_dates",
    "retain_long_modified_dates": "rtn_long_modif_dates",
    "clean_descriptions": "clean_desc",
    "clean_structured_content": "clean_struct_cont",
    "clean_graphics": "clean_graph",
}
# Most conservative first: when several options override one attribute, the earliest wins.
PRECEDENCE = "XZDCMUK"
# A compound code's choice by the attribute's type in the IOD (PS3.15 E.1-1: "X unless Z, D or U is
# required to maintain IOD conformance"): the first of these letters the code offers. Type 1 and
# 1C (when present) need a value, Type 2 and 2C presence; a required reference sequence (X/Z/U*)
# is kept with its UIDs replaced, and so is any reference sequence of an object whose Referenced
# Series Sequence lists what it references ("R"). Type 3, or an attribute where its IOD does not
# define it, takes the code's first letter, as does an object whose SOP class the tables do not
# know. X alone on an attribute the IOD requires reads as X/Z/D (sequences excepted, see
# scripts/generate_iod_types.py), so that outputs stay valid; an empty or dummy value says nothing.
BY_TYPE = {"1": "DUZ", "1C": "DUZ", "2": "UZD", "2C": "UZD", "R": "U"}

CURVE, OVERLAY_DATA, OVERLAY_COMMENTS, PRIVATE = (
    "(50xx,xxxx)", "(60xx,3000)", "(60xx,4000)", "(gggg,eeee) where gggg is odd")
_SINGLE = re.compile(r"^\(([0-9A-F]{4}),([0-9A-F]{4})\)$")


def _load(name: str) -> dict:
    return json.loads(resources.files(__package__).joinpath("data", name).read_text("utf-8"))


@cache
def _e1_1() -> dict:
    return _load("table_e1_1.json")


def edition() -> str:
    """The edition of PS3.15 the rule tables were generated from."""
    return _e1_1()["edition"]


@cache
def table() -> dict[str, dict[str, str]]:
    """Table E.1-1 rows keyed by the tag as printed, e.g. '(0010,0010)' or '(50xx,xxxx)'."""
    data = _e1_1()
    return {row[0]: dict(zip(data["columns"], row, strict=True)) for row in data["rows"]}


@cache
def _tag_rows() -> dict[int, dict[str, str]]:
    return {int(m[1] + m[2], 16): row for key, row in table().items() if (m := _SINGLE.match(key))}


def listed_tags() -> tuple[int, ...]:
    """The single attributes Table E.1-1 lists (not the repeating or private groups)."""
    return tuple(_tag_rows())


@cache
def _keywords() -> dict[str, int]:
    return {row["keyword"]: tag for tag, row in _tag_rows().items()}


@cache
def safe_private() -> frozenset[tuple[str, int, int]]:
    """Table E.3.10-1 as (private creator, group, element byte within the block)."""
    rows = _load("safe_private.json")["rows"]
    return frozenset((creator, int(tag[1:5], 16), int(tag[8:10], 16)) for creator, tag, *_ in rows)


def to_tag(tag: int | tuple[int, int] | str | BaseTag) -> BaseTag:
    """Accept the ways people name an attribute: int, Tag, (group, element) or keyword."""
    if isinstance(tag, str):
        found = _keywords().get(tag) or tag_for_keyword(tag)
        if found is None:
            raise ValueError(f"unknown DICOM keyword {tag!r}")
        return Tag(found)
    return Tag(tag)


def _row_for(tag: int) -> dict[str, str] | None:
    group, element = tag >> 16, tag & 0xFFFF
    if group % 2:
        return table()[PRIVATE]
    if group & 0xFF00 == 0x5000:
        return table()[CURVE]
    if group & 0xFF00 == 0x6000 and element in (0x3000, 0x4000):
        return table()[OVERLAY_DATA if element == 0x3000 else OVERLAY_COMMENTS]
    return _tag_rows().get(tag)


def is_listed(tag: int) -> bool:
    """Whether Table E.1-1 has a row for the tag (its repeating and private groups included)."""
    return _row_for(tag) is not None


@cache
def description_tags() -> frozenset[int]:
    """Attributes the Clean Descriptors option cleans: descriptions, whose text is no identity."""
    return frozenset(tag for tag, row in _tag_rows().items() if row["clean_desc"] == "C")


@cache
def typed_tags() -> frozenset[int]:
    """Tags whose action can depend on where they occur: typed in some IOD, or reference sequences."""
    return iods.typed_tags() | reference_tags()


@cache
def reference_tags() -> frozenset[int]:
    """Reference sequences, whose basic code is X/Z/U*."""
    return frozenset(tag for tag, row in _tag_rows().items() if row["basic"].endswith("U*"))


def choose(code: str, kind: str | None) -> str:
    """One action from a table code: a compound code by the attribute's type, see BY_TYPE."""
    offered = ("X/Z/D" if code == "X" else code).replace("*", "").split("/")
    return next((c for c in BY_TYPE.get(kind, "") if c in offered), offered[0])


def resolve_row(row: dict[str, str], profile: Profile, kind: str | None = None) -> str:
    """Apply the profile's option columns to one table row, for an attribute of type `kind`."""
    columns = [col for flag, col in OPTION_COLUMNS.items() if getattr(profile, flag)]
    if profile.retain_long_full_dates and "rtn_long_modif_dates" in columns:
        columns.remove("rtn_long_modif_dates")
    overrides = [
        "M" if col == "rtn_long_modif_dates" and row[col] == "C" else choose(row[col], kind)
        for col in columns if row[col]
    ]
    if row["tag"] == PRIVATE and profile.retain_private_tags:
        overrides.append("K")
    if overrides:
        return min(overrides, key=PRECEDENCE.index)
    return choose(row["basic"], kind)


def is_known_public(tag: int) -> bool:
    """Whether the data dictionary (or Table E.1-1, which is newer) knows this public tag."""
    if tag in _tag_rows() or dictionary_has_tag(tag):
        return True
    try:
        get_entry(tag)  # repeating groups such as (60xx,0010)
    except KeyError:
        return False
    return True


@lru_cache(maxsize=65536)
def resolved_action(tag: int, profile: Profile) -> str:
    """The action for a tag, beyond the table too: command, group-length, 0004 and unknown tags go,
    and the safety net decides the known attributes the table does not list (as optional ones)."""
    group, element = tag >> 16, tag & 0xFFFF
    row = _row_for(tag)
    if row is not None:
        return resolve_row(row, profile)
    if group in (0x0000, 0x0004, 0xFFFE) or element == 0x0000 or not is_known_public(tag):
        return "X"
    placed = _unlisted_placed(profile.unlisted)
    return unlisted.action(tag, profile, unlisted.type_in(None, tag) if tag in placed else None)


@lru_cache(maxsize=64)
def placed_tags(profile: Profile) -> frozenset[int]:
    """Tags whose action under this profile depends on the object's IOD, so it is never cached by tag."""
    return typed_tags() | _unlisted_placed(profile.unlisted)


@cache
def _unlisted_placed(mode: str) -> frozenset[int]:
    return unlisted.placed(mode) - frozenset(_tag_rows())


def needs_value(iod: iods.Iod | None, tag: int, path: tuple[int, ...]) -> bool:
    """Whether cleaned text left empty must become the dummy: Type 1 where it occurs, or of unknown
    type (the safety net's attributes: a Code Meaning is Type 1 in every code sequence)."""
    return unlisted_free_text(tag) or (iod is not None and iods.attribute_type(iod, tag, path) in ("1", "1C"))


def unlisted_free_text(tag: int) -> bool:
    """Whether an attribute Table E.1-1 does not list is free text that the safety net cleans."""
    return tag not in _tag_rows() and unlisted.free_text(tag)


@lru_cache(maxsize=4096)
def _typed_action(tag: int, profile: Profile, kind: str | None) -> str:
    return resolve_row(_tag_rows()[tag], profile, kind)


def action_at(tag: int, profile: Profile, iod: iods.Iod | None, path: tuple[int, ...]) -> str:
    """The action for a tag where it occurs: a compound code follows its type in the object's IOD."""
    if iod is None or tag not in typed_tags():
        if tag in _unlisted_placed(profile.unlisted):
            return unlisted.action(tag, profile, unlisted.type_in(iod and iod.sop_class, tag, bool(path)))
        return resolved_action(tag, profile)
    if iod.references and tag in reference_tags():
        return _typed_action(tag, profile, "R")
    return _typed_action(tag, profile, iods.attribute_type(iod, tag, path))


Name = int | tuple[int, int] | str | BaseTag


def action_for(tag: Name, profile: Profile | None = None, sop_class: str | None = None,
               path: tuple[Name, ...] = ()) -> str:
    """The resolved action code (one of D Z X K C U M) for an attribute under a profile.

    With the object's SOP Class UID, and the sequences above the attribute (outermost first),
    compound codes resolve by the attribute's type there; without them, to their first code. An
    attribute the table does not list gets the safety net's code (see unlisted.py), upper-cased.
    """
    return action_at(int(to_tag(tag)), profile or Profile(), iods.iod_for(sop_class),
                     tuple(int(to_tag(t)) for t in path)).upper()
