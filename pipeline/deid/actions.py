"""What happened to each attribute, in words a reviewer reads: the walkers count (tag, action code,
operation) while walking, and these rows name them only when asked, off the engine's hot path."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from functools import lru_cache

from pydicom.datadict import keyword_for_tag

from .operations import (
    BLANK,
    CLEAN,
    DROP,
    DUMMY,
    EMPTY,
    KEEP,
    NEW_UIDS,
    SHIFT,
    UIDS,
    WALK,
    WALK_CLEAN,
    WALK_DUMMY,
    name,
)
from .rules import is_listed

TAKEN = {DROP: "removed", KEEP: "kept", EMPTY: "emptied", DUMMY: "dummy", BLANK: "blanked",
         UIDS: "new-uid", NEW_UIDS: "new-uid", SHIFT: "date-shifted", CLEAN: "text-cleaned",
         WALK: "items-walked", WALK_DUMMY: "items-walked", WALK_CLEAN: "items-walked"}
COLUMNS = ("attribute", "tag", "action", "source", "count")


@lru_cache(maxsize=65536)
def _row(tag: int, action: str, op: str) -> tuple[str, str, str, str]:
    """(attribute, tag as printed, action taken, source) for one counted decision.

    Sources: `table` (Table E.1-1, its repeating groups included), `safety-net` (unlisted.py),
    `strict` (`--unlisted remove`), `private` (private attribute rules), `unlisted` (not listed and
    kept), `sequence` (free text inside a sequence the table dummies), `modified-dates` (an unlisted
    date shifted), `engine` (group lengths, command and directory elements, unknown tags).
    """
    printed = name(tag)
    if tag >> 16 & 1:  # counted by group (element FFFF)
        return f"private ({tag >> 16:04X},xxxx)", printed[:6] + "xxxx)", TAKEN[op], "private"
    if action == "x":
        source = "strict"
    elif action.islower():
        source = "safety-net"
    elif is_listed(tag):
        source = "table"
    elif action == "X":
        source = "engine"
    elif op == SHIFT:
        source = "modified-dates"
    elif op == DUMMY:
        source = "sequence"
    else:
        source = "unlisted"
    return keyword_for_tag(tag) or printed, printed, TAKEN[op], source


def rows(counts: Mapping[tuple[int, str, str], int]) -> list[tuple[str, str, str, str, int]]:
    """(attribute, tag, action taken, source, count) rows from the walkers' counts, summed by row."""
    summed: Counter = Counter()
    for key, count in counts.items():
        summed[_row(*key)] += count
    return [(*row, count) for row, count in sorted(summed.items())]
