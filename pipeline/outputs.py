"""One source object per output key: a claim in TABLES names it, and no write replaces another's bytes."""

from __future__ import annotations

import json
import os
import threading
from enum import Enum

from .storage import retry
from .tables import put_bytes

JOURNAL_LINES = 4096  # claims per journal file, far below any file system's limit on hard links


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
    this object's claim can name, and its unit, never committed, writes it again (see `Outputs.store`)."""
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


def _journal_holder(text: str, key: str) -> str:
    """The URL of the first line for `key` in a claims journal ('' when none: held by nobody known). Lines
    are found by how `json.dumps` starts them and only those are parsed: a rerun looks up every key."""
    start = "\n" + json.dumps([key])[:-1] + ", "
    text = "\n" + text
    at = text.find(start)
    while at >= 0:
        end = text.find("\n", at + 1)
        try:
            claimed, url = json.loads(text[at + 1:end if end >= 0 else len(text)])
        except ValueError:  # a line cut short by a killed writer
            claimed = None
        if claimed == key:
            return url
        at = text.find(start, at + 1)
    return ""


class Outputs:
    """One unit's writes: each output under its claim, then the output itself, by exclusive creates.

    On local disk a claim is a hard link, made in one step, to a journal of this unit's claims whose line
    for the key names the source URL: linking takes no new inode, where a file or symbolic link per object
    costs as much as the output itself on some file systems. One attempt of the unit writes each journal,
    at most one line per key, each line just before its link: the one line for a key in the journal its
    claim links to is the holder's. Elsewhere a claim is a conditional PUT of the URL."""

    def __init__(self, dest_fs, dest_path: str, tables_fs, tables_path: str, unit_id: str) -> None:
        self.dest_fs, self.dest_path = dest_fs, dest_path
        self.tables_fs, self.tables_path = tables_fs, tables_path
        self.unit_id = unit_id
        self.folders: set[str] = set()  # the folders this unit made already
        self._journal: tuple[str, int] | None = None  # (path, descriptor)
        self._keys: set[str] = set()  # the keys of the current journal's lines
        self._journals = 0  # the number in the next journal's name: alike in every run of the unit
        self._lock = threading.Lock()  # stores run in a pool when DEST is remote and TABLES local

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._close_journal()

    def _close_journal(self) -> None:
        """Take no more lines in the current journal (called with the lock held)."""
        if self._journal:
            os.close(self._journal[1])
            self._journal = None

    def _link(self, claim: str, key: str, url: str) -> None:
        """Write this claim's line to the current journal, then link the claim to it; a new journal when
        this one is full or has a line for the key already (a claim that failed, or one given up)."""
        if len(self._keys) >= JOURNAL_LINES or key in self._keys:
            self._close_journal()
        while self._journal is None:  # a name no attempt of this unit has taken: one writer per journal
            path = f"{self.tables_path}/claims/{self.unit_id}.{self._journals}.journal"
            _folder(path, self.folders)
            self._journals += 1
            try:
                self._journal = path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except FileExistsError:
                continue
            self._keys = set()
        os.write(self._journal[1], (json.dumps([key, url]) + "\n").encode())
        self._keys.add(key)
        _folder(claim, self.folders)
        try:
            os.link(self._journal[0], claim)
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: a symbolic link whose target is the URL
            os.symlink(url, claim)

    def _claim(self, claim: str, key: str, url: str) -> Put:
        """Claim an output key for `url`."""
        fs = self.tables_fs
        if not _local(fs):
            return put_new(fs, claim, url.encode(), self.folders)
        try:
            with self._lock:
                self._link(claim, key, url)
            return Put.CREATED
        except FileExistsError:
            return Put.SAME if self._holder(claim, key) == url else Put.OTHER

    def _holder(self, claim: str, key: str) -> str:
        """The source URL that holds a claim (older jobs' claims are symbolic links, or files holding it)."""
        fs = self.tables_fs
        if _local(fs) and os.path.islink(claim):
            return os.readlink(claim)
        text = retry(fs.cat_file, claim).decode()
        return _journal_holder(text, key) if text.startswith("[") else text

    def store(self, key: str, url: str, data: bytes) -> tuple[str, str] | None:
        """Write one object's output under its claim; (reason, detail) when another object holds the key."""
        claim = claim_path(self.tables_path, key)
        held = self._claim(claim, key, url)
        if held is Put.OTHER:
            return "duplicate-sop-instance", f"same output key as {self._holder(claim, key)}, which is kept"
        output = f"{self.dest_path}/{key}"
        if put_new(self.dest_fs, output, data, self.folders) is not Put.OTHER:
            return None
        if held is Put.SAME:  # this object's own earlier output (or part of it); its source changed since
            put_bytes(self.dest_fs, output, data)
            return None
        retry(self.tables_fs.rm_file, claim)  # DEST holds something this job never wrote: claim nothing
        return "output-exists", "DEST already holds other bytes at this object's output key"
