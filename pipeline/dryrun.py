"""What a dry run prints: the plan in a person's units, by modality, with the largest studies."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from .console import human_bytes

LARGEST = 5


def _bytes(table: pa.Table) -> int:
    return pc.sum(table["size"]).as_py() or 0


def _by_modality(todo: pa.Table) -> list[str]:
    modality = pc.fill_null(todo["modality"], "(none)")
    grouped = pa.table({"modality": modality, "size": pc.fill_null(todo["size"], 0)}).group_by("modality")
    rows = grouped.aggregate([("size", "count"), ("size", "sum")]).sort_by([("size_sum", "descending")])
    return [f"  {m:<8} {n:>8} objects {human_bytes(b):>10}" for m, n, b in
            zip(rows["modality"].to_pylist(), rows["size_count"].to_pylist(), rows["size_sum"].to_pylist(),
                strict=True)]


def _largest_studies(todo: pa.Table) -> list[str]:
    """The biggest studies by bytes, named by position only: a Study Instance UID is patient data."""
    todo = todo.filter(pc.is_valid(todo["study_uid"]))  # objects without one are no study
    studies = pa.table({"study": todo["study_uid"], "size": pc.fill_null(todo["size"], 0)})
    rows = studies.group_by("study").aggregate([("size", "count"), ("size", "sum")])
    rows = rows.sort_by([("size_sum", "descending")]).slice(0, LARGEST)
    return [f"  {human_bytes(b):>10} in {n} object{'s' * (n != 1)}" for n, b in
            zip(rows["size_count"].to_pylist(), rows["size_sum"].to_pylist(), strict=True)]


def describe_plan(planned: pa.Table, todo: pa.Table, changes: str | None = None) -> str:
    """The whole plan, what is left of it, and where the bytes are; `changes` says what the listing found
    new, changed, unchanged and gone since the last run."""
    units, units_left = len(pc.unique(planned["unit_id"])), len(pc.unique(todo["unit_id"]))
    studies = len(pc.unique(planned["study_uid"].drop_null()))
    unreadable = pc.sum(pc.is_valid(todo["error"])).as_py() or 0
    lines = [f"dry run: {planned.num_rows} objects ({human_bytes(_bytes(planned))}) in {studies} studies, "
             f"{units} work units",
             *([changes] if changes else []),
             f"already committed: {units - units_left} units; would process {todo.num_rows} objects "
             f"({human_bytes(_bytes(todo))}) in {units_left} units"]
    if todo.num_rows:
        lines += ["by modality:", *_by_modality(todo)]
        lines += [f"largest studies (of {studies}):", *_largest_studies(todo)]
    if unreadable:
        lines.append(f"{unreadable} headers did not parse: they will be re-read, and quarantined if still "
                     "unreadable")
    return "\n".join(lines)
