"""A job's runs: each run's listing and the plan of only what it found new or changed, so reruns never rescan.

TABLES/runs/<n>/run.parquet is one object, written whole: the planned rows (new and changed objects, with
their inventory columns and unit) first, then the objects gone since run n-1, then the whole listing in
url order (url, size, version; planned objects again). Its schema metadata holds the counts, so a reader
fetches only the row groups it needs.
"""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .plan import PLAN_SCHEMA
from .storage import retry
from .tables import put_bytes

RUNS_FOLDER = "runs"
RUN_FILE = "run.parquet"
CLOSED_FILE = "closed"
SHARDS_FOLDER = "shards"  # TABLES/shards/<i>-of-<n>.json: what each shard of a sharded job did
_META_KEY = b"dicom-deid-run"
_ROW_GROUP = 65_536
_READ_THREADS = 16
_FEW_VALUES = ["modality", "sop_class_uid", "transfer_syntax_uid", "burned_in_annotation", "error", "unit_id",
               "change"]
CHANGES = ("new", "changed", "gone", "unchanged")
# The plan's columns, all nullable (only planned rows have a unit), and what the listing and ingestion add.
# shift_identity: the patient identity that keys the date shift of every object of the row's study.
RUN_SCHEMA = pa.schema([field.with_nullable(True) for field in PLAN_SCHEMA]
                       + [pa.field(name, pa.string()) for name in ("version", "duplicate_of", "change")]
                       + [pa.field("shift_identity", pa.binary())])
_LISTED = ["url", "size", "version"]


@dataclass(frozen=True)
class RunInfo:
    """One stored run: its number, counts of each kind of change, and whether every unit is committed."""

    number: int
    counts: dict
    closed: bool

    @property
    def planned(self) -> int:
        return self.counts["new"] + self.counts["changed"]


def run_folder(tables_path: str, number: int) -> str:
    return f"{tables_path}/{RUNS_FOLDER}/{number:06d}"


def stored_runs(fs, tables_path: str) -> list[RunInfo]:
    """The runs whose run file exists, oldest first (a run killed before writing it never happened)."""
    folder = f"{tables_path}/{RUNS_FOLDER}"
    fs.invalidate_cache(folder)
    if not retry(fs.exists, folder):
        return []
    files = retry(fs.find, folder)
    names = {p.rsplit("/", 2)[-2]: set() for p in files}
    for p in files:
        names[p.rsplit("/", 2)[-2]].add(p.rsplit("/", 1)[-1])
    stored = sorted(n for n, members in names.items() if RUN_FILE in members and n.isdigit())

    def counts(name: str) -> dict:
        with fs.open(f"{folder}/{name}/{RUN_FILE}", "rb") as f:
            return json.loads(pq.read_schema(f).metadata[_META_KEY])

    with ThreadPoolExecutor(_READ_THREADS) as pool:  # one footer each: latency is paid once, not per run
        return [RunInfo(int(name), found, CLOSED_FILE in names[name])
                for name, found in zip(stored, pool.map(counts, stored), strict=True)]


def _read(fs, tables_path: str, run: RunInfo, columns: list[str], rows: slice) -> pa.Table:
    """Only the row groups holding rows[start:stop] of a run file."""
    with fs.open(f"{run_folder(tables_path, run.number)}/{RUN_FILE}", "rb") as f:
        parquet = pq.ParquetFile(f)
        sizes = [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]
        ends = np.cumsum([0, *sizes])
        groups = [i for i in range(len(sizes)) if ends[i] < rows.stop and ends[i + 1] > rows.start]
        stored = [c for c in columns if c in parquet.schema_arrow.names]  # older runs lack newer columns
        table = parquet.read_row_groups(groups, columns=stored) if groups else \
            RUN_SCHEMA.empty_table().select(stored)
    first = int(ends[groups[0]]) if groups else 0
    table = table.slice(rows.start - first, rows.stop - rows.start)
    return pa.table({c: table[c] if c in stored else pa.nulls(table.num_rows, RUN_SCHEMA.field(c).type)
                     for c in columns})


def planned_rows(fs, tables_path: str, run: RunInfo, columns: list[str] | None = None) -> pa.Table:
    """The run's plan: its new and changed objects with their units."""
    return _read(fs, tables_path, run, columns or RUN_SCHEMA.names, slice(0, run.planned))


def every_planned(fs, tables_path: str, runs: list[RunInfo], columns: list[str]) -> pa.Table:
    """The planned rows of every given run, oldest first (an object planned again appears again)."""
    return pa.concat_tables([RUN_SCHEMA.empty_table().select(columns),
                             *(planned_rows(fs, tables_path, run, columns) for run in runs)])


