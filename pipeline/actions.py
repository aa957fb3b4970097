"""What happened to each attribute, per run: the units' counts summed into TABLES/runs/<n>/actions.parquet.

Rows are (attribute, tag, action, source, count): e.g. EvaluatorName (0014,2006) emptied by the
safety net 12 times. The table is private like the others: it names no value, but says which
attributes the inputs held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pyarrow as pa

from .deid.actions import rows
from .runs import RUNS_FOLDER, run_folder
from .storage import retry
from .tables import ACTIONS_PART_SCHEMA, read_parts, read_table, write_table

ACTIONS_FILE = "actions.parquet"
ACTIONS_SCHEMA = ACTIONS_PART_SCHEMA.remove(ACTIONS_PART_SCHEMA.get_field_index("unit_id"))
_KEYS = ["attribute", "tag", "action", "source"]


def unit_rows(counts: Iterable[Counter], unit_id: str) -> list[dict]:
    """One unit's rows: the walkers' counts of its written objects, summed. Objects of a series mostly
    count alike, so a count equal to the one before is added once, times how often it came (comparing two
    counts takes a tenth of the time adding one does)."""
    runs: list[list] = []  # [count, how many objects in a row had it]
    for found in counts:
        if runs and dict.__eq__(runs[-1][0], found):  # Counter's own == is a Python loop
            runs[-1][1] += 1
        else:
            runs.append([found, 1])
    total: Counter = Counter()
    for found, times in runs:
        for key, count in found.items():
            total[key] += count * times
    return [dict(zip([*_KEYS, "count"], row, strict=True), unit_id=unit_id) for row in rows(total)]


def summed(table: pa.Table) -> pa.Table:
    """Rows with the same attribute, tag, action and source added up, most frequent first."""
    grouped = table.group_by(_KEYS).aggregate([("count", "sum")]).rename_columns([*_KEYS, "count"])
    return grouped.select(ACTIONS_SCHEMA.names).cast(ACTIONS_SCHEMA).sort_by(
        [("count", "descending"), ("attribute", "ascending"), ("action", "ascending")])


def write_run_actions(fs, tables_path: str, number: int, units: set[str]) -> None:
    """Sum the parts of a run's committed units into its actions table."""
    write_table(fs, f"{run_folder(tables_path, number)}/{ACTIONS_FILE}",
                summed(read_parts(fs, tables_path, "actions", units).select(ACTIONS_SCHEMA.names)))


def read_actions(fs, tables_path: str, run: int | None = None) -> pa.Table:
    """One run's actions table, or every run's, with a `run` column (None)."""
    folder = f"{tables_path}/{RUNS_FOLDER}"
    fs.invalidate_cache(folder)
    if run is not None:
        path = f"{run_folder(tables_path, run)}/{ACTIONS_FILE}"
        if not retry(fs.exists, path):
            raise FileNotFoundError(f"no actions table for run {run} at {path}")
        paths = [path]
    else:
        paths = sorted(p for p in retry(fs.find, folder) if p.endswith(f"/{ACTIONS_FILE}")) \
            if retry(fs.exists, folder) else []
    parts = []
    for path in paths:
        table = read_table(fs, path, ACTIONS_SCHEMA)
        number = int(path.rsplit("/", 2)[-2])
        parts.append(table.append_column("run", pa.array([number] * table.num_rows, pa.int64())))
    return pa.concat_tables([ACTIONS_SCHEMA.append(pa.field("run", pa.int64())).empty_table(), *parts])
