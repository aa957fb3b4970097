"""Stage 5: compact the units' table parts and write the run summary a person reads first."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .actions import write_run_actions
from .console import Meter, stage
from .runs import CHANGES, RUN_SCHEMA, SHARDS_FOLDER, RunInfo, close_run, planned_rows, stored_runs
from .storage import filesystem, retry
from .tables import MANIFEST_SCHEMA, compact, put_bytes, remove_stale_temporaries

PRIVATE_TABLES = ("manifest", "uid_map", "quarantine", "patient_map")
SUPERSEDED = "superseded"  # manifest status of an object's row once a later run processed it again
INDEX_FOLDER = "_index"
SUMMARY_NAME = "summary.json"
FINALIZING = "writing the manifest, quarantine and index tables"


def _manifest_counts(fs, path: str) -> dict:
    """Totals over every committed unit, read from the compacted manifest."""
    with fs.open(path, "rb") as f:
        manifest = pq.read_table(f, columns=["status", "reason", "source_size", "output_size"],
                                 schema=MANIFEST_SCHEMA)
    superseded = pc.equal(manifest["status"], SUPERSEDED)
    manifest = manifest.filter(pc.invert(superseded))
    quarantined = pc.equal(manifest["status"], "quarantined")
    reasons = manifest.filter(quarantined)["reason"].value_counts().to_pylist()
    count = pc.sum(quarantined).as_py() or 0
    return {
        "objects": manifest.num_rows,
        "written": manifest.num_rows - count,
        "quarantined": count,
        "source_bytes": pc.sum(manifest["source_size"]).as_py() or 0,
        "output_bytes": pc.sum(manifest["output_size"]).as_py() or 0,
        "quarantine_reasons": dict(sorted((r["values"], r["counts"]) for r in reasons)),
        "superseded": pc.sum(superseded).as_py() or 0,
    }


@dataclass
class History:
    """Every run's units, and the objects a later run processed again (their earlier rows are superseded)."""

    runs: list[RunInfo]
    unit_run: dict[str, int]
    latest: dict[str, int]  # url planned by several runs -> the last of them
    superseded_keys: dict[str, set[str]] = field(default_factory=dict)  # unit -> output keys superseded

    def _run_of(self, part: pa.Table) -> int:
        return self.unit_run[part["unit_id"][0].as_py()] if part.num_rows else 0

    def _superseded(self, part: pa.Table) -> pa.Array:
        run = self._run_of(part)
        urls = part["source_url"].to_pylist()
        return pa.array([self.latest.get(url, 0) > run for url in urls], pa.bool_())

    def manifest(self, part: pa.Table, unit_id: str) -> pa.Table:
        """Rows of objects a later run processed again keep their place, as status `superseded`."""
        if not self.latest or not part.num_rows:
            return part
        old = self._superseded(part)
        keys = part.filter(old)["output_key"].drop_null().to_pylist()
        if keys:
            self.superseded_keys[unit_id] = set(keys)
        status = pc.if_else(old, SUPERSEDED, part["status"])
        return part.set_column(part.schema.get_field_index("status"), "status", status)

    def quarantine(self, part: pa.Table, unit_id: str) -> pa.Table:
        return part.filter(pc.invert(self._superseded(part))) if self.latest and part.num_rows else part

    def index(self, part: pa.Table, unit_id: str) -> pa.Table:
        keys = self.superseded_keys.get(unit_id)
        if not keys:
            return part
        return part.filter(pc.invert(pc.is_in(part["key"], value_set=pa.array(sorted(keys)))))


def history(fs, path: str) -> History:
    """Read the plans of every run (url, unit and run only)."""
    runs = stored_runs(fs, path)
    parts = []
    for run in runs:
        rows = planned_rows(fs, path, run, ["url", "unit_id"])
        parts.append(rows.append_column("run", pa.array([run.number] * rows.num_rows, pa.int64())))
    table = pa.concat_tables([RUN_SCHEMA.empty_table().select(["url", "unit_id"]).append_column(
        "run", pa.array([], pa.int64())), *parts])
    units = table.group_by("unit_id").aggregate([("run", "max")])
    again = table.group_by("url").aggregate([("run", "max"), ("run", "count")])
    again = again.filter(pc.greater(again["run_count"], 1))
    return History(runs, dict(zip(units["unit_id"].to_pylist(), units["run_max"].to_pylist(), strict=True)),
                   dict(zip(again["url"].to_pylist(), again["run_max"].to_pylist(), strict=True)))


