"""Stage 4: de-identify planned units in workers, and feed units to the cluster a window at a time."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from fsspec.implementations.local import LocalFileSystem
from pydicom.datadict import keyword_for_tag

from . import burned_in
from .actions import unit_rows
from .deid import DeidError, Profile
from .deid.stream import deidentify_bytes
from .outputs import Outputs
from .patients import patient_row, pseudonym_for
from .secret import SecretError, worker_key
from .storage import filesystem, is_local, retry
from .tables import put_bytes, write_part

log = logging.getLogger(__name__)

IO_THREADS = 32  # reads and writes in flight per worker: 20 ms requests still keep up with the engine
IN_FLIGHT_BYTES = 256 * 2**20  # objects read ahead or waiting to be written, so big objects stay bounded
UNIT_ATTEMPTS = 3
# Plan columns a unit's rows carry when the plan has them: what decides the patient of each object and
# whether its pixels may show text.
UNIT_EXTRAS = ("shift_identity", "research_id", "research_name", "burned_in_annotation")
# A UID that is safe as a path segment: what the standard allows (new UIDs always are).
_SAFE_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_LOCAL_PREFIX = "file:///"


@dataclass(frozen=True)
class Settings:
    """What every unit needs: the secret's keyed fingerprint, never the secret; storage options never
    show in a repr or a log."""

    dest: str
    tables: str
    profile: Profile
    fingerprint: str
    storage_options: dict | None = field(default=None, repr=False)
    io_threads: int = IO_THREADS
    progress_seconds: float = 1.0  # how often a running unit reports how far it got
    pseudonymize_patients: bool = False  # Patient ID and Name become research IDs (patients.py)
    allow_burned_in: bool = False  # write objects marked Burned In Annotation YES (burned_in.py)
    burned_in_unknown: str = "quarantine"  # objects of burned-in classes without the attribute


@dataclass(frozen=True)
class Unit:
    """One planned unit's objects (url, size, duplicate_of); its repr names no object."""

    unit_id: str
    rows: list[dict] = field(repr=False)
    progress_topic: str | None = None  # where to report progress while running, if anywhere


class _Outcome(NamedTuple):
    manifest: dict
    quarantine: dict | None
    uids: list[dict]
    index: dict | None
    actions: Counter | None = None  # (tag, action code, operation) -> count, for written objects
    patient: dict | None = None  # the patient map's row, when patients get research IDs


def marker_path(tables_path: str, unit_id: str) -> str:
    return f"{tables_path}/units/{unit_id}.done"


def committed_units(tables: str, storage_options: dict | None = None) -> set[str]:
    """Units whose commit marker exists: their outputs and table parts are complete."""
    fs, path = filesystem(tables, storage_options)
    folder = f"{path}/units"
    fs.invalidate_cache(folder)  # workers wrote the markers: a listing cached here would be stale
    if not retry(fs.exists, folder):
        return set()
    return {p.rsplit("/", 1)[-1][:-len(".done")] for p in retry(fs.find, folder) if p.endswith(".done")}


def _text(ds, keyword: str) -> str | None:
    value = ds.get(keyword)
    return None if value is None or value == "" else str(value)


def _number(ds, keyword: str) -> int | None:
    try:
        return int(ds.get(keyword))
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=4096)
def _attribute(tag: int) -> str:
    """The keyword a uid_map row names its attribute by (hex for tags no dictionary knows)."""
    return keyword_for_tag(tag) or f"{tag:08X}"


def _quarantine(row: dict, unit_id: str, reason: str, detail: str) -> _Outcome:
    manifest = {"source_url": row["url"], "status": "quarantined", "output_key": None, "reason": reason,
                "source_size": row["size"], "output_size": None, "unit_id": unit_id}
    return _Outcome(manifest, {"source_url": row["url"], "reason": reason, "detail": detail,
                               "unit_id": unit_id}, [], None)


def _read(row: dict, storage_options: dict | None) -> bytes:
    """The object's bytes, retrying transient errors; a local file directly, without fsspec."""
    url = row["url"]
    if url.startswith(_LOCAL_PREFIX):
        with open(LocalFileSystem._strip_protocol(url), "rb") as f:  # as fsspec names it, without its cost
            return f.read()
    fs, path = filesystem(url, storage_options)
    return retry(fs.cat_file, path)


