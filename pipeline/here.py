"""A small local job's units, one after another in this process: the same `run_unit` a cluster's worker runs,
without loading Dask or starting a scheduler and a worker for it (~0.5 s of a 500-object job's ~4 s)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pyarrow as pa

from .execute import UNIT_ATTEMPTS, Progress, Settings, Unit, _largest_first, _units, run_unit
from .secret import SecretError, held_here

log = logging.getLogger(__name__)


def run_here(plan: pa.Table, settings: Settings, key: bytes, *, done: set[str],
             on_unit: Callable[[dict], None] | None = None, attempts: int = UNIT_ATTEMPTS) -> Progress:
    """Run every uncommitted unit of `plan` here, with the driver's secret held in memory for them; a unit
    that fails is run again, up to `attempts` times, as a cluster resubmits it."""
    units = _units(plan)
    queue = _largest_first({u: rows for u, rows in units.items() if u not in done})
    progress = Progress(units_total=len(units), units_skipped=len(units) - len(queue))
    if not queue:
        return progress
    log.info("running in this process (a small local job)")
    with held_here(key):
        for unit_id in queue:
            stats = _attempts(Unit(unit_id, units[unit_id].to_pylist()), settings, attempts)
            if stats is None:
                progress.failed_units.append(unit_id)
                continue
            progress.add(stats)
            if on_unit:
                on_unit(stats)
    return progress


def _attempts(unit: Unit, settings: Settings, attempts: int) -> dict | None:
    """The unit's counts, or None when every attempt failed (the unit is left for a later run)."""
    for attempt in range(1, attempts + 1):
        try:
            return run_unit(unit, settings)
        except SecretError:  # no retry can help
            raise
        except Exception as exc:  # a failing destination: try the unit again
            log.warning("unit %s failed (%s), attempt %d of %d", unit.unit_id, type(exc).__name__, attempt,
                        attempts)
    log.error("unit %s left for a later run", unit.unit_id)
    return None
