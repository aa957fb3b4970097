"""What a run must do: list SOURCE again, compare with the last run, and scan and plan only the difference."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .console import Meter, stage
from .execute import duplicates
from .filters import apply_filters
from .job import source_still_there
from .listing import list_objects
from .patients import shift_identities
from .plan import plan
from .runs import (
    RUN_SCHEMA,
    RunInfo,
    compare,
    every_planned,
    listed,
    planned_rows,
    stored_runs,
    unit_ids,
    write_run,
)
from .scan import scan
from .storage import filesystem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Work:
    """The rows of every run not yet closed (the units left to commit are among them) and the listing's
    comparison with the previous run."""

    pending: pa.Table
    counts: dict
    created: int | None  # the run this listing added, if it found anything new, changed or gone
    runs: tuple[RunInfo, ...]


def shard_of(unit_id: str, shards: int) -> int:
    """The shard that runs a unit: a hash of its id, so every shard agrees without talking to the others."""
    return int.from_bytes(hashlib.blake2b(unit_id.encode(), digest_size=8).digest(), "big") % shards


def _earlier_copies(earlier: pa.Table, planned: pa.Table) -> pa.Array:
    """For each planned row, the url of an object with the same SOP Instance UID that an earlier run
    planned (`earlier`: their url and sop_uid) and that is not processed again now; else null. Outputs of
    gone objects stay in DEST, so they count too: one SOP instance never gets two outputs."""
    # Small hash tables (this run's objects), probed by the earlier rows: the archive is never hashed.
    same_sop = pc.is_in(earlier["sop_uid"], value_set=planned["sop_uid"], skip_nulls=True)
    earlier = earlier.filter(same_sop)
    earlier = earlier.filter(pc.invert(pc.is_in(earlier["url"], value_set=planned["url"])))
    if not earlier.num_rows or not planned.num_rows:
        return pa.nulls(planned.num_rows, pa.string())
    first = earlier.group_by("sop_uid").aggregate([("url", "min")])
    rows = planned.select(["url", "sop_uid"]).append_column("row", pa.array(range(planned.num_rows)))
    found = rows.join(first, keys="sop_uid", join_type="inner").sort_by("row")
    copies = [None] * planned.num_rows
    for row, url in zip(found["row"].to_pylist(), found["url_min"].to_pylist(), strict=True):
        copies[row] = url
    return pa.array(copies, pa.string())


def scan_listing(todo: pa.Table, storage_options: dict | None, client, progress: bool) -> pa.Table:
    """Stage 2 (reading headers), with a meter of headers read when asked."""
    with stage(f"reading the headers of {todo.num_rows} objects"):
        meter = Meter("scan", todo.num_rows) if progress and todo.num_rows else None
        try:
            return scan(todo.select(["url", "size"]), storage_options, client=client,
                        on_batch=meter and meter.update)
        finally:
            if meter:
                meter.close()


def _plan_changes(fs, path: str, runs: list[RunInfo], number: int, changes, storage_options, client, *,
                  unit_objects: int, unit_bytes: int, progress: bool) -> pa.Table:
    """Scan and plan the new and changed objects as run `number`."""
    todo = changes.todo
    inventory = scan_listing(todo, storage_options, client, progress)
    with stage("planning work units by study"):
        planned = plan(inventory, max_objects=unit_objects, max_bytes=unit_bytes)
    column = planned.schema.get_field_index("unit_id")
    planned = planned.set_column(column, "unit_id", unit_ids(planned, number))
    planned = planned.join(todo.select(["url", "version", "change"]), keys="url").sort_by("url")
    earlier = every_planned(fs, path, runs, ["url", "sop_uid", "study_uid", "shift_identity"])
    # A copy planned now points at the first planned copy, which alone is checked against earlier runs.
    copies = pc.coalesce(duplicates(planned), _earlier_copies(earlier, planned))
    planned = planned.append_column("shift_identity", shift_identities(planned, earlier))
    return _beside_kept(planned.append_column("duplicate_of", copies))


def _beside_kept(planned: pa.Table) -> pa.Table:
    """Each duplicate joins its kept copy's unit when that copy is planned too, so one unit decides, in
    order, which copy is written (or takes a quarantined one's place), whatever unit or shard ends first."""
    kept = planned["unit_id"].take(pc.index_in(planned["duplicate_of"], value_set=planned["url"]))
    column = planned.schema.get_field_index("unit_id")
    return planned.set_column(column, "unit_id", pc.coalesce(kept, planned["unit_id"]))


def prepare(source: str, tables: str, client, storage_options: dict | None, *, unit_objects: Callable,
            unit_bytes: Callable, before_write: Callable[[], None] | None, rules: list | None = None,
            progress: bool = False) -> Work:
    """List SOURCE, keeping what the --include/--exclude `rules` select; when anything is new, changed or
    gone, plan it as a new run, stored after calling `before_write` (None: a dry run, nothing stored);
    return the rows of every open run. `unit_objects(n)` and `unit_bytes(b)` size the units."""
    fs, path = filesystem(tables, storage_options)
    runs = stored_runs(fs, path)
    with stage("listing SOURCE"):
        listing = apply_filters(list_objects(source, storage_options, client=client), source, rules,
                                storage_options)
    changes = compare(listing, listed(fs, path, runs[-1]) if runs else None)
    log.info("listed %d objects: %s", listing.num_rows, changes.counts)
    created = None
    fresh: list[pa.Table] = []
    if changes.todo.num_rows or changes.gone.num_rows:
        created = runs[-1].number + 1 if runs else 1
        sizes = pc.sum(changes.todo["size"]).as_py() or 0
        planned = _plan_changes(fs, path, runs, created, changes, storage_options, client,
                                unit_objects=unit_objects(changes.todo.num_rows),
                                unit_bytes=unit_bytes(sizes), progress=progress)
        source_still_there(source, storage_options)
        if before_write is not None:
            before_write()
            write_run(fs, path, created, planned, changes)
            # Read back: when shards race to write one run, the stored one is the plan all follow.
            runs = stored_runs(fs, path)
        else:
            fresh.append(planned.select(RUN_SCHEMA.names))
    pending = [planned_rows(fs, path, run) for run in runs if not run.closed]
    return Work(pa.concat_tables([RUN_SCHEMA.empty_table(), *pending, *fresh]), changes.counts, created,
                tuple(runs))