class Unfinished(Exception):
    """Units planned but not committed yet: finalizing now would leave objects out."""


def _missing(fs, path: str, uncommitted: list[str]) -> str:
    """Which shards (by the shard counts they recorded) own the uncommitted units."""
    from .ingest import shard_of

    folder = f"{path}/{SHARDS_FOLDER}"
    fs.invalidate_cache(folder)
    counts = sorted({int(p.rsplit("-of-", 1)[1][:-len(".json")]) for p in retry(fs.find, folder)
                     if p.endswith(".json")}) if retry(fs.exists, folder) else []
    if not counts:
        return f"{len(uncommitted)} units not committed: run the job again"
    lines = []
    for count in counts:
        owners = sorted({shard_of(unit, count) for unit in uncommitted})
        lines.append(f"{len(uncommitted)} units not committed; run shard(s) {', '.join(map(str, owners))} "
                     f"of {count} again (--shard I/{count})")
    return "\n".join(lines)


def _counting(meter: Meter | None, transform: Callable | None) -> Callable[[pa.Table, str], pa.Table]:
    """A table's per-part step that also moves the meter on by one part."""
    def step(part: pa.Table, unit_id: str) -> pa.Table:
        if meter:
            meter.update(1)
        return transform(part, unit_id) if transform else part
    return step


def finalize(tables: str, dest: str, storage_options: dict | None, *, run: dict,
             require_all: bool = False, progress: bool = False) -> dict:
    """Compact parts of every run's units into TABLES/<table>.parquet and DEST/_index/ (rows of objects
    processed again by a later run marked superseded); close finished runs; write and return the summary.

    `run` holds what only the driver knows: units run and failed, objects and bytes this run, and elapsed
    seconds. With `require_all`, raise `Unfinished` (naming the missing shards) unless every unit is
    committed. `progress` shows a meter of the units' table parts compacted.
    """
    from .execute import committed_units

    tables_fs, tables_path = filesystem(tables, storage_options)
    dest_fs, dest_path = filesystem(dest, storage_options)
    past = history(tables_fs, tables_path)
    done = committed_units(tables, storage_options) & past.unit_run.keys()
    uncommitted = sorted(past.unit_run.keys() - done)
    if require_all and uncommitted:
        raise Unfinished(_missing(tables_fs, tables_path, uncommitted))
    for fs, path in ((tables_fs, tables_path), (dest_fs, dest_path)):
        remove_stale_temporaries(fs, path)
    # Only units of stored plans: a shard that lost a race to write a run's plan leaves nothing counted.
    tables_rows = {"manifest": past.manifest, "quarantine": past.quarantine, "uid_map": None}
    meter = Meter("finalize", len(done) * (len(tables_rows) + 1), unit="parts") if progress and done else None
    try:
        for name, transform in tables_rows.items():
            compact(tables_fs, tables_path, name, tables_fs, f"{tables_path}/{name}.parquet", done,
                    _counting(meter, transform))
        compact(tables_fs, tables_path, "index", dest_fs, index_path(dest_path, tables), done,
                _counting(meter, past.index))
        # Parts only where patients get research IDs: not metered, so the bar reaches its end.
        compact(tables_fs, tables_path, "patient_map", tables_fs, f"{tables_path}/patient_map.parquet", done)
    finally:
        if meter:
            meter.close()
    open_runs = {number for unit, number in past.unit_run.items() if unit not in done}
    for info in past.runs:
        if not info.closed:  # closed runs summed their actions when they closed
            units = {unit for unit, number in past.unit_run.items() if number == info.number}
            write_run_actions(tables_fs, tables_path, info.number, units & done)
        if not info.closed and info.number not in open_runs:
            close_run(tables_fs, tables_path, info.number)
    elapsed = max(run["elapsed"], 1e-9)
    summary = {
        "source": run["source"], "dest": dest, "tables": tables,
        **_manifest_counts(tables_fs, f"{tables_path}/manifest.parquet"),
        "units_total": len(past.unit_run), "units_done": len(done),
        "units_run": run["units_run"], "units_skipped": len(done) - run["units_run"],
        "failed_units": run["failed_units"], "runs": len(past.runs),
        "last_listing": {k: past.runs[-1].counts[k] for k in CHANGES} if past.runs else {},
        "this_run": {"objects": run["objects"], "source_bytes": run["source_bytes"],
                     "elapsed_seconds": round(elapsed, 3),
                     "objects_per_second": round(run["objects"] / elapsed, 2),
                     "megabytes_per_second": round(run["source_bytes"] / elapsed / 1e6, 2)},
    }
    put_bytes(tables_fs, f"{tables_path}/{SUMMARY_NAME}", json.dumps(summary, indent=2).encode())
    return summary