def listed(fs, tables_path: str, run: RunInfo) -> pa.Table:
    """What the run listed in SOURCE (url, size, version), in url order."""
    start = run.planned + run.counts["gone"]
    return _read(fs, tables_path, run, _LISTED, slice(start, start + run.planned + run.counts["unchanged"]))


@dataclass(frozen=True)
class Changes:
    """A new listing against the last run's: the rows to scan and plan, and what each kind counts."""

    listing: pa.Table  # url, size, version of every listed object, in url order
    todo: pa.Table  # the new and changed ones, with their change
    gone: pa.Table  # url, size, version of objects no longer listed
    counts: dict


def _labels(listing: pa.Table, previous: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Per listed object new / changed / unchanged, and per previous object whether it is gone."""
    if previous.num_rows == listing.num_rows and previous["url"].equals(listing["url"]):
        # The usual rerun: the same objects, both in url order; compare in place, nothing to look up.
        before = previous
        known = pa.array(np.ones(listing.num_rows, dtype=bool))
        gone = pa.array(np.zeros(previous.num_rows, dtype=bool))
    else:
        at = pc.index_in(listing["url"], value_set=previous["url"])  # one hash table, of the previous urls
        before = previous.take(at)
        known = pc.is_valid(at)
        hit = np.zeros(previous.num_rows, dtype=bool)
        hit[pc.drop_null(at).to_numpy()] = True
        gone = pa.array(~hit)
    other_size = pc.not_equal(pc.fill_null(listing["size"], -1), pc.fill_null(before["size"], -1))
    other_version = pc.not_equal(pc.fill_null(listing["version"], ""), pc.fill_null(before["version"], ""))
    change = pc.if_else(known, pc.if_else(pc.or_(other_size, other_version), "changed", "unchanged"), "new")
    return change, gone


def compare(listing: pa.Table, previous: pa.Table | None) -> Changes:
    """New, changed (other size or version), unchanged and gone objects of a listing in url order (as
    `list_objects` gives it); no object is read."""
    listing = listing.select(_LISTED).combine_chunks()
    if previous is None or previous.num_rows == 0:
        previous = listing.schema.empty_table()
    change, gone_mask = _labels(listing, previous.select(_LISTED).combine_chunks())
    todo = listing.append_column("change", change).filter(pc.not_equal(change, "unchanged"))
    gone = previous.select(_LISTED).filter(gone_mask)
    new = pc.sum(pc.equal(todo["change"], "new")).as_py() or 0
    counts = {"new": new, "changed": todo.num_rows - new, "gone": gone.num_rows,
              "unchanged": listing.num_rows - todo.num_rows}
    return Changes(listing, todo, gone, counts)


def _padded(table: pa.Table, change: str | None) -> pa.Table:
    """Rows in the run file's schema, columns they lack left null."""
    columns = {}
    for field in RUN_SCHEMA:
        if field.name in table.column_names:
            columns[field.name] = table[field.name].cast(field.type)
        elif field.name == "change" and change is not None:
            columns[field.name] = pa.array([change] * table.num_rows, pa.string())
        else:
            columns[field.name] = pa.nulls(table.num_rows, field.type)
    return pa.table(columns, schema=RUN_SCHEMA)


def write_run(fs, tables_path: str, number: int, planned: pa.Table, changes: Changes) -> None:
    """Store the run as one object: planned rows, then gone, then the listing (so readers skip what they
    need not read)."""
    counts = {**changes.counts, "run": number}
    table = pa.concat_tables([_padded(planned, None), _padded(changes.gone.sort_by("url"), "gone"),
                              _padded(changes.listing, "listed")])
    table = table.replace_schema_metadata({_META_KEY: json.dumps(counts, sort_keys=True).encode()})
    buffer = io.BytesIO()
    # Urls and UIDs are unique: dictionary-encoding them costs time and saves nothing.
    pq.write_table(table, buffer, row_group_size=_ROW_GROUP, use_dictionary=_FEW_VALUES)
    put_bytes(fs, f"{run_folder(tables_path, number)}/{RUN_FILE}", buffer.getvalue())


def close_run(fs, tables_path: str, number: int) -> None:
    """Mark a run whose units are all committed, so later runs never read its plan again."""
    put_bytes(fs, f"{run_folder(tables_path, number)}/{CLOSED_FILE}", b"")


def unit_ids(planned: pa.Table, number: int) -> pa.Array:
    """Run 1 keeps the plan's ids; later runs prefix theirs, so a unit of changed objects never takes the id
    of one already committed with the same members."""
    ids = planned["unit_id"]
    return ids if number == 1 else pc.binary_join_element_wise(f"r{number}-", ids, "")
