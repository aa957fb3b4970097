"""Stage 1: every object under a source, as one sorted table, listed in parallel where the store allows."""

from __future__ import annotations

import json
import logging
import os
import stat
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote_plus

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from fsspec import AbstractFileSystem

from .console import counted, gathered
from .storage import filesystem, is_local, retry

log = logging.getLogger(__name__)

LISTING_SCHEMA = pa.schema([
    pa.field("url", pa.string(), nullable=False),
    pa.field("size", pa.int64()),  # null only when a listing file gives no sizes
    pa.field("version", pa.string()),  # ETag or modification time: tells a changed object from the same one
])
# Where fsspec detail entries, listing files and S3 Inventory reports keep an object's version, best first.
VERSION_KEYS = ("ETag", "etag", "e_tag", "version", "mtime", "LastModified", "last_modified",
                "last_modified_date", "updated")

LISTING_FILE_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
# Split a prefix until it has this many sub-prefixes (or MAX_SPLIT_DEPTH levels) before listing them.
SPLIT_TARGET = 64
MAX_SPLIT_DEPTH = 3
LIST_THREADS = 16


class ListingError(ValueError):
    """A listing file or inventory manifest that cannot be read as one: a user's mistake, one line."""


def _table(urls: list[str], sizes: list[int | None], versions: list[str | None] | None = None) -> pa.Table:
    return pa.table({"url": pa.array(urls, pa.string()), "size": pa.array(sizes, pa.int64()),
                     "version": pa.array(versions or [None] * len(urls), pa.string())}, schema=LISTING_SCHEMA)


def _version(entry: dict) -> str | None:
    for key in VERSION_KEYS:
        value = entry.get(key)
        if value is not None:
            return str(value)
    return None


def _files(fs: AbstractFileSystem, entries: list[dict]) -> pa.Table:
    """Keep the objects (not directories or S3 "folder/" markers) of fsspec detail entries."""
    keep = [e for e in entries if e.get("type") == "file" and not e["name"].endswith("/")]
    return _table([fs.unstrip_protocol(e["name"]) for e in keep], [e.get("size") for e in keep],
                  [_version(e) for e in keep])


def _ls(fs: AbstractFileSystem, path: str) -> list[dict]:
    return retry(fs.ls, path, detail=True, refresh=True)


def _find(fs: AbstractFileSystem, path: str) -> list[dict]:
    return list(retry(fs.find, path, detail=True, withdirs=False).values())


def split_prefixes(fs: AbstractFileSystem, path: str, target: int = SPLIT_TARGET,
                   max_depth: int = MAX_SPLIT_DEPTH) -> tuple[pa.Table, list[str]]:
    """Objects found while descending, and the disjoint sub-prefixes left to list, so they can be listed
    in parallel instead of as one long sequential listing."""
    found: list[pa.Table] = []
    frontier = [path]
    with ThreadPoolExecutor(LIST_THREADS) as pool:
        for _ in range(max_depth):
            if len(frontier) >= target:
                break
            below: list[str] = []
            for entries in pool.map(lambda p: _ls(fs, p), frontier):
                found.append(_files(fs, entries))
                counted(found[-1].num_rows)
                below += [e["name"] for e in entries if e.get("type") == "directory"]
            frontier = below
            if not frontier:
                break
    return pa.concat_tables([_table([], []), *found]), frontier


def list_prefixes(prefixes: list[str], storage_options: dict | str | None = None) -> pa.Table:
    """Every object under each of the given URLs (one task's share of a split listing)."""
    if not prefixes:
        return _table([], [])
    fs, _ = filesystem(prefixes[0], storage_options)
    fs.invalidate_cache()
    with ThreadPoolExecutor(min(LIST_THREADS, len(prefixes))) as pool:
        parts = pool.map(lambda url: _files(fs, _find(fs, filesystem(url, storage_options)[1])), prefixes)
        return pa.concat_tables(list(parts))