class _Settled:
    """A call made already, read as a Future is read: a Future's lock costs more than a local read."""

    __slots__ = ("_value", "_error")

    def __init__(self, fn: Callable, args: tuple) -> None:
        self._value = self._error = None
        try:
            self._value = fn(*args)
        except Exception as exc:
            self._error = exc

    def done(self) -> bool:
        return True

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


Pending = Future | _Settled  # a read or write: in the pool, or made already


class _Inline:
    """Runs each call at once in this thread, as a pool would later: local reads and writes take microseconds,
    and handing them to threads costs the de-identifying thread more (GIL hand-offs) than it saves."""

    @staticmethod
    def submit(fn: Callable, /, *args) -> _Settled:
        return _Settled(fn, args)

    @staticmethod
    def map(fn: Callable, items) -> Iterator:
        return map(fn, items)


def _start_read(pool: ThreadPoolExecutor, row: dict, storage_options: dict | None) -> Pending:
    """The object's read: in this thread for a local file, else in the pool, where latency overlaps."""
    runner = _Inline if row["url"].startswith(_LOCAL_PREFIX) else pool
    return runner.submit(_read, row, storage_options)


def _prefetched(pool: ThreadPoolExecutor, rows: list[dict], storage_options: dict | None,
                ahead: int) -> Iterator[tuple[dict, Pending | None]]:
    """Rows in order with their reads, up to `ahead` reads (and IN_FLIGHT_BYTES) in flight so that storage
    latency overlaps the work; duplicates are not read ahead, since most are never read."""
    window: deque[tuple[dict, Pending | None]] = deque()
    held = 0
    for row in rows:
        duplicate = bool(row.get("duplicate_of"))
        window.append((row, None if duplicate else _start_read(pool, row, storage_options)))
        held += row["size"] or 0
        local = row["url"].startswith(_LOCAL_PREFIX)  # read already: nothing to overlap, yield it now
        while len(window) > (0 if local else ahead) or (len(window) > 1 and held > IN_FLIGHT_BYTES):
            oldest = window.popleft()
            held -= oldest[0]["size"] or 0
            yield oldest
    yield from window


