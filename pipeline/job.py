"""The whole job: list, scan, plan, run units and finalize, resumable from what TABLES already holds."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from .deid import Profile
from .deid.keys import SECRET_ENV, as_key
from .deid.profile import resolve
from .report import load_table, progress_bars, result_html, result_text
from .storage import filesystem, retry
from .tables import put_bytes, read_table, write_table

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

JOB_NAME = "job.json"
UNITS_PER_THREAD = 8  # enough units that no worker idles while another finishes a long one
MIN_UNIT_OBJECTS = 10  # below this, per-unit overhead (parts, marker, task) dominates
MIN_UNIT_BYTES = 2**20


class JobError(Exception):
    """A problem with how the job was asked for (not with any object): reported in one line."""


@dataclass(frozen=True)
class RunResult:
    """What a run did and where it went; `ok` is False when units failed or too much was quarantined."""

    source: str
    dest: str
    tables: str
    objects: int = 0
    written: int = 0
    quarantined: int = 0
    source_bytes: int = 0
    output_bytes: int = 0
    units_total: int = 0
    units_run: int = 0
    units_skipped: int = 0
    failed_units: tuple[str, ...] = ()
    elapsed: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False
    max_error_rate: float | None = None
    report: str = ""
    run_objects: int = 0  # processed by this run (the counts above cover every run into TABLES)
    run_bytes: int = 0
    storage_options: dict | None = field(default=None, repr=False, compare=False)  # may hold credentials

    def __str__(self) -> str:
        return result_text(self)

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return result_html(self)

    def manifest(self) -> pd.DataFrame:
        """One row per source object: written (with its output key) or quarantined (with the reason)."""
        return load_table(self, "manifest")

    def quarantine(self) -> pd.DataFrame:
        """The quarantined objects, with reason and detail."""
        return load_table(self, "quarantine")

    def uid_map(self) -> pd.DataFrame:
        """Original UID to new UID (private: it links outputs back to the source)."""
        return load_table(self, "uid_map")

    def index(self) -> pd.DataFrame:
        """This job's index of DEST: new UIDs, modality, SOP class, size and key of each output."""
        return load_table(self, "index")

    @property
    def error_rate(self) -> float:
        return self.quarantined / self.objects if self.objects else 0.0

    @property
    def ok(self) -> bool:
        too_many = self.max_error_rate is not None and self.error_rate > self.max_error_rate
        return not self.failed_units and not too_many


def resolve_key(secret: str | bytes | None) -> bytes:
    """The secret from the argument or the environment; workers must share it, so never a random one."""
    if secret is None:
        secret = os.environ.get(SECRET_ENV)
    if not secret:
        raise JobError(f"no de-identification secret: pass secret= (CLI: --secret-file) or set {SECRET_ENV}")
    return as_key(secret)


def _fingerprint(key: bytes) -> str:
    """Tells two secrets apart without revealing either."""
    return hmac.new(key, b"dicom-deid/job-fingerprint", hashlib.sha256).hexdigest()[:16]


def _inside(inner: str, outer: str, storage_options: dict | None) -> bool:
    inner_fs, inner_path = filesystem(inner, storage_options)
    outer_fs, outer_path = filesystem(outer, storage_options)
    inner_path, outer_path = inner_path.rstrip("/"), outer_path.rstrip("/")
    return type(inner_fs) is type(outer_fs) and (inner_path == outer_path
                                                 or inner_path.startswith(outer_path + "/"))


def absolute(url: str) -> str:
    """Local paths made absolute here, since workers may run in another working directory."""
    return os.path.abspath(url) if "://" not in url else url


def check_locations(source: str, dest: str, tables: str, storage_options: dict | None) -> None:
    """Refuse a missing source, and layouts that would leak linkage tables into DEST or feed outputs back."""
    fs, path = filesystem(source, storage_options)
    if not retry(fs.exists, path):
        raise FileNotFoundError(f"no objects at {source}")
    if _inside(tables, dest, storage_options):
        raise JobError("the tables location must not be inside DEST: it links outputs back to patients")
    if _inside(dest, tables, storage_options):
        raise JobError("DEST must not be inside the tables location")
    if _inside(dest, source, storage_options):
        raise JobError("DEST must not be inside SOURCE: outputs would be read back as inputs")


def local_cluster(n_workers: int | None = None):
    """A LocalCluster of one single-threaded worker process per core (de-identification holds the GIL)."""
    import dask
    from distributed import LocalCluster

    # The workers' statistical profiler samples pydicom's deep stacks every 10 ms: ~12% of throughput.
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        return LocalCluster(n_workers=n_workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                            dashboard_address=":0", silence_logs=logging.ERROR)


