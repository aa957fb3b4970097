"""How a run looks to a person: RunResult as text and HTML, its tables as DataFrames, its progress bars."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import pyarrow as pa

from .actions import read_actions
from .finalize import index_path
from .storage import filesystem
from .tables import INDEX_SCHEMA, PART_SCHEMAS, read_table

if TYPE_CHECKING:
    import pandas as pd

    from .job import RunResult

TABLE_HELP = "result.manifest(), .quarantine(), .uid_map(), .index(), .actions()"
_OK, _NOT_OK = "#1a7f37", "#cf222e"


def human_bytes(n: float) -> str:
    """Bytes in decimal units (kB, MB, ...), as the MB/s figures of the summary."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    """1.2 s, 3 min 04 s, 2 h 05 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _verdict(result: RunResult) -> str:
    if result.dry_run:
        return "dry run"
    if result.failed_units:
        return f"NOT OK: {len(result.failed_units)} units failed (run again to retry them)"
    if not result.ok:
        return (f"NOT OK: {result.error_rate:.1%} quarantined, "
                f"above max_error_rate {result.max_error_rate:.1%}")
    return "OK"


def _throughput(result: RunResult) -> str:
    if not result.run_objects:
        return "nothing new this run"
    elapsed = max(result.elapsed, 1e-9)
    return (f"{result.run_objects} objects this run: {result.run_objects / elapsed:.1f} objects/s, "
            f"{human_bytes(result.run_bytes / elapsed)}/s")


def _reasons(result: RunResult) -> list[tuple[str, int]]:
    """Quarantine reasons, most frequent first."""
    return sorted(result.quarantine_reasons.items(), key=lambda item: (-item[1], item[0]))


def _facts(result: RunResult) -> list[tuple[str, str]]:
    """The (label, value) rows both the text and the HTML show."""
    if result.dry_run:
        return [("plan", f"{result.objects} objects in {result.units_total} units, "
                         f"{result.units_skipped} already committed"),
                ("source", result.source), ("DEST", result.dest), ("TABLES", result.tables)]
    share = f" ({result.error_rate:.1%})" if result.objects else ""
    return [
        ("objects", f"{result.objects}: {result.written} written, {result.quarantined} quarantined{share}"),
        ("size", f"{human_bytes(result.source_bytes)} read, {human_bytes(result.output_bytes)} written"),
        ("units", f"{result.units_total - len(result.failed_units)}/{result.units_total} done "
                  f"({result.units_run} this run, {result.units_skipped} already committed)"),
        ("elapsed", f"{human_seconds(result.elapsed)} ({_throughput(result)})"),
        ("source", result.source),
        ("DEST", f"{result.dest} (index: _index/)"),
        ("TABLES", f"{result.tables} (private: links outputs back to the source)"),
    ]


def result_text(result: RunResult) -> str:
    """A few aligned lines: verdict, counts, sizes, time, where things are, how to load the tables."""
    rows = _facts(result)
    if result.quarantine_reasons:
        rows.insert(4, ("quarantined", ", ".join(f"{reason} {n}" for reason, n in _reasons(result))))
    if not result.dry_run:
        rows.append(("tables", TABLE_HELP))
    width = max(len(label) for label, _ in rows)
    lines = [f"  {label:<{width}}  {value}" for label, value in rows]
    return "\n".join([f"RunResult: {_verdict(result)}", *lines])


def _reason_bars(result: RunResult) -> str:
    """Quarantine reasons as a small table of proportional bars."""
    reasons = _reasons(result)
    top = max(n for _, n in reasons)
    rows = "".join(
        f"<tr><td style='text-align:left'><code>{html.escape(reason)}</code></td>"
        f"<td style='text-align:right'>{n}</td><td style='text-align:left;width:12em'>"
        f"<div style='background:{_NOT_OK};opacity:.6;height:.8em;width:{100 * n / top:.0f}%'></div>"
        "</td></tr>"
        for reason, n in reasons)
    return f"<table>{rows}</table>"


def result_html(result: RunResult) -> str:
    """The result as a notebook shows it: a coloured verdict, a table of facts, quarantine reasons as bars."""
    colour = _OK if result.ok else _NOT_OK
    rows = "".join(f"<tr><th style='text-align:left'>{html.escape(label)}</th>"
                   f"<td style='text-align:left'>{html.escape(value)}</td></tr>"
                   for label, value in _facts(result))
    if result.quarantine_reasons:
        rows += (f"<tr><th style='text-align:left;vertical-align:top'>quarantine reasons</th>"
                 f"<td>{_reason_bars(result)}</td></tr>")
    if not result.dry_run:
        rows += f"<tr><th style='text-align:left'>tables</th><td><code>{TABLE_HELP}</code></td></tr>"
    return (f"<div><strong>RunResult</strong> <span style='color:{colour};font-weight:bold'>"
            f"{html.escape(_verdict(result))}</span><table>{rows}</table></div>")


def load_table(result: RunResult, name: str, run: int | None = None) -> pd.DataFrame:
    """One of the run's tables (manifest, quarantine, uid_map, actions of `run` or of every run from
    TABLES; index from DEST) as a DataFrame."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError("loading tables needs pandas: pip install 'dicom-deid[notebook]'") from exc
    if result.dry_run:
        raise ValueError("a dry run writes no tables")
    # Nullable columns stay integers and strings (<NA>), not floats and objects.
    types = {pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype()}
    if name == "actions":
        fs, tables_path = filesystem(result.tables, result.storage_options)
        return read_actions(fs, tables_path, run).to_pandas(types_mapper=types.get)
    if name == "index":
        fs, dest_path = filesystem(result.dest, result.storage_options)
        path, schema = index_path(dest_path, result.tables), INDEX_SCHEMA
    else:
        fs, tables_path = filesystem(result.tables, result.storage_options)
        path, schema = f"{tables_path}/{name}.parquet", PART_SCHEMAS[name]
    if not fs.exists(path):
        raise FileNotFoundError(f"no {name} table at {path}: the run did not finish its tables")
    return read_table(fs, path, schema).to_pandas(types_mapper=types.get)
