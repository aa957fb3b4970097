"""The run's Parquet tables: explicit schemas, per-unit parts, whole-or-nothing writes and compaction."""

from __future__ import annotations

import io
import os
import re
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import retry

UID_MAP_SCHEMA = pa.schema([
    ("original_uid", pa.string()),
    ("new_uid", pa.string()),
    ("attribute", pa.string()),
    ("original_study_uid", pa.string()),
    ("new_study_uid", pa.string()),
    ("unit_id", pa.string()),
])
MANIFEST_SCHEMA = pa.schema([
    ("source_url", pa.string()),
    ("status", pa.string()),
    ("output_key", pa.string()),
    ("reason", pa.string()),
    ("source_size", pa.int64()),
    ("output_size", pa.int64()),
    ("unit_id", pa.string()),
])
QUARANTINE_SCHEMA = pa.schema([
    ("source_url", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("unit_id", pa.string()),
])
# The only table that goes to DEST: new UIDs and cleaned values, nothing that leads back to the source.
INDEX_SCHEMA = pa.schema([
    ("study_uid", pa.string()),
    ("series_uid", pa.string()),
    ("sop_uid", pa.string()),
    ("modality", pa.string()),
    ("sop_class_uid", pa.string()),
    ("series_description", pa.string()),
    ("rows", pa.int64()),
    ("columns", pa.int64()),
    ("number_of_frames", pa.int64()),
    ("burned_in_annotation", pa.string()),
    ("size", pa.int64()),
    ("key", pa.string()),
])
# What happened to each attribute in a unit's written objects (pipeline/actions.py sums them per run).
ACTIONS_PART_SCHEMA = pa.schema([
    ("attribute", pa.string()),
    ("tag", pa.string()),
    ("action", pa.string()),
    ("source", pa.string()),
    ("count", pa.int64()),
    ("unit_id", pa.string()),
])
# Original patient (as decided for a study) -> the research ID and name its objects got; source says
# whether a crosswalk row or the keyed pseudonym gave them.
PATIENT_MAP_SCHEMA = pa.schema([
    ("original_patient_id", pa.string()),
    ("original_issuer", pa.string()),
    ("new_patient_id", pa.string()),
    ("new_patient_name", pa.string()),
    ("source", pa.string()),
    ("unit_id", pa.string()),
])
PART_SCHEMAS = {"uid_map": UID_MAP_SCHEMA, "manifest": MANIFEST_SCHEMA,
                "quarantine": QUARANTINE_SCHEMA, "index": INDEX_SCHEMA, "actions": ACTIONS_PART_SCHEMA,
                "patient_map": PATIENT_MAP_SCHEMA}
ROW_GROUP_ROWS = 100_000
_READ_BATCH = 256
_TEMPORARY = re.compile(r"\.[0-9a-f]{32}\.tmp$")
_READ_THREADS = 16


@contextmanager
def atomic_open(fs, path: str) -> Iterator:
    """A writable file that appears at `path` only once complete, so a killed writer leaves no half file."""
    if "file" not in fs.protocol:
        with fs.open(path, "wb") as f:  # object stores publish an object only when its upload completes
            yield f
        return
    fs.makedirs(fs._parent(path), exist_ok=True)
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(fs, path: str) -> int:
    """Delete what writers killed mid-write left on local disk (object stores never show half objects)."""
    if "file" not in fs.protocol or not os.path.isdir(path):
        return 0
    removed = 0
    for folder, _, names in os.walk(path):
        for name in names:
            if _TEMPORARY.search(name):
                os.remove(os.path.join(folder, name))
                removed += 1
    return removed


def put_bytes(fs, path: str, data: bytes) -> None:
    """Write one whole object, retrying transient storage errors."""
    def put() -> None:
        with atomic_open(fs, path) as f:
            f.write(data)
    retry(put)


def table_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_table(fs, path: str, table: pa.Table) -> None:
    """Store a table as one Parquet object."""
    put_bytes(fs, path, table_bytes(table))


def from_parquet(content: bytes) -> pa.Table:
    """One whole Parquet object's table: as `pq.read_table` gives it, at half its cost on the small parts
    of units (it builds a dataset first)."""
    return pq.ParquetFile(io.BytesIO(content)).read()


def read_table(fs, path: str, schema: pa.Schema | None = None) -> pa.Table:
    """Load one Parquet object, cast to `schema` when given."""
    table = from_parquet(retry(fs.cat_file, path))
    return table.cast(schema) if schema is not None else table


def part_path(tables_path: str, name: str, unit_id: str) -> str:
    return f"{tables_path}/{name}/parts/{unit_id}.parquet"


def write_part(fs, tables_path: str, name: str, unit_id: str, rows: list[dict]) -> None:
    """One unit's rows of table `name`; rewriting it after a restart gives the same object."""
    table = pa.Table.from_pylist(rows, schema=PART_SCHEMAS[name])
    write_table(fs, part_path(tables_path, name, unit_id), table)


def _parts(fs, tables_path: str, name: str) -> list[str]:
    folder = f"{tables_path}/{name}/parts"
    fs.invalidate_cache(folder)  # workers wrote the parts: a listing cached here would be stale
    if not retry(fs.exists, folder):
        return []
    return sorted(p for p in retry(fs.find, folder) if p.endswith(".parquet"))


def _read_parts(fs, paths: list[str]) -> Iterator[pa.Table]:
    """Parts in order, fetched many at a time so that storage latency is not paid part after part."""
    with ThreadPoolExecutor(_READ_THREADS) as pool:
        for start in range(0, len(paths), _READ_BATCH):
            batch = paths[start:start + _READ_BATCH]
            for content in pool.map(lambda path: retry(fs.cat_file, path), batch):
                yield from_parquet(content)


def read_parts(fs, tables_path: str, name: str, units: set[str]) -> pa.Table:
    """The parts of table `name` written by `units`, as one table."""
    paths = [p for p in _parts(fs, tables_path, name) if p.rsplit("/", 1)[-1][:-len(".parquet")] in units]
    schema = PART_SCHEMAS[name]
    return pa.concat_tables([schema.empty_table(), *(part.cast(schema) for part in _read_parts(fs, paths))])


def compact(fs, tables_path: str, name: str, out_fs, out_path: str, units: set[str] | None = None,
            transform: Callable[[pa.Table, str], pa.Table] | None = None) -> int:
    """Stream every part of table `name` (of `units` only, when given) into one Parquet file, unit by unit,
    each part passed through `transform(part, unit_id)` when given; return its row count."""
    schema = PART_SCHEMAS[name]
    rows = written = 0
    pending: list[pa.Table] = []
    paths = _parts(fs, tables_path, name)
    if units is not None:
        paths = [p for p in paths if p.rsplit("/", 1)[-1][:-len(".parquet")] in units]
    with atomic_open(out_fs, out_path) as f, pq.ParquetWriter(f, schema) as writer:
        for path, part in zip(paths, _read_parts(fs, paths), strict=True):
            part = part.cast(schema)
            pending.append(transform(part, path.rsplit("/", 1)[-1][:-len(".parquet")]) if transform else part)
            rows += part.num_rows
            if rows - written >= ROW_GROUP_ROWS:
                writer.write_table(pa.concat_tables(pending))
                pending, written = [], rows
        writer.write_table(pa.concat_tables(pending) if pending else schema.empty_table())
    return rows
