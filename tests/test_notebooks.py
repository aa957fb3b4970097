"""The notebooks run top to bottom (the S3 one against moto), and none is committed with outputs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from samples import SECRET, poison_objects, study_objects

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
papermill = pytest.importorskip("papermill", reason="the notebook tests need the [notebook] extra")


def _execute(name: str, out: Path, **parameters) -> tuple[dict, float]:
    started = time.perf_counter()
    papermill.execute_notebook(str(NOTEBOOKS / name), str(out), parameters=parameters, cwd=str(out.parent),
                               kernel_name="python3", progress_bar=False, execution_timeout=300)
    return json.loads(out.read_text()), time.perf_counter() - started


def _outputs(nb: dict) -> list[dict]:
    return [output for cell in nb["cells"] if cell["cell_type"] == "code" for output in cell["outputs"]]


def _joined(text: str | list[str]) -> str:
    return "".join(text) if isinstance(text, list) else text


def _text(output: dict) -> str:
    return _joined(output.get("text") or output.get("data", {}).get("text/plain", ""))


def test_committed_notebooks_have_no_outputs():
    notebooks = sorted(NOTEBOOKS.glob("*.ipynb"))
    assert {p.name for p in notebooks} >= {"quickstart.ipynb", "s3_job.ipynb"}
    for path in notebooks:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, \
                    f"{path.name} has outputs: clear them before committing"
        assert "widgets" not in nb["metadata"], f"{path.name} holds widget state"


def test_quickstart_runs_top_to_bottom(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebook's temporary folder goes with the test's
    monkeypatch.delenv("DICOM_DEID_SECRET", raising=False)
    nb, seconds = _execute("quickstart.ipynb", tmp_path / "quickstart.ipynb")
    print(f"quickstart executed in {seconds:.1f} s")

    outputs = _outputs(nb)
    assert not [o for o in outputs if o["output_type"] == "error"]
    shown = "\n".join(_text(o) for o in outputs)
    assert "RunResult: OK" in shown and "94 written, 82 quarantined" in shown  # 24 burned-in-annotation
    assert "IProgress" not in shown and "\x1b" not in shown and "Warning" not in shown
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(widgets) == 4  # headers read, the objects and bytes de-identified, the parts finalized
    pages = [_joined(o.get("data", {}).get("text/html", "")) for o in outputs]
    assert any("<strong>RunResult</strong>" in page for page in pages)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 2  # the run, and actions per attribute
    assert len(list(tmp_path.rglob("deidentified/**/*.dcm"))) == 94


def _upload(s3_server: dict, bucket: str) -> dict[str, bytes]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"])
    files = study_objects(2, 3, seed="report")
    files["notes.txt"] = poison_objects()["poison/notes.txt"][0]
    fs.pipe({f"{bucket}/incoming/{name}": data for name, data in files.items()})
    return files


def test_s3_job_leaves_its_report(tmp_path, monkeypatch, s3_server, s3_bucket):
    import s3fs

    files = _upload(s3_server, s3_bucket)
    monkeypatch.setenv("DICOM_DEID_SECRET", SECRET.decode())  # the kernel and its workers inherit it
    report = tmp_path / "report.ipynb"
    nb, seconds = _execute("s3_job.ipynb", report, source=f"s3://{s3_bucket}/incoming",
                           dest=f"s3://{s3_bucket}/deidentified", tables=f"s3://{s3_bucket}/private/tables",
                           endpoint_url=s3_server["endpoint_url"], n_workers=2,
                           profile={"retain_long_modified_dates": True}, max_error_rate=0.5)
    print(f"s3_job executed in {seconds:.1f} s")

    assert "injected-parameters" in report.read_text()
    shown = "\n".join(_text(o) for o in _outputs(nb))
    assert f"{len(files)}: 6 written, 1 quarantined" in shown and "not-dicom" in shown
    assert sum("image/png" in o.get("data", {}) for o in _outputs(nb)) == 1
    assert SECRET.decode() not in report.read_text()
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server["storage_options"])
    assert len([k for k in fs.find(f"{s3_bucket}/deidentified") if k.endswith(".dcm")]) == 6


def test_s3_job_refuses_credentials_in_its_parameters(tmp_path):
    with pytest.raises(papermill.PapermillExecutionError, match="parameters are saved in this report"):
        _execute("s3_job.ipynb", tmp_path / "report.ipynb", storage_options={"secret": "s3cr3t-value"})