def _walk_local(fs: AbstractFileSystem, path: str) -> pa.Table:
    """Every file under a local folder, through symbolic links too, each folder entered once (no loops).
    A link that leads nowhere is listed, so its read fails and it gets a quarantine row, not silence."""
    urls: list[str] = []
    sizes: list[int | None] = []
    versions: list[str | None] = []  # modification time, as fsspec's local "mtime" gives it
    entered: set[tuple[int, int]] = set()
    skipped = 0
    for folder, folders, names in os.walk(path, followlinks=True):
        here, before = os.stat(folder), len(urls)
        entered.add((here.st_dev, here.st_ino))
        keep = []
        for name in folders:
            try:
                info = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            if (info.st_dev, info.st_ino) in entered:
                skipped += 1
            else:
                entered.add((info.st_dev, info.st_ino))
                keep.append(name)
        folders[:] = keep  # os.walk enters only these; each marked entered before any is walked
        for name in names:
            full = os.path.join(folder, name)
            try:
                info = os.stat(full)
            except OSError:  # a dangling link
                urls.append(fs.unstrip_protocol(full))
                sizes.append(None)
                versions.append(None)
                continue
            if stat.S_ISREG(info.st_mode):  # not sockets, pipes or devices, which are no objects
                urls.append(fs.unstrip_protocol(full))
                sizes.append(info.st_size)
                versions.append(str(info.st_mtime))
        counted(len(urls) - before)
    if skipped:
        log.warning("%d linked folders were listed already (a link loop or a second path)", skipped)
    return _table(urls, sizes, versions)


def _list_tree(source: str, storage_options: dict | str | None, client) -> pa.Table:
    fs, path = filesystem(source, storage_options)
    fs.invalidate_cache()
    if is_local(source):
        # os.walk is fast and a remote worker may not see this disk: list here.
        return _walk_local(fs, path)
    found, frontier = split_prefixes(fs, path)
    urls = [fs.unstrip_protocol(p) for p in frontier]
    n_tasks = min(len(urls), SPLIT_TARGET)
    groups = [urls[i::n_tasks] for i in range(n_tasks)]
    log.info("listing %d sub-prefixes in %d tasks", len(urls), n_tasks)
    if client is None:
        parts = [list_prefixes(group, storage_options) for group in groups]
    else:
        # pure=False: a listing is of the store as it is now, never an earlier result.
        futures = client.map(list_prefixes, groups, storage_options=storage_options, pure=False)
        parts = gathered(client, futures)
    return pa.concat_tables([found, *parts])


def _read_listing_file(source: str, storage_options: dict | str | None) -> pa.Table:
    """A CSV/Parquet of `url[,size]`, or S3 Inventory style `bucket,key[,size]`."""
    fs, path = filesystem(source, storage_options)
    try:
        with fs.open(path, "rb", compression="infer") as f:
            table = pq.read_table(f) if path.endswith((".parquet", ".pq")) else pacsv.read_csv(f)
    except pa.ArrowInvalid as exc:
        raise ListingError(f"cannot read the listing file {source}: {str(exc).splitlines()[0]}") from exc
    return _urls_and_sizes(table, source)


def _urls_and_sizes(table: pa.Table, source: str) -> pa.Table:
    """Listing rows from a table with `url` or `bucket` and `key` columns, and perhaps `size`."""
    names = set(table.column_names)
    if "url" in names:
        urls = table["url"].cast(pa.string())
    elif {"bucket", "key"} <= names:
        urls = pc.binary_join_element_wise("s3://", table["bucket"].cast(pa.string()), "/",
                                           table["key"].cast(pa.string()), "")
    else:
        raise ListingError(f"the listing file {source} needs a 'url' column or 'bucket' and 'key' columns, "
                           f"not {', '.join(sorted(names)) or 'none'}")
    try:
        sizes = table["size"].cast(pa.int64()) if "size" in names else pa.nulls(len(table), pa.int64())
    except pa.ArrowInvalid as exc:
        raise ListingError(f"the listing file {source}'s 'size' column is not whole numbers") from exc
    version = next((table[k].cast(pa.string()) for k in VERSION_KEYS if k in names), None)
    listed = pa.table({"url": urls, "size": sizes,
                       "version": version if version is not None else pa.nulls(len(table), pa.string())})
    listed = listed.filter(pc.and_(pc.is_valid(listed["url"]), pc.invert(pc.ends_with(listed["url"], "/"))))
    return listed.cast(LISTING_SCHEMA)