@contextmanager
def cluster(client=None) -> Iterator:
    """The given client, else the current one, else an embedded LocalCluster closed afterwards."""
    if client is not None:
        yield client
        return
    from distributed import Client, get_client

    try:
        current = get_client()
    except ValueError:
        current = None
    if current is not None:
        yield current
        return
    with local_cluster() as local, Client(local) as embedded:
        yield embedded


def _stage(fs, path: str, compute: Callable[[], pa.Table], store: bool) -> pa.Table:
    """A stage's table, read back when an earlier run stored it, else computed (and stored)."""
    if retry(fs.exists, path):
        return read_table(fs, path)
    table = compute()
    if store:
        write_table(fs, path, table)
    return table


def unit_size(total: int, limit: int, threads: int, smallest: int = MIN_UNIT_OBJECTS) -> int:
    """A unit's share of `total` (objects or bytes): several units per worker thread, never above `limit`."""
    spread = math.ceil(total / (UNITS_PER_THREAD * max(threads, 1)))
    return min(limit, max(smallest, spread))


def prepare(source: str, tables: str, client, storage_options: dict | None, *, max_unit_objects: int,
            max_unit_bytes: int, store: bool = True) -> pa.Table:
    """Stages 1-3 (list, scan, plan), each reused when TABLES already holds it."""
    from .listing import list_objects
    from .plan import plan
    from .scan import scan

    fs, path = filesystem(tables, storage_options)
    listing = _stage(fs, f"{path}/listing.parquet",
                     lambda: list_objects(source, storage_options, client=client), store)
    log.info("listed %d objects", listing.num_rows)
    inventory = _stage(fs, f"{path}/inventory.parquet",
                       lambda: scan(listing, storage_options, client=client), store)
    threads = sum(client.nthreads().values())
    unit_objects = unit_size(inventory.num_rows, max_unit_objects, threads)
    unit_bytes = unit_size(pc.sum(inventory["size"]).as_py() or 0, max_unit_bytes, threads, MIN_UNIT_BYTES)
    planned = _stage(fs, f"{path}/plan.parquet",
                     lambda: plan(inventory, max_objects=unit_objects, max_bytes=unit_bytes), store)
    log.info("planned %d units", len(pc.unique(planned["unit_id"])))
    return planned


def _claim(tables: str, identity: dict, storage_options: dict | None) -> None:
    """Record which job TABLES belongs to; refuse to resume a different one there."""
    fs, path = filesystem(tables, storage_options)
    job_path = f"{path}/{JOB_NAME}"
    if retry(fs.exists, job_path):
        if json.loads(retry(fs.cat_file, job_path)) != identity:
            raise JobError("the tables location holds a different job (other source, DEST, profile or "
                           "secret); use a new --tables location")
        return
    retry(fs.makedirs, path, exist_ok=True)
    put_bytes(fs, job_path, json.dumps(identity, indent=2, sort_keys=True).encode())


class _Bars:
    """tqdm bars of objects and bytes: finished units plus what running units last reported."""

    def __init__(self, objects: int, nbytes: int) -> None:
        self.objects, self.bytes = progress_bars(objects, nbytes)
        self.lock = threading.Lock()
        self.finished: set[str] = set()
        self.shown: dict[str, tuple[int, int]] = {}  # unit -> (objects, bytes) counted so far

    def _show(self, unit_id: str, objects: int, nbytes: int) -> None:
        before = self.shown.get(unit_id, (0, 0))
        self.shown[unit_id] = (objects, nbytes)
        self.objects.update(objects - before[0])
        self.bytes.update(nbytes - before[1])

    def partial(self, report: dict) -> None:
        with self.lock:
            if report["unit_id"] not in self.finished:
                self._show(report["unit_id"], report["objects"], report["source_bytes"])

    def __call__(self, stats: dict) -> None:
        with self.lock:
            self.finished.add(stats["unit_id"])
            self._show(stats["unit_id"], stats["objects"], stats["source_bytes"])

    def close(self) -> None:
        self.objects.close()
        self.bytes.close()


def _remaining(planned: pa.Table, done: set[str]) -> pa.Table:
    """The plan's rows whose unit is not committed yet."""
    committed = pc.is_in(planned["unit_id"], value_set=pa.array(sorted(done), pa.string()))
    return planned.filter(pc.invert(committed))


