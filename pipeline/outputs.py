"""One source object per output key: a claim in TABLES names it, and no write replaces another's bytes."""

from __future__ import annotations

import os
from enum import Enum

from .storage import retry
from .tables import put_bytes


class Put(Enum):
    """What an exclusive write found at its key."""

    CREATED = "created"
    SAME = "same"  # the very bytes were there already: an earlier attempt of this write
    OTHER = "other"  # different bytes were there, and are still there


def _local(fs) -> bool:
    return "file" in fs.protocol


def _folder(path: str, folders: set[str]) -> None:
    """Make the folder of `path` once per unit, not once per object."""
    parent = os.path.dirname(path)
    if parent not in folders:
        os.makedirs(parent, exist_ok=True)
        folders.add(parent)


def put_new(fs, path: str, data: bytes, folders: set[str]) -> Put:
    """Write `data` at `path` only if nothing is there (local: exclusive create; S3: If-None-Match).

    On local disk the bytes go straight into place: a write killed halfway leaves a partial file that only
    this object's claim can name, and its unit, never committed, writes it again (see `store`)."""
    if _local(fs):
        _folder(path, folders)
        try:
            with open(path, "xb") as f:
                f.write(data)
            return Put.CREATED
        except FileExistsError:
            pass
    else:
        try:
            retry(fs.pipe_file, path, data, mode="create")  # a conditional PUT on S3
            return Put.CREATED
        except FileExistsError:
            pass
    return Put.SAME if retry(fs.cat_file, path) == data else Put.OTHER


def claim_path(tables_path: str, key: str) -> str:
    return f"{tables_path}/claims/{key}.url"


def _claim(fs, path: str, url: str, folders: set[str]) -> Put:
    """Claim an output key for `url`: on local disk a symbolic link whose target is the URL, which appears
    whole in one step (older jobs' claims are files holding it); elsewhere a conditional PUT."""
    if not _local(fs):
        return put_new(fs, path, url.encode(), folders)
    _folder(path, folders)
    try:
        os.symlink(url, path)
        return Put.CREATED
    except FileExistsError:
        return Put.SAME if _holder(fs, path) == url else Put.OTHER


def _holder(fs, path: str) -> str:
    """The source URL that holds a claim."""
    if _local(fs) and os.path.islink(path):
        return os.readlink(path)
    return retry(fs.cat_file, path).decode()


def store(dest_fs, dest_path: str, tables_fs, tables_path: str, key: str, url: str,
          data: bytes, folders: set[str]) -> tuple[str, str] | None:
    """Write one object's output under its claim; (reason, detail) when another object holds the key.
    `folders` are those this unit made already."""
    claim = claim_path(tables_path, key)
    held = _claim(tables_fs, claim, url, folders)
    if held is Put.OTHER:
        return "duplicate-sop-instance", f"same output key as {_holder(tables_fs, claim)}, which is kept"
    output = f"{dest_path}/{key}"
    if put_new(dest_fs, output, data, folders) is not Put.OTHER:
        return None
    if held is Put.SAME:  # this object's own earlier output (or part of it); its source changed since
        put_bytes(dest_fs, output, data)
        return None
    retry(tables_fs.rm_file, claim)  # DEST holds something this job never wrote: leave it, claim nothing
    return "output-exists", "DEST already holds other bytes at this object's output key"
