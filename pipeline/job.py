"""The whole job: list, scan, plan, run units and finalize, resumable from what TABLES already holds."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .console import UnitMeter, stage
from .deid import Profile
from .deid.keys import SECRET_ENV, as_key
from .deid.profile import resolve
from .secret import SECRET_FILE_ENV, SendSecret, fingerprint, from_environment
from .storage import filesystem, retry
from .tables import put_bytes, read_table, write_table

log = logging.getLogger(__name__)

JOB_NAME = "job.json"
UNITS_PER_THREAD = 8  # enough units that no worker idles while another finishes a long one
MIN_UNIT_OBJECTS = 10  # below this, per-unit overhead (parts, marker, task) dominates
MIN_UNIT_BYTES = 2**20
LOCAL_DASHBOARD = "127.0.0.1:0"  # the embedded cluster's dashboard: this machine only, unless asked


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

    @property
    def error_rate(self) -> float:
        return self.quarantined / self.objects if self.objects else 0.0

    @property
    def ok(self) -> bool:
        too_many = self.max_error_rate is not None and self.error_rate > self.max_error_rate
        return not self.failed_units and not too_many


def resolve_key(secret: str | bytes | None) -> bytes:
    """The secret from the argument or the environment; workers must share it, so never a random one."""
    key = as_key(secret) if secret else from_environment()
    if not key:
        raise JobError(f"no de-identification secret: pass secret= (CLI: --secret-file) or set {SECRET_ENV} "
                       f"or {SECRET_FILE_ENV}")
    return key


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


def local_cluster(n_workers: int | None = None, key: bytes | None = None,
                  dashboard_address: str = LOCAL_DASHBOARD):
    """A LocalCluster of one single-threaded worker process per core (de-identification holds the GIL);
    its workers get the secret in their environment, never in a task."""
    import dask
    from distributed import LocalCluster

    n_workers = n_workers or os.cpu_count() or 1
    log.info("starting a local Dask cluster of %d workers...", n_workers)
    # The workers' statistical profiler samples pydicom's deep stacks every 10 ms: ~12% of throughput.
    # The preload makes worker processes leave Ctrl-C to this process (see console.dask_setup).
    with dask.config.set({"distributed.worker.profile.enabled": False,
                          "distributed.worker.preload": ["pipeline.console"]}):
        return LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                            dashboard_address=dashboard_address, silence_logs=logging.ERROR,
                            host="127.0.0.1", env=_secret_env(key))


def _secret_env(key: bytes | None) -> dict[str, str]:
    if key is None:
        return {}
    if b"\0" in key:
        raise JobError("the secret holds a NUL byte, which no environment variable can carry")
    return {SECRET_ENV: os.fsdecode(key)}  # the worker's os.fsencode gives back these bytes


@contextmanager
def cluster(client=None, key: bytes | None = None, dashboard_address: str = LOCAL_DASHBOARD) -> Iterator:
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
    with local_cluster(key=key, dashboard_address=dashboard_address) as local, Client(local) as embedded:
        yield embedded


@contextmanager
def _sent_secret(client, key: bytes | None, send: bool) -> Iterator[None]:
    """With --send-secret, the secret goes to the workers in a plugin, over TLS only, removed afterwards."""
    if not send or key is None:
        yield
        return
    address = client.scheduler.address
    if not address.startswith("tls://"):
        raise JobError(f"--send-secret needs a tls:// scheduler, not {address.split('://')[0]}://: the "
                       f"secret would cross the network in the clear; give workers {SECRET_ENV} instead")
    plugin = SendSecret(key)
    client.register_plugin(plugin, name=plugin.name)
    try:
        yield
    finally:
        client.unregister_worker_plugin(plugin.name)


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


def scan_listing(listing: pa.Table, storage_options: dict | None, client, progress: bool) -> pa.Table:
    """Stage 2 with a meter of headers read."""
    from .console import Meter
    from .scan import scan

    meter = Meter("scan", listing.num_rows) if progress and listing.num_rows else None
    try:
        return scan(listing, storage_options, client=client, on_batch=meter and meter.update)
    finally:
        if meter:
            meter.close()


def prepare(source: str, tables: str, client, storage_options: dict | None, *, max_unit_objects: int,
            max_unit_bytes: int, store: bool = True, rules: list | None = None,
            progress: bool = False) -> pa.Table:
    """Stages 1-3 (list, scan, plan), each reused when TABLES already holds it."""
    from .filters import apply_filters
    from .listing import list_objects
    from .plan import plan

    fs, path = filesystem(tables, storage_options)
    with stage("listing SOURCE"):
        listing = _stage(fs, f"{path}/listing.parquet", lambda: apply_filters(
            list_objects(source, storage_options, client=client), source, rules, storage_options), store)
    log.info("listed %d objects", listing.num_rows)
    with stage(f"reading the headers of {listing.num_rows} objects"):
        inventory = _stage(fs, f"{path}/inventory.parquet",
                           lambda: scan_listing(listing, storage_options, client, progress), store)
    threads = sum(client.nthreads().values())
    unit_objects = unit_size(inventory.num_rows, max_unit_objects, threads)
    unit_bytes = unit_size(pc.sum(inventory["size"]).as_py() or 0, max_unit_bytes, threads, MIN_UNIT_BYTES)
    with stage("planning work units by study"):
        planned = _stage(fs, f"{path}/plan.parquet",
                         lambda: plan(inventory, max_objects=unit_objects, max_bytes=unit_bytes), store)
    log.info("planned %d units", len(pc.unique(planned["unit_id"])))
    return planned


def _claim(tables: str, identity: dict, storage_options: dict | None) -> None:
    """Record which job TABLES belongs to; refuse to resume a different one there."""
    fs, path = filesystem(tables, storage_options)
    job_path = f"{path}/{JOB_NAME}"
    if retry(fs.exists, job_path):
        recorded = json.loads(retry(fs.cat_file, job_path))
        if recorded != identity:
            differ = ", ".join(differences(recorded, identity))
            raise JobError(f"the tables location holds a different job ({differ} differ); run with the same "
                           "settings to resume it, or use a new --tables location")
        return
    retry(fs.makedirs, path, exist_ok=True)
    put_bytes(fs, job_path, json.dumps(identity, indent=2, sort_keys=True).encode())


def differences(recorded: dict, asked: dict) -> list[str]:
    """The settings, by flag name, in which two job identities differ; the secret only as a name."""
    found = []
    for name in sorted(set(recorded) | set(asked)):
        was, now = recorded.get(name), asked.get(name)
        if was == now:
            continue
        if name == "profile":
            found += ["--" + f.replace("_", "-") for f in sorted(set(was or {}) | set(now or {}))
                      if (was or {}).get(f) != (now or {}).get(f)]
        elif name == "secret_fingerprint":
            found.append("secret")
        elif name == "filters":
            found.append("--include/--exclude")
        else:
            found.append(f"{name.upper()} (was {was}, now {now})")
    return found


def _remaining(planned: pa.Table, done: set[str]) -> pa.Table:
    """The plan's rows whose unit is not committed yet."""
    committed = pc.is_in(planned["unit_id"], value_set=pa.array(sorted(done), pa.string()))
    return planned.filter(pc.invert(committed))