def _dry_run(source: str, dest: str, tables: str, planned: pa.Table, done: set[str]) -> RunResult:
    units = pc.unique(planned["unit_id"])
    todo = _remaining(planned, done)
    unreadable = pc.sum(pc.is_valid(planned["error"])).as_py() or 0
    report = (f"dry run: {planned.num_rows} objects ({pc.sum(planned['size']).as_py() or 0} bytes) in "
              f"{len(units)} units; {len(units) - len(pc.unique(todo['unit_id']))} units already committed; "
              f"{todo.num_rows} objects would be processed; {unreadable} headers did not parse "
              f"(they will be re-read and quarantined if still unreadable)")
    return RunResult(source, dest, tables, objects=planned.num_rows, units_total=len(units),
                     units_skipped=len(units) - len(pc.unique(todo["unit_id"])), dry_run=True,
                     report=report)


def _complete(summary: dict | None, units_total: int) -> bool:
    """True when an earlier finalize already covered every unit of the plan."""
    return bool(summary) and summary["units_done"] == units_total and not summary["failed_units"]


def run(source: str, dest: str, tables: str, profile: Profile | None = None, client=None,
        secret: str | bytes | None = None, storage_options: dict | None = None, dry_run: bool = False,
        max_error_rate: float | None = None, progress: bool = False, *, max_unit_objects: int = 1000,
        max_unit_bytes: int = 2**31, on_unit: Callable[[dict], None] | None = None,
        **profile_flags: bool) -> RunResult:
    """De-identify every DICOM object under `source` into `dest`, with linkage tables in `tables`."""
    from .execute import Settings, committed_units, run_units
    from .finalize import describe, finalize, read_summary

    started = time.perf_counter()
    try:
        profile = resolve(profile, profile_flags)
    except TypeError as exc:
        raise JobError(str(exc)) from exc
    if max_error_rate is not None and not 0 <= max_error_rate <= 1:
        raise JobError("max_error_rate must be between 0 and 1")
    source, dest, tables = absolute(source), absolute(dest), absolute(tables)
    check_locations(source, dest, tables, storage_options)
    key = None if dry_run else resolve_key(secret)
    with cluster(client) as active:
        if progress:
            print(f"Dask dashboard: {active.dashboard_link}", file=sys.stderr)
        if not dry_run:
            _claim(tables, {"source": source, "dest": dest, "profile": asdict(profile),
                            "secret_fingerprint": _fingerprint(key)}, storage_options)
        planned = prepare(source, tables, active, storage_options, max_unit_objects=max_unit_objects,
                          max_unit_bytes=max_unit_bytes, store=not dry_run)
        done = committed_units(tables, storage_options)
        if dry_run:
            return _dry_run(source, dest, tables, planned, done)
        settings = Settings(dest, tables, profile, key, storage_options)
        todo = _remaining(planned, done)
        bars = _Bars(todo.num_rows, pc.sum(todo["size"]).as_py() or 0) if progress else None
        callbacks = [c for c in (bars, on_unit) if c]

        def unit_finished(stats: dict) -> None:
            for callback in callbacks:
                callback(stats)

        try:
            outcome = run_units(active, planned, settings, done=done, on_unit=unit_finished,
                                on_partial=bars.partial if bars else None)
        finally:
            if bars:
                bars.close()
    summary = read_summary(tables, storage_options)
    report = "nothing new to do: every unit was already committed\n"
    if outcome.units_run or outcome.failed_units or not _complete(summary, outcome.units_total):
        report = ""
        run_facts = {"source": source, "elapsed": time.perf_counter() - started,
                     **{k: getattr(outcome, k) for k in ("units_total", "units_run", "units_skipped",
                                                         "failed_units", "objects", "source_bytes")}}
        summary = finalize(tables, dest, storage_options, run=run_facts)
    return RunResult(
        source, dest, tables, objects=summary["objects"], written=summary["written"],
        quarantined=summary["quarantined"], source_bytes=summary["source_bytes"],
        output_bytes=summary["output_bytes"], units_total=outcome.units_total, units_run=outcome.units_run,
        units_skipped=outcome.units_skipped, failed_units=tuple(outcome.failed_units),
        elapsed=time.perf_counter() - started, quarantine_reasons=summary["quarantine_reasons"],
        max_error_rate=max_error_rate, report=report + describe(summary), run_objects=outcome.objects,
        run_bytes=outcome.source_bytes, storage_options=storage_options)
