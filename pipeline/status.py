"""What a tables location says about its run, read from the plan and the units' commit markers."""

from __future__ import annotations

import json
from collections import Counter

from .execute import committed_units, marker_path
from .finalize import history
from .storage import filesystem, retry

_COUNTS = ("objects", "written", "quarantined", "source_bytes", "output_bytes")
_READ_BATCH = 256


def job_status(tables: str, storage_options: dict | None = None) -> dict:
    """Units done and total, object counts and quarantine reasons so far, and whether the run finished."""
    fs, path = filesystem(tables, storage_options)
    if not retry(fs.exists, f"{path}/job.json"):
        raise FileNotFoundError(f"no dicom-deid job in {tables}")
    job = json.loads(retry(fs.cat_file, f"{path}/job.json"))
    past = history(fs, path)
    done = sorted(committed_units(tables, storage_options))
    totals: Counter = Counter()
    reasons: Counter = Counter()
    for start in range(0, len(done), _READ_BATCH):
        markers = [marker_path(path, unit) for unit in done[start:start + _READ_BATCH]]
        for content in retry(fs.cat, markers).values():
            stats = json.loads(content)
            totals.update({k: stats[k] for k in _COUNTS})
            reasons.update(stats["reasons"])
    units_total = len(past.unit_run) if past.runs else None
    return {
        "source": job["source"], "dest": job["dest"], "units_total": units_total,
        "objects_total": sum(run.planned for run in past.runs) if past.runs else None,
        "units_done": len(done), **{k: totals[k] for k in _COUNTS},
        "quarantine_reasons": dict(sorted(reasons.items())),
        "finished": units_total == len(done) and retry(fs.exists, f"{path}/summary.json"),
    }


def describe_status(status: dict) -> str:
    """The status as a few lines for a person."""
    total = "?" if status["units_total"] is None else status["units_total"]
    objects_total = "?" if status["objects_total"] is None else status["objects_total"]
    lines = [f"job: {status['source']} -> {status['dest']}",
             f"units: {status['units_done']}/{total} committed; objects: {status['objects']}/{objects_total} "
             f"done ({status['written']} written, {status['quarantined']} quarantined)"]
    if status["quarantine_reasons"]:
        lines.append("quarantine reasons: " + ", ".join(f"{r}: {n}"
                                                        for r, n in status["quarantine_reasons"].items()))
    lines.append("finished" if status["finished"] else "not finished: run the same job again to resume")
    return "\n".join(lines)