def _deidentify(row: dict, read: Pending, unit_id: str, settings: Settings,
                key: bytes) -> tuple[_Outcome, bytes | None]:
    """The object's table rows and output bytes; anything wrong with the object becomes a quarantine row."""
    try:
        data = read.result()
    except Exception as exc:  # gone, forbidden, or still failing after retries
        return _quarantine(row, unit_id, "read-error", f"{type(exc).__name__}: {exc}"), None
    pseudonym = pseudonym_for(row, key) if settings.pseudonymize_patients else None
    try:
        result = deidentify_bytes(data, settings.profile, secret=key, pseudonym=pseudonym,
                                  shift_identity=row.get("shift_identity"))
        out, ds = result.data, result.header  # the output's own values name it and fill the index
    except DeidError as exc:
        return _quarantine(row, unit_id, exc.reason, exc.detail), None
    except Exception as exc:  # the engine wraps its own failures; this is a last line of defence
        return _quarantine(row, unit_id, "internal-error", type(exc).__name__), None
    # The output's value, else the input's as the header scan read it (should a profile remove it).
    marked = ds["BurnedInAnnotation"] or row.get("burned_in_annotation")
    refused = burned_in.refusal(ds["SOPClassUID"], marked, allow=settings.allow_burned_in,
                                unknown=settings.burned_in_unknown)
    if refused:
        return _quarantine(row, unit_id, burned_in.REASON, refused), None
    parts = [_text(ds, k) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
    if not all(p and _SAFE_UID.match(p) for p in parts):
        return _quarantine(row, unit_id, "missing-uid",
                           "no valid Study, Series and SOP Instance UID to name the output by"), None
    key = "/".join(parts[:2]) + f"/{parts[2]}.dcm"
    original_study = next((old for old, new in result.uid_map.items() if new == parts[0]), parts[0])
    attributes = result.uid_attributes
    uids = [{"original_uid": original, "new_uid": new, "attribute": _attribute(attributes[original]),
             "original_study_uid": original_study, "new_study_uid": parts[0], "unit_id": unit_id}
            for original, new in result.uid_map.items()]
    index = {"study_uid": parts[0], "series_uid": parts[1], "sop_uid": parts[2],
             "modality": _text(ds, "Modality"), "sop_class_uid": _text(ds, "SOPClassUID"),
             "series_description": _text(ds, "SeriesDescription"), "rows": _number(ds, "Rows"),
             "columns": _number(ds, "Columns"), "number_of_frames": _number(ds, "NumberOfFrames"),
             "burned_in_annotation": _text(ds, "BurnedInAnnotation"), "size": len(out), "key": key}
    manifest = {"source_url": row["url"], "status": "written", "output_key": key, "reason": None,
                "source_size": row["size"], "output_size": len(out), "unit_id": unit_id}
    return _Outcome(manifest, None, uids, index, result.actions,
                    pseudonym and patient_row(row, pseudonym, unit_id)), out


def _duplicate_of_written(row: dict, outcomes: list[_Outcome], unit_id: str) -> _Outcome | None:
    """A duplicate's quarantine row when its kept copy was written in this unit, else None."""
    kept = row["duplicate_of"]
    if any(o.manifest["source_url"] == kept and o.manifest["status"] == "written" for o in outcomes):
        return _quarantine(row, unit_id, "duplicate-sop-instance",
                           f"same SOP Instance UID as {kept}, which is kept")
    return None


def _reporter(unit: Unit, every: float) -> Callable[[int, int], None]:
    """Tells the driver, every `every` seconds, how far a running unit got (nothing outside a worker)."""
    if unit.progress_topic is None:  # asked for by no one: Dask is not even loaded in a small job
        return lambda objects, nbytes: None
    from distributed import get_worker

    try:
        worker = get_worker()
    except ValueError:
        return lambda objects, nbytes: None
    last = time.monotonic()

    def report(objects: int, nbytes: int) -> None:
        nonlocal last
        if time.monotonic() - last >= every:
            last = time.monotonic()
            worker.log_event(unit.progress_topic, {"unit_id": unit.unit_id, "objects": objects,
                                                   "source_bytes": nbytes})
    return report


def _unit_tables(outcomes: list[_Outcome], unit_id: str) -> dict[str, list[dict]]:
    """The unit's rows of each table; a UID seen by several objects is mapped once."""
    uids: dict[str, dict] = {}
    for outcome in outcomes:
        for uid_row in outcome.uids:
            uids.setdefault(uid_row["original_uid"], uid_row)
    tables = {"manifest": [o.manifest for o in outcomes],
              "quarantine": [o.quarantine for o in outcomes if o.quarantine],
              "index": [o.index for o in outcomes if o.index],
              "uid_map": list(uids.values()),
              "actions": unit_rows((o.actions for o in outcomes if o.actions and o.index), unit_id)}
    patients = {tuple(o.patient.values()): o.patient for o in outcomes if o.patient and o.index}
    return {**tables, "patient_map": list(patients.values())} if patients else tables


def run_unit(unit: Unit, settings: Settings) -> dict:
    """De-identify one unit: outputs, then its table parts, then LAST its commit marker; return counts."""
    key = worker_key(settings.fingerprint)  # this process's own secret, checked against the job's
    dest_fs, dest_path = filesystem(settings.dest, settings.storage_options)
    tables_fs, tables_path = filesystem(settings.tables, settings.storage_options)
    rows = sorted(unit.rows, key=lambda r: (bool(r.get("duplicate_of")), r["url"]))  # kept copies first
    # pydicom's warnings quote element values, which may be patient data: keep them out of worker logs.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    outcomes = []
    source_bytes = 0
    report = _reporter(unit, settings.progress_seconds)
    writes: deque[tuple[Pending, int, int]] = deque()  # (write, bytes, outcome number)
    pending = 0  # bytes waiting to be written

    def settle() -> None:
        nonlocal pending
        write, size, number = writes.popleft()
        refused = write.result()  # a failing destination fails the unit, not the object
        if refused:  # another object holds the output key: this one is quarantined, nothing overwritten
            outcomes[number] = _quarantine(rows[number], unit.unit_id, *refused)
        pending -= size

    # Remote reads and writes wait on storage in the pool; the CPU-bound de-identification stays in this
    # thread, and so does local I/O, which has no latency to hide.
    with (warnings.catch_warnings(), ThreadPoolExecutor(settings.io_threads) as pool,
          Outputs(dest_fs, dest_path, tables_fs, tables_path, unit.unit_id) as outputs):
        warnings.simplefilter("ignore")
        writer = _Inline if is_local(settings.dest) and is_local(settings.tables) else pool
        for row, read in _prefetched(pool, rows, settings.storage_options, settings.io_threads):
            out = None
            if read is None:  # a duplicate by the header scan: its kept copy (sorted first) has settled
                while writes:
                    settle()
                outcome = _duplicate_of_written(row, outcomes, unit.unit_id)
                if outcome is None:  # its kept copy failed or is in another unit: it may take the place
                    read = _start_read(pool, row, settings.storage_options)
            if read is not None:
                outcome, out = _deidentify(row, read, unit.unit_id, settings, key)
            outcomes.append(outcome)
            source_bytes += row["size"] or 0
            report(len(outcomes), source_bytes)
            if out is not None:
                write = writer.submit(outputs.store, outcome.index["key"], row["url"], out)
                writes.append((write, len(out), len(outcomes) - 1))
                pending += len(out)
            while writes and (writes[0][0].done() or len(writes) > settings.io_threads
                              or pending > IN_FLIGHT_BYTES):
                settle()
        while writes:
            settle()
        tables = _unit_tables(outcomes, unit.unit_id)
        list(writer.map(lambda name: write_part(tables_fs, tables_path, name, unit.unit_id, tables[name]),
                      tables))
    stats = {"unit_id": unit.unit_id, "objects": len(outcomes),
             "written": len(tables["index"]), "quarantined": len(tables["quarantine"]),
             "source_bytes": sum(r["size"] or 0 for r in rows),
             "output_bytes": sum(i["size"] for i in tables["index"]),
             "reasons": dict(Counter(q["reason"] for q in tables["quarantine"]))}
    put_bytes(tables_fs, marker_path(tables_path, unit.unit_id), json.dumps(stats, sort_keys=True).encode())
    return stats


def duplicates(plan: pa.Table) -> pa.Array:
    """For each row, the url of an earlier object (by url) with the same SOP Instance UID, else null."""
    n = plan.num_rows
    order = pc.sort_indices(plan.select(["sop_uid", "url"]),
                            sort_keys=[("sop_uid", "ascending"), ("url", "ascending")]).to_numpy()
    sop = plan["sop_uid"].cast(pa.string()).take(order)
    urls = plan["url"].take(order).to_numpy(zero_copy_only=False)
    valid = pc.is_valid(sop).to_numpy(zero_copy_only=False)
    same = np.zeros(n, dtype=bool)
    if n > 1:
        same[1:] = pc.equal(sop[1:], sop[:-1]).fill_null(False).to_numpy(zero_copy_only=False)
    first = np.maximum.accumulate(np.where(same, 0, np.arange(n)))  # start of each run of equal UIDs
    kept = np.where(same & valid, urls[first], None)
    result = np.empty(n, dtype=object)
    result[order] = kept
    return pa.array(result, type=pa.string())


def _units(plan: pa.Table) -> dict[str, pa.Table]:
    """The plan's rows split by unit, each unit's rows contiguous."""
    # A job's plans carry their own (they also know the objects earlier runs processed).
    found = plan["duplicate_of"] if "duplicate_of" in plan.column_names else duplicates(plan)
    extra = [column for column in UNIT_EXTRAS if column in plan.column_names]
    table = plan.select(["unit_id", "url", "size", *extra]).append_column("duplicate_of", found)
    table = table.take(pc.sort_indices(table, sort_keys=[("unit_id", "ascending"), ("url", "ascending")]))
    ids = table["unit_id"].to_numpy(zero_copy_only=False)
    if not len(ids):
        return {}
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    ends = np.r_[starts[1:], len(ids)]
    rows = table.drop_columns(["unit_id"])
    return {ids[s]: rows.slice(s, e - s) for s, e in zip(starts, ends, strict=True)}


def _largest_first(units: dict[str, pa.Table]) -> list[str]:
    """Unit ids by bytes, largest first: the last to finish are small, so no worker idles long at the end."""
    nbytes = {unit_id: pc.sum(rows["size"]).as_py() or 0 for unit_id, rows in units.items()}
    return sorted(nbytes, key=lambda unit_id: (-nbytes[unit_id], unit_id))


@dataclass
class Progress:
    """What the driver saw: units and object counts of this run."""

    units_total: int = 0
    units_skipped: int = 0
    units_run: int = 0
    failed_units: list[str] = field(default_factory=list)
    objects: int = 0
    written: int = 0
    quarantined: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    reasons: Counter = field(default_factory=Counter)

    def add(self, stats: dict) -> None:
        self.units_run += 1
        for name in ("objects", "written", "quarantined", "source_bytes", "output_bytes"):
            setattr(self, name, getattr(self, name) + stats[name])
        self.reasons.update(stats["reasons"])


def run_units(client, plan: pa.Table, settings: Settings, *, done: set[str] | None = None,
              window: int | None = None, on_unit: Callable[[dict], None] | None = None,
              on_partial: Callable[[dict], None] | None = None, attempts: int = UNIT_ATTEMPTS) -> Progress:
    """Run every uncommitted unit of `plan`, at most `window` at a time; resubmit failed units.

    `on_unit` gets each finished unit's counts; `on_partial` gets running units' progress reports
    ({unit_id, objects, source_bytes} so far, zero when a unit starts over).
    """
    units = _units(plan)
    if done is None:
        done = committed_units(settings.tables, settings.storage_options)
    queue = _largest_first({u: rows for u, rows in units.items() if u not in done})
    progress = Progress(units_total=len(units), units_skipped=len(units) - len(queue))
    if not queue:  # nothing to run: no client needed (a small job starts none)
        return progress
    from distributed import as_completed  # only now: loading Dask would cost a no-op rerun ~0.5 s

    window = window or max(2, 2 * sum(client.nthreads().values()))
    run_token = uuid.uuid4().hex[:8]
    topic = f"dicom-deid-progress-{run_token}" if on_partial else None
    tries: Counter = Counter()
    running: dict = {}
    pending = as_completed(loop=client.loop)  # this client's, never the process's default

    def submit(unit_id: str) -> None:
        unit = Unit(unit_id, units[unit_id].to_pylist(), topic)
        key = f"deid-unit-{unit_id}-{run_token}-{tries[unit_id]}"
        future = client.submit(run_unit, unit, settings, key=key, pure=False)
        tries[unit_id] += 1
        running[future] = unit_id
        pending.add(future)

    queue.reverse()
    if topic:
        client.subscribe_topic(topic, lambda event: on_partial(event[1]))
    try:
        while queue and len(running) < window:
            submit(queue.pop())
        for future in pending:
            unit_id = running.pop(future)
            try:
                stats = future.result()
            except SecretError:  # a worker without the job's secret: no retry can help
                raise
            except Exception as exc:  # a killed worker or a failing destination: try the unit again
                if tries[unit_id] < attempts:
                    log.warning("unit %s failed (%s); resubmitting", unit_id, type(exc).__name__)
                    submit(unit_id)
                    if on_partial:
                        on_partial({"unit_id": unit_id, "objects": 0, "source_bytes": 0})
                else:
                    log.error("unit %s failed %d times (%s); left for a later run", unit_id, tries[unit_id],
                              type(exc).__name__)
                    progress.failed_units.append(unit_id)
            else:
                progress.add(stats)
                if on_unit:
                    on_unit(stats)
            while queue and len(running) < window:
                submit(queue.pop())
    finally:
        client.cancel(list(running))
        if topic:
            client.unsubscribe_topic(topic)
    return progress
