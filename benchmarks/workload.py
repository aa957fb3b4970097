"""What the pipeline benchmarks share: a folder of distinct DICOM objects and a stage-by-stage timed job."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

from pydicom.data import get_testdata_file

from pipeline.deid import DeidError, Profile, parse
from pipeline.deid.stream import deidentify_bytes
from pipeline.execute import Settings, run_units
from pipeline.finalize import finalize
from pipeline.job import prepare
from pipeline.secret import fingerprint

DEFAULT_CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SECRET = b"benchmark-secret"


def engine_once(data: bytes) -> bytes:
    """The engine alone on one object, as the run stage calls it: what every object costs at the least."""
    return deidentify_bytes(data, Profile(), secret=SECRET).data


def _variant(data: bytes, sop: str, copy: int) -> bytes:
    """The object under another SOP Instance UID of the same length (its last 3 digits moved on by `copy`)."""
    other = sop[:-3] + f"{(int(sop[-3:]) + copy) % 1000:03d}"
    return data.replace(sop.encode(), other.encode())


def make_workload(target: Path, source: Path | None = None, max_size: int = 2_000_000,
                  copies: int = 1) -> list[Path]:
    """Copy objects the engine accepts, one per SOP Instance UID, so no object is a cheap duplicate;
    with `copies` > 1 (at most 1000), each also under other SOP Instance UIDs, for a larger workload."""
    source = source or (DEFAULT_CORPUS if DEFAULT_CORPUS.exists()
                        else Path(get_testdata_file("CT_small.dcm")).parent)
    warnings.simplefilter("ignore")
    seen: set[str] = set()
    copied = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and p.stat().st_size <= max_size):
        data = path.read_bytes()
        try:
            sop = str(parse(data).SOPInstanceUID)
            engine_once(data)
        except (DeidError, AttributeError):
            continue
        if sop in seen or not sop[-3:].isdigit():
            continue
        seen.add(sop)
        for copy in range(copies):
            out = target / f"{len(copied):05d}.dcm"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(_variant(data, sop, copy) if copy else data)
            copied.append(out)
    return copied


def sized_workload(root: Path, source: Path | None, objects: int) -> tuple[list[Path], int, int]:
    """About `objects` files under root/source, made of the distinct objects the engine accepts, each
    copied under as many other SOP Instance UIDs as it takes: (files, distinct objects, copies)."""
    distinct = len(make_workload(root / "probe", source))
    shutil.rmtree(root / "probe")
    copies = max(1, min(1000, -(-objects // max(distinct, 1))))
    return make_workload(root / "source", source, copies=copies), distinct, copies


def timed_job(client, source: str, out: Path, storage_options: dict | None = None,
              max_unit_objects: int = 1000) -> dict[str, float]:
    """Seconds spent in list+scan+plan, in running the units and in finalizing, on a fresh output."""
    shutil.rmtree(out, ignore_errors=True)
    dest, tables = str(out / "dest"), str(out / "tables")
    start = time.perf_counter()
    planned = prepare(source, tables, client, storage_options, max_unit_objects=max_unit_objects,
                      max_unit_bytes=2**31).pending
    prepared = time.perf_counter()
    settings = Settings(dest, tables, Profile(), fingerprint(SECRET), storage_options)
    progress = run_units(client, planned, settings)
    ran = time.perf_counter()
    finalize(tables, dest, storage_options, run={
        "source": source, "elapsed": ran - start, "units_run": progress.units_run,
        "failed_units": progress.failed_units, "objects": progress.objects,
        "source_bytes": progress.source_bytes})
    done = time.perf_counter()
    assert not progress.failed_units and progress.objects == planned.num_rows
    return {"prepare": prepared - start, "run": ran - prepared, "finalize": done - ran, "total": done - start,
            "objects": planned.num_rows}
