"""`--include`/`--exclude` globs on SOURCE as the AWS CLI reads them: later rules win, `*` spans folders."""

from __future__ import annotations

from fnmatch import fnmatchcase

import pyarrow as pa

from .storage import filesystem

Rule = tuple[str, str]  # ("include" or "exclude", glob)


def relative_to(url: str, prefix: str) -> str:
    """A listed URL as the rules see it: relative to SOURCE, or whole when a listing file named it."""
    return url[len(prefix):] if url.startswith(prefix) else url


def selected(name: str, rules: list[Rule]) -> bool:
    """Whether a relative name survives the rules: every object is included until a rule says otherwise."""
    keep = True
    for kind, pattern in rules:
        if fnmatchcase(name, pattern):
            keep = kind == "include"
    return keep


def apply_filters(listing: pa.Table, source: str, rules: list[Rule] | None,
                  storage_options: dict | str | None = None) -> pa.Table:
    """The listing's rows that the rules keep."""
    if not rules:
        return listing
    fs, path = filesystem(source, storage_options)
    prefix = fs.unstrip_protocol(path).rstrip("/") + "/"
    keep = [selected(relative_to(url, prefix), rules) for url in listing["url"].to_pylist()]
    return listing.filter(pa.array(keep, pa.bool_()))