def _read_inventory_data(url: str, file_format: str, csv_columns: list[str],
                         storage_options: dict | str | None) -> pa.Table:
    """One data file of an S3 Inventory report, with lower-case column names and plain keys."""
    fs, path = filesystem(url, storage_options)
    with fs.open(path, "rb", compression="infer") as f:
        if file_format == "PARQUET":
            table = pq.read_table(f)
            return table.rename_columns([name.lower() for name in table.column_names])
        types = {"bucket": pa.string(), "key": pa.string(), "size": pa.int64()}
        table = pacsv.read_csv(f, read_options=pacsv.ReadOptions(column_names=csv_columns),
                               convert_options=pacsv.ConvertOptions(column_types=types))
    # CSV inventories URL-encode keys, with "+" for a space.
    keys = pa.array([unquote_plus(key) for key in table["key"].to_pylist()], pa.string())
    return table.set_column(table.column_names.index("key"), "key", keys)


def _read_inventory_manifest(source: str, storage_options: dict | str | None) -> pa.Table:
    """The objects of an S3 Inventory report, from its manifest.json and its CSV or Parquet data files."""
    fs, path = filesystem(source, storage_options)
    manifest = json.loads(retry(fs.cat_file, path))
    file_format = manifest["fileFormat"].upper()
    if file_format not in ("CSV", "PARQUET"):
        raise ListingError(f"S3 Inventory format {manifest['fileFormat']} is not supported: use CSV or "
                           "Parquet")
    bucket = manifest["destinationBucket"].rsplit(":", 1)[-1]  # arn:aws:s3:::name
    columns = [name.strip().lower() for name in manifest.get("fileSchema", "").split(",")]
    urls = [f"s3://{bucket}/{entry['key']}" for entry in manifest["files"]]
    with ThreadPoolExecutor(LIST_THREADS) as pool:
        parts = pool.map(lambda url: _read_inventory_data(url, file_format, columns, storage_options), urls)
        table = pa.concat_tables(list(parts), promote_options="default")
    for flag, keep in (("isdeletemarker", False), ("is_delete_marker", False), ("islatest", True),
                       ("is_latest", True)):
        if flag in table.column_names:  # versioned inventories: current versions only
            table = table.filter(pc.equal(table[flag].cast(pa.bool_()), keep))
    return table


def _is_listing_file(source: str, storage_options: dict | str | None) -> bool:
    if not source.lower().endswith(LISTING_FILE_SUFFIXES):
        return False
    fs, path = filesystem(source, storage_options)
    return retry(fs.isfile, path)


def list_objects(source: str, storage_options: dict | str | None = None, client=None) -> pa.Table:
    """Every object under SOURCE (fsspec URL, local path, CSV/Parquet listing file, or an S3 Inventory
    manifest.json), sorted by url, each url once."""
    if source.endswith("manifest.json"):
        table = _urls_and_sizes(_read_inventory_manifest(source, storage_options), source)
    elif _is_listing_file(source, storage_options):
        table = _read_listing_file(source, storage_options)
    else:
        fs, path = filesystem(source, storage_options)
        if retry(fs.isfile, path):
            table = _files(fs, [retry(fs.info, path)])
        elif not retry(fs.isdir, path):
            raise FileNotFoundError(f"no objects at {source}")
        else:
            table = _list_tree(source, storage_options, client)
    # One row per url: a listing file may repeat itself.
    unique = table.group_by("url").aggregate([("size", "max"), ("version", "max")])
    return pa.table({"url": unique["url"], "size": unique["size_max"], "version": unique["version_max"]},
                    schema=LISTING_SCHEMA).sort_by("url")
