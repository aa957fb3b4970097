"""One source object per output key: a claim in TABLES names it, and no write replaces another's bytes."""

from __future__ import annotations

import os
import uuid
from enum import Enum

from .storage import retry
from .tables import put_bytes


class Put(Enum):
    """What an exclusive write found at its key."""

    CREATED = "created"
    SAME = "same"  # the very bytes were there already: an earlier attempt of this write
    OTHER = "other"  # different bytes were there, and are still there


def put_new(fs, path: str, data: bytes) -> Put:
    """Write `data` at `path` only if nothing is there (local: link of a complete file; S3: If-None-Match)."""
    if "file" in fs.protocol:
        fs.makedirs(fs._parent(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"  # the name remove_stale_temporaries clears after a kill
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.link(tmp, path)  # atomic, and refuses an existing path: never a half or replaced file
            return Put.CREATED
        except FileExistsError:
            pass
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    else:
        try:
            retry(fs.pipe_file, path, data, mode="create")  # a conditional PUT on S3
            return Put.CREATED
        except FileExistsError:
            pass
    return Put.SAME if retry(fs.cat_file, path) == data else Put.OTHER


def claim_path(tables_path: str, key: str) -> str:
    return f"{tables_path}/claims/{key}.url"


def store(dest_fs, dest_path: str, tables_fs, tables_path: str, key: str, url: str,
          data: bytes) -> tuple[str, str] | None:
    """Write one object's output under its claim; (reason, detail) when another object holds the key."""
    claim = claim_path(tables_path, key)
    held = put_new(tables_fs, claim, url.encode())
    if held is Put.OTHER:
        other = retry(tables_fs.cat_file, claim).decode()
        return "duplicate-sop-instance", f"same output key as {other}, which is kept"
    output = f"{dest_path}/{key}"
    if put_new(dest_fs, output, data) is not Put.OTHER:
        return None
    if held is Put.SAME:  # this object's own earlier output; its source changed since, so it is replaced
        put_bytes(dest_fs, output, data)
        return None
    retry(tables_fs.rm_file, claim)  # DEST holds something this job never wrote: leave it, claim nothing
    return "output-exists", "DEST already holds other bytes at this object's output key"
