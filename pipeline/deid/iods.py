"""Attribute types in an object's IOD, which decide PS3.15's compound action codes (X/Z, Z/D, ...).

The package data (`data/iod_types.json`, made by scripts/generate_iod_types.py from PS3.3) holds,
per IOD, the type of each attribute whose Table E.1-1 code is compound (or X), at each sequence
path where the IOD defines it; Type 3 is left out, as it resolves like an attribute the IOD does
not define.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import NamedTuple

REFERENCED_SERIES = 0x00081115  # Common Instance Reference module, top level


class Iod(NamedTuple):
    """What decides one object's compound codes besides the profile."""

    table: int  # its IOD's types in the package data
    references: bool  # it lists the instances it references in a Referenced Series Sequence
    sop_class: str = ""  # which also decides attributes the table does not list (unlisted.py)


@cache
def _data() -> dict:
    return json.loads(resources.files(__package__).joinpath("data", "iod_types.json").read_text("utf-8"))


@cache
def _table(iod: int) -> dict[int, dict[tuple[int, ...], str]]:
    """One IOD's types with tags and paths as ints, for lookups at walking speed."""
    return {int(tag, 16): {tuple(int(t, 16) for t in path.split("/") if t): kind
                           for path, kind in paths.items()}
            for tag, paths in _data()["tables"][iod].items()}


def iod_for(sop_class: str | None, references: bool = False) -> Iod | None:
    """An object's IOD by its SOP Class UID; None for a class the standard's tables do not know."""
    table = _data()["sop_classes"].get(sop_class) if sop_class else None
    return None if table is None else Iod(table, references, sop_class or "")


def typed_tags() -> frozenset[int]:
    """Every tag that has a type in some IOD."""
    return frozenset(tag for table in range(len(_data()["tables"])) for tag in _table(table))


def attribute_type(iod: Iod, tag: int, path: tuple[int, ...]) -> str | None:
    """'1', '1C', '2' or '2C' for an attribute under the sequences `path` (outermost first), else None."""
    paths = _table(iod.table).get(tag)
    return paths.get(path) if paths else None