def index_path(dest_path: str, tables: str) -> str:
    """This job's file of the DEST index: jobs writing into one DEST each add a file, none replaces one."""
    job = hashlib.sha256(tables.encode()).hexdigest()[:16]
    return f"{dest_path}/{INDEX_FOLDER}/{job}.parquet"


def read_summary(tables: str, storage_options: dict | None = None) -> dict | None:
    """The summary a finished run left in TABLES, or None."""
    fs, path = filesystem(tables, storage_options)
    summary = f"{path}/{SUMMARY_NAME}"
    fs.invalidate_cache(path)
    return json.loads(retry(fs.cat_file, summary)) if retry(fs.exists, summary) else None


def describe(summary: dict, this_run: bool = True) -> str:
    """A few lines for a person: what happened and where it went; `this_run=False` leaves out the line
    about the run that wrote the summary, for a later run that did nothing."""
    lines = [
        f"objects: {summary['objects']}  written: {summary['written']}  "
        f"quarantined: {summary['quarantined']}",
        f"units: {summary['units_done']}/{summary['units_total']} done",
    ]
    if this_run:
        lines[-1] += f" ({summary['units_run']} this run, {summary['units_skipped']} already committed)"
    if summary.get("superseded") or summary.get("last_listing", {}).get("gone"):
        lines.append(f"superseded (processed again after a change): {summary['superseded']}; gone from "
                     f"SOURCE at the last listing: {summary['last_listing']['gone']} "
                     "(their outputs stay in DEST)")
    if summary["failed_units"]:
        lines.append(f"FAILED units (re-run to retry): {len(summary['failed_units'])}")
    latest = summary["this_run"]
    if this_run:
        lines.append(f"this run: {latest['objects']} objects in {latest['elapsed_seconds']:.1f} s "
                     f"({latest['objects_per_second']:.1f} objects/s, "
                     f"{latest['megabytes_per_second']:.1f} MB/s)")
    if summary["quarantine_reasons"]:
        reasons = ", ".join(f"{r}: {n}" for r, n in summary["quarantine_reasons"].items())
        lines.append(f"quarantine reasons: {reasons}")
    lines.append(f"de-identified output: {summary['dest']}  (Parquet index: {INDEX_FOLDER}/)")
    lines.append(f"private tables: {summary['tables']}  (keep these safe: they link back to the source)")
    return "\n".join(lines)


def finalize_job(tables: str, storage_options: dict | None = None, progress: bool = False) -> dict:
    """Finalize a sharded job once every shard is done (`Unfinished` names those still missing)."""
    fs, path = filesystem(tables, storage_options)
    fs.invalidate_cache(path)
    if not retry(fs.exists, f"{path}/job.json"):
        raise FileNotFoundError(f"no dicom-deid job in {tables}")
    job = json.loads(retry(fs.cat_file, f"{path}/job.json"))
    folder = f"{path}/{SHARDS_FOLDER}"
    markers = [json.loads(retry(fs.cat_file, p)) for p in retry(fs.find, folder) if p.endswith(".json")] \
        if retry(fs.exists, folder) else []
    facts = {"source": job["source"], "elapsed": max((m["elapsed"] for m in markers), default=0.0),
             "units_run": sum(m["units_run"] for m in markers), "failed_units": [],
             **{k: sum(m[k] for m in markers) for k in ("objects", "source_bytes")}}
    with stage(FINALIZING):
        return finalize(tables, job["dest"], storage_options, run=facts, require_all=True, progress=progress)
