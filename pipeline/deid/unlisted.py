"""The safety net for attributes Table E.1-1 does not list (PS3.15 E.1.1: "It is the responsibility
of the de-identifier to ensure that all identifying information is removed").

`action` is the one place that decides them. Its letters are lower case, so that the walkers and the
actions report tell them from the table's: `z` empty, `d` dummy, `u` new UIDs except well-known
ones, `c` text cleaned (clean.py), `x` removed (`--unlisted remove`). `operations.operation` reads
them like the table's.
"""

from __future__ import annotations

import json
import re
from functools import cache, lru_cache
from importlib import resources

from pydicom.datadict import DicomDictionary

from .profile import Profile

NET_EMPTY, NET_DUMMY, NET_UIDS, NET_CLEAN, NET_REMOVE = "z", "d", "u", "c", "x"
# Free text the table does not list may still name someone, so it is cleaned as Clean Descriptors
# cleans: long text (LT, ST, UT, UC) and coded entries' meanings.
NET_CLEANED_VRS = frozenset({"LT", "ST", "UT", "UC"})
CODE_MEANING = 0x00080104
# PS3.5 9.1: UIDs under this root are defined by the standard (the PS3.6 Annex A registry: SOP
# classes, transfer syntaxes, well-known instances and frames of reference, coding schemes; PS3.16
# context groups and templates), never issued for a patient's objects.
DICOM_ROOT = "1.2.840.10008."
# UI attributes whose value names a class, a transfer syntax or a coding resource, not an instance:
# kept, also when the class is a vendor's private one (it says which device, never which patient).
_CLASS_KEYWORD = re.compile(r"SOPClass|TransferSyntax|ImplementationClass|CodingScheme|^ContextUID$"
                            r"|^MappingResourceUID$")


def well_known(uid: str) -> bool:
    """Whether a UID is one the standard defines, which identifies nobody."""
    return uid.startswith(DICOM_ROOT)


@cache
def class_tags() -> frozenset[int]:
    """UI attributes of the data dictionary that hold class, syntax or coding resource UIDs."""
    return frozenset(tag for tag, entry in DicomDictionary.items()
                     if entry[0] == "UI" and _CLASS_KEYWORD.search(entry[4]))


@cache
def _data() -> dict:
    path = resources.files(__package__).joinpath("data", "unlisted_types.json")
    return json.loads(path.read_text("utf-8"))


@lru_cache(maxsize=512)
def _types(sop_class: str | None, nested: bool) -> dict[int, str]:
    """Tag -> strictest required type in the IOD of a SOP class, at the top level or in any sequence
    (data/unlisted_types.json keeps no paths); an unknown class (None) gets what any IOD requires
    anywhere, so that no object loses an attribute its class may need."""
    data = _data()
    iod = data["sop_classes"].get(sop_class) if sop_class else None
    modules = range(len(data["modules"])) if iod is None else data["iods"][iod]
    places = (0, 1) if iod is None else (int(nested),)
    order = ("1", "1C", "2", "2C")
    found: dict[int, str] = {}
    for module in modules:
        for place in places:
            for tag, kind in data["modules"][module][place].items():
                known = found.get(int(tag, 16))
                if known is None or order.index(kind) < order.index(known):
                    found[int(tag, 16)] = kind
    return found


@cache
def typed_tags() -> frozenset[int]:
    """Unlisted attributes that some IOD requires: their action can depend on the object's class."""
    return frozenset(int(tag, 16) for module in _data()["modules"] for place in module for tag in place)


@cache
def placed(mode: str) -> frozenset[int]:
    """Unlisted tags whose action depends on the object's IOD under a profile's `unlisted` mode."""
    if mode == "remove":
        return typed_tags()
    if mode == "keep":
        return frozenset()
    return frozenset(tag for tag in typed_tags() if _vr(tag) == "PN")


def type_in(sop_class: str | None, tag: int, nested: bool = True) -> str | None:
    """An unlisted attribute's type ('1', '1C', '2', '2C') in a SOP class's IOD, at the top level or in
    a sequence (`nested`); None when optional."""
    return _types(sop_class, nested).get(tag)


def free_text(tag: int) -> bool:
    """Whether an attribute is free text that the safety net cleans, should the table not list it."""
    return tag == CODE_MEANING or _vr(tag) in NET_CLEANED_VRS


def _vr(tag: int) -> str:
    entry = DicomDictionary.get(tag)
    return entry[0] if entry else ""


def action(tag: int, profile: Profile, kind: str | None) -> str:
    """What happens to a known public attribute E.1-1 does not list, of type `kind` in the object's IOD.

    The decision point of the safety net: a person name is dummied where its IOD requires a value
    (Type 1), else emptied; a UID is replaced through the UID map unless well known; free text is
    cleaned. Other attributes stay (K), or, under `--unlisted remove`, go unless the IOD requires them.
    """
    return _action(tag, profile.unlisted, kind)


@lru_cache(maxsize=16384)
def _action(tag: int, mode: str, kind: str | None) -> str:
    if mode == "keep":
        return "K"
    if mode == "remove" and kind is None:
        return NET_REMOVE
    vr = _vr(tag)
    if vr == "PN":
        return NET_DUMMY if kind in ("1", "1C") else NET_EMPTY
    if vr == "UI" and tag not in class_tags():
        return NET_UIDS
    if free_text(tag):
        return NET_CLEAN
    return "K"
