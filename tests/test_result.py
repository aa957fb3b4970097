"""RunResult as a person sees it: text, HTML, its tables as DataFrames, and progress bars without escapes."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pandas as pd
import pytest
from samples import SECRET, poison_objects, study_objects, write_tree

import pipeline
from pipeline.console import UnitMeter
from pipeline.job import RunResult
from pipeline.report import human_bytes, human_seconds

CREDENTIAL = "AKIA-must-never-show-in-a-repr"


def _result(**overrides) -> RunResult:
    facts = dict(source="/data/<in>", dest="/data/out", tables="/secure/tables", objects=1500, written=1480,
                 quarantined=20, source_bytes=3_250_000_000, output_bytes=3_100_000_000, units_total=12,
                 units_run=12, elapsed=125.0, quarantine_reasons={"not-dicom": 5, "dicomdir": 15},
                 run_objects=1500, run_bytes=3_250_000_000,
                 storage_options={"key": CREDENTIAL, "secret": CREDENTIAL})
    return RunResult(**{**facts, **overrides})


def test_human_units():
    assert [human_bytes(n) for n in (0, 999, 1000, 2_500_000, 3.25e9, 7e15)] == \
        ["0 B", "999 B", "1.0 kB", "2.5 MB", "3.2 GB", "7000.0 TB"]
    assert [human_seconds(s) for s in (0.25, 59.94, 125, 7500)] == ["0.2 s", "59.9 s", "2 min 05 s",
                                                                    "2 h 05 min"]


def test_text_is_readable_lines_with_the_facts_and_no_credentials():
    result = _result()
    text = str(result)
    lines = text.splitlines()
    assert repr(result) == text and lines[0] == "RunResult: OK"
    assert len(lines) >= 9 and all(len(line) < 120 for line in lines)
    assert "1500: 1480 written, 20 quarantined (1.3%)" in text
    assert "3.2 GB read, 3.1 GB written" in text
    assert "2 min 05 s (1500 objects this run: 12.0 objects/s, 26.0 MB/s)" in text
    assert "dicomdir 15, not-dicom 5" in text  # most frequent first
    assert "/data/out" in text and "/secure/tables" in text
    assert CREDENTIAL not in text and "storage_options" not in text


def test_text_says_what_is_wrong_and_when_nothing_ran():
    failed = str(_result(failed_units=("u1", "u2")))
    assert failed.startswith("RunResult: NOT OK: 2 units failed") and "10/12 done" in failed
    too_many = str(_result(max_error_rate=0.01))
    assert too_many.startswith("RunResult: NOT OK: 1.3% quarantined, above max_error_rate 1.0%")
    rerun = str(_result(units_run=0, units_skipped=12, run_objects=0, run_bytes=0))
    assert "nothing new this run" in rerun and "objects/s" not in rerun
    dry = str(_result(dry_run=True, units_skipped=4))
    assert dry.splitlines()[0] == "RunResult: dry run"
    assert "1500 objects in 12 units, 4 already committed" in dry


def test_html_shows_verdict_facts_and_reasons_escaped_without_credentials():
    page = _result(failed_units=("u1",))._repr_html_()
    assert "NOT OK: 1 units failed" in page and "#cf222e" in page
    assert "3.2 GB read" in page and "/secure/tables" in page and "result.manifest()" in page
    assert page.index("dicomdir") < page.index("not-dicom")
    assert "/data/&lt;in&gt;" in page and "<in>" not in page
    assert CREDENTIAL not in page
    assert "#1a7f37" in _result()._repr_html_()


def test_accessors_load_the_runs_tables(tmp_path, dask_client):
    files = study_objects(2, 3)
    files.update({name: data for name, (data, _) in poison_objects().items() if name != "poison/deep.dcm"})
    write_tree(tmp_path / "src", files)
    result = pipeline.run(str(tmp_path / "src"), str(tmp_path / "dest"), str(tmp_path / "tables"),
                          client=dask_client, secret=SECRET)

    manifest, quarantine, uid_map = result.manifest(), result.quarantine(), result.uid_map()
    index = result.index()
    assert len(manifest) == len(files) and (manifest["status"] == "written").sum() == 6
    assert manifest["output_size"].dtype == pd.Int64Dtype() and manifest["output_size"].isna().sum() == 3
    assert quarantine["reason"].value_counts().to_dict() == result.quarantine_reasons
    assert set(index["key"]) == set(manifest["output_key"].dropna())
    assert set(index["modality"]) == {"CT"} and index["rows"].tolist() == [128] * 6
    assert set(uid_map["new_uid"]) >= set(index["sop_uid"])
    assert result.run_objects == len(files) and "objects this run" in str(result)


def test_accessors_explain_what_is_missing(tmp_path):
    with pytest.raises(ValueError, match="dry run"):
        _result(dry_run=True).manifest()
    result = _result(dest=str(tmp_path / "dest"), tables=str(tmp_path / "tables"), storage_options=None)
    with pytest.raises(FileNotFoundError, match="no index table"):
        result.index()


def test_text_bars_on_a_pipe_are_one_line_without_cursor_escapes(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    bars = UnitMeter(6, 6144)
    bars.partial({"unit_id": "a", "objects": 2, "source_bytes": 2048})
    bars({"unit_id": "a", "objects": 3, "source_bytes": 3072})
    bars({"unit_id": "b", "objects": 3, "source_bytes": 3072})
    bars.close()
    shown = stream.getvalue()
    assert "\x1b" not in shown and "IProgress" not in shown
    last = shown.rsplit("\r", 1)[-1]
    assert "6/6" in last and "6.0 KiB of 6.0 KiB" in last


def test_progress_in_a_kernel_is_a_widget_or_clean_text():
    """In a Jupyter kernel: widgets with ipywidgets; without, text with no IProgress warning or escapes."""
    nbformat = pytest.importorskip("nbformat")
    from nbclient import NotebookClient

    updates = ('bars({"unit_id": "a", "objects": 3, "source_bytes": 3000})\n'
               'bars.close()')
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("from pipeline.console import UnitMeter\n"
                                  f"bars = UnitMeter(3, 3000)\n{updates}"),
        nbformat.v4.new_code_cell('import sys\nsys.modules["ipywidgets"] = None  # as if not installed\n'
                                  f"bars = UnitMeter(3, 3000)\n{updates}"),
    ])
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(Path(__file__).parents[1])}}).execute()
    widget, text = (cell.outputs for cell in nb.cells)
    assert [o["output_type"] for o in widget] == ["display_data", "display_data"]
    assert all("application/vnd.jupyter.widget-view+json" in o["data"] for o in widget)
    shown = "".join(o.get("text", "") for o in text)
    assert [o["output_type"] for o in text] == ["stream"] * len(text) and "3/3" in shown
    assert "\x1b" not in shown and "IProgress" not in shown and "Warning" not in shown