def _dry_run(source: str, dest: str, tables: str, planned: pa.Table, done: set[str]) -> RunResult:
    from .dryrun import describe_plan

    units = pc.unique(planned["unit_id"])
    todo = _remaining(planned, done)
    report = describe_plan(planned, todo)
    return RunResult(source, dest, tables, objects=planned.num_rows, units_total=len(units),
                     units_skipped=len(units) - len(pc.unique(todo["unit_id"])), dry_run=True,
                     report=report)


def _complete(summary: dict | None, units_total: int) -> bool:
    """True when an earlier finalize already covered every unit of the plan."""
    return bool(summary) and summary["units_done"] == units_total and not summary["failed_units"]


def run(source: str, dest: str, tables: str, profile: Profile | None = None, client=None,
        secret: str | bytes | None = None, storage_options: dict | None = None, dry_run: bool = False,
        max_error_rate: float | None = None, progress: bool = False, *, max_unit_objects: int = 1000,
        max_unit_bytes: int = 2**31, on_unit: Callable[[dict], None] | None = None, send_secret: bool = False,
        dashboard_address: str = LOCAL_DASHBOARD, rules: list[tuple[str, str]] | None = None,
        **profile_flags: bool) -> RunResult:
    """De-identify every DICOM object under `source` into `dest`, with linkage tables in `tables`;
    `rules` are ("include" | "exclude", glob) pairs on paths relative to `source`, later ones winning."""
    from .execute import Settings, committed_units, run_units
    from .finalize import describe, finalize, read_summary
    from .workers import check_workers

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
    with cluster(client, key, dashboard_address) as active, _sent_secret(active, key, send_secret):
        log.info("Dask dashboard: %s", active.dashboard_link)
        if not dry_run:
            identity = {"source": source, "dest": dest, "profile": asdict(profile),
                        "secret_fingerprint": fingerprint(key)}
            if rules:  # only then, so jobs recorded before filters existed still resume
                identity["filters"] = [list(rule) for rule in rules]
            _claim(tables, identity, storage_options)
        with stage("checking that every worker holds the job's secret"):
            check_workers(active, key and fingerprint(key))
        planned = prepare(source, tables, active, storage_options, max_unit_objects=max_unit_objects,
                          max_unit_bytes=max_unit_bytes, store=not dry_run, rules=rules, progress=progress)
        done = committed_units(tables, storage_options)
        if dry_run:
            return _dry_run(source, dest, tables, planned, done)
        settings = Settings(dest, tables, profile, fingerprint(key), storage_options)
        todo = _remaining(planned, done)
        show = progress and todo.num_rows
        bars = UnitMeter(todo.num_rows, pc.sum(todo["size"]).as_py() or 0) if show else None
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
    fresh = bool(outcome.units_run or outcome.failed_units or not _complete(summary, outcome.units_total))
    report = ("nothing new: every unit was committed by an earlier run, so this run processed no object.\n"
              "totals of the job so far:\n")
    if fresh:
        report = ""
        run_facts = {"source": source, "elapsed": time.perf_counter() - started,
                     **{k: getattr(outcome, k) for k in ("units_total", "units_run", "units_skipped",
                                                         "failed_units", "objects", "source_bytes")}}
        with stage("writing the manifest, quarantine and index tables"):
            summary = finalize(tables, dest, storage_options, run=run_facts)
    return RunResult(
        source, dest, tables, objects=summary["objects"], written=summary["written"],
        quarantined=summary["quarantined"], source_bytes=summary["source_bytes"],
        output_bytes=summary["output_bytes"], units_total=outcome.units_total, units_run=outcome.units_run,
        units_skipped=outcome.units_skipped, failed_units=tuple(outcome.failed_units),
        elapsed=time.perf_counter() - started, quarantine_reasons=summary["quarantine_reasons"],
        max_error_rate=max_error_rate, report=report + describe(summary, this_run=fresh))
