"""`dicom-deid` behaves like a well-made command line: help, versions, one-line mistakes, Ctrl-C, progress."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from samples import PATIENT_ID, PATIENT_NAME, SECRET, study_objects, write_tree

from benchmarks.first_feedback import watch
from pipeline.cli import DEMO_TABLES, PROFILE_HELP, RESUME_HINT, main
from pipeline.console import Meter, logging_to_stderr
from pipeline.deid import FLAGS
from pipeline.deid.keys import SECRET_ENV
from pipeline.filters import selected
from pipeline.secret import SECRET_FILE_ENV

CLI = [sys.executable, "-m", "pipeline.cli"]


@pytest.fixture
def archive(tmp_path):
    write_tree(tmp_path / "src", study_objects(2, 3, seed="conv"))
    (tmp_path / "secret").write_bytes(SECRET + b"\n")
    return tmp_path


def _run_args(archive: Path, client, *extra: str) -> list[str]:
    return ["run", str(archive / "src"), str(archive / "dest"), "--tables", str(archive / "tables"),
            "--secret-file", str(archive / "secret"), "--scheduler", client.scheduler.address, *extra]


def _exit(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code


def _one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (SECRET_ENV, SECRET_FILE_ENV)}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    return env | extra


def test_version(capsys):
    assert _exit(["--version"]) == 0
    assert capsys.readouterr().out.strip().startswith("dicom-deid 0.")


def test_every_option_has_help_and_shows_its_default(capsys):
    assert _exit(["run", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in FLAGS:
        assert f"--{name.replace('_', '-')} {' '.join(PROFILE_HELP[name].split())} (default: off)" in text
    assert "at most N objects in a unit (smaller jobs get smaller units) (default: 1000)" in text
    assert "at most N source bytes in a unit (default: 2147483648)" in text
    assert "log threshold (default: INFO)" in text
    for command in ("scan", "status"):
        assert _exit([command, "--help"]) == 0
        assert "--log-level" in capsys.readouterr().out


def test_a_stray_flag_gets_the_subcommands_usage_in_one_line(capsys):
    assert _exit(["run", "--bogus"]) == 2
    err = _one_line(capsys.readouterr().err)
    assert err.startswith("dicom-deid run: error: unrecognized arguments: --bogus")
    assert "usage: dicom-deid run [SOURCE DEST --tables TABLES]" in err


@pytest.mark.parametrize(("flag", "value"), [("--max-error-rate", "5"), ("--max-unit-objects", "0"),
                                             ("--max-unit-bytes", "lots")])
def test_messages_name_the_flag_not_the_python_argument(capsys, flag, value):
    assert _exit(["run", "SRC", "DEST", flag, value]) == 2
    err = _one_line(capsys.readouterr().err)
    assert f"argument {flag}: " in err and flag.lstrip("-").replace("-", "_") not in err


def test_demo_refuses_tables_without_source(capsys):
    assert main(["run", "--tables", "somewhere"]) == 2
    assert "--tables and --secret-file need SOURCE and DEST" in _one_line(capsys.readouterr().err)


def test_a_listing_file_with_a_wrong_column_is_one_line_before_any_cluster(tmp_path):
    (tmp_path / "list.csv").write_text("path,size\n/x.dcm,10\n")
    done = subprocess.run([*CLI, "scan", str(tmp_path / "list.csv"), "--out", str(tmp_path / "inv.parquet"),
                           "-q"], capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 2
    assert "needs a 'url' column or 'bucket' and 'key' columns, not path, size" in _one_line(done.stderr)


def test_scan_of_a_missing_source_says_so_before_starting_a_cluster(tmp_path):
    done = subprocess.run([*CLI, "scan", str(tmp_path / "missing"), "--out", str(tmp_path / "inv.parquet")],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 2 and "no objects at" in _one_line(done.stderr)
    assert not (tmp_path / "inv.parquet").exists()


def test_a_run_in_a_pipe_logs_plain_stages_and_progress_without_patient_data(archive, capsys, dask_client):
    assert main(_run_args(archive, dask_client)) == 0
    err = capsys.readouterr().err
    for stage in ("listing", "reading the headers of 6 objects", "planning work units",
                  "de-identify: 6/6 objects (100%)", "writing the manifest"):
        assert stage in err, err
    assert "\r" not in err and "\x1b[" not in err
    assert PATIENT_ID not in err and PATIENT_NAME not in err and SECRET.decode() not in err
    assert str(archive / "src") not in err  # a folder name may itself identify a patient


def test_off_a_terminal_a_meter_logs_periodic_plain_lines(capsys):
    with logging_to_stderr(logging.INFO):
        meter = Meter("scan", 4, 4096, every=0)
        for _ in range(3):
            meter.update(1, 1024)
        meter.update(1, 1024)
        meter.close()
    lines = capsys.readouterr().err.splitlines()
    assert "INFO scan: 4 objects (4.0 KiB) to do" in lines[0]
    for n, line in zip((1, 2, 3), lines[1:], strict=False):
        assert f"INFO scan: {n}/4 objects ({n * 25}%), {n}.0 KiB of 4.0 KiB, " in line and "objects/s" in line
        assert " left" in line  # an estimate of the time to go
    assert len(lines) == 5 and "scan: 4/4 objects (100%)" in lines[4] and "done in" in lines[4]


def test_quiet_and_verbose(archive, capsys, dask_client):
    assert main(_run_args(archive, dask_client, "--dry-run", "-q")) == 0
    assert capsys.readouterr().err == ""
    assert main(_run_args(archive, dask_client, "--dry-run", "-v")) == 0
    assert "DEBUG" in capsys.readouterr().err


def test_a_rerun_with_nothing_new_says_so_and_shows_totals_as_totals(archive, capsys, dask_client):
    assert main(_run_args(archive, dask_client)) == 0
    capsys.readouterr()
    assert main(_run_args(archive, dask_client)) == 0
    captured = capsys.readouterr()
    assert "nothing new: every unit was committed by an earlier run" in captured.out
    assert "totals of the job so far" in captured.out and "written: 6" in captured.out
    assert "this run:" not in captured.out and "this run," not in captured.out
    assert "de-identify:" not in captured.err  # no empty meter


def test_dry_run_prints_the_plan_in_human_units(archive, capsys, dask_client):
    assert main(_run_args(archive, dask_client, "--dry-run", "--max-unit-objects", "3")) == 0
    out = capsys.readouterr().out
    assert "dry run: 6 objects (" in out and "KiB) in 2 studies, 2 work units" in out
    assert "would process 6 objects" in out
    assert "by modality:" in out and "CT" in out and "largest studies (of 2):" in out


def test_status_json(archive, capsys, dask_client):
    assert main(_run_args(archive, dask_client, "-q")) == 0
    capsys.readouterr()
    assert main(["status", str(archive / "tables"), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["written"] == 6 and status["finished"] is True and status["units_done"] >= 1


def test_a_different_job_refusal_names_what_differs_never_the_secret(archive, capsys, dask_client):
    assert main(_run_args(archive, dask_client, "-q")) == 0
    (archive / "other-secret").write_text("another-secret-value-0000")
    args = _run_args(archive, dask_client, "-q", "--retain-uids")
    args[args.index("--secret-file") + 1] = str(archive / "other-secret")
    capsys.readouterr()
    assert main(args) == 2
    err = _one_line(capsys.readouterr().err)
    assert "different job (--retain-uids, secret differ)" in err
    assert "another-secret-value" not in err and SECRET.decode() not in err


def test_include_and_exclude_filter_the_source(archive, capsys, dask_client):
    for name in ("README", "LICENSE", "notes/index.csv"):
        (archive / "src" / name).parent.mkdir(exist_ok=True)
        (archive / "src" / name).write_text("not dicom")
    assert main(_run_args(archive, dask_client, "-q", "--exclude", "*", "--include", "*.dcm")) == 0
    assert "written: 6  quarantined: 0" in capsys.readouterr().out


def test_filters_follow_the_aws_cli_order():
    rules = [("exclude", "*"), ("include", "*.dcm"), ("exclude", "old/*")]
    assert selected("a/b/c.dcm", rules) and not selected("README", rules)
    assert not selected("old/x.dcm", rules)
    assert selected("README", [])


def test_scan_warns_that_its_inventory_is_private(archive, capsys, dask_client):
    args = ["scan", str(archive / "src"), "--out", str(archive / "inv.parquet"), "-q",
            "--scheduler", dask_client.scheduler.address]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds Patient IDs: keep it private" in err


def test_a_second_demo_with_another_secret_starts_clean(tmp_path, capsys, monkeypatch, dask_client):
    """An earlier demo (another secret) in the demo folder is replaced, not refused as a different job."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())
    DEMO_TABLES.mkdir(parents=True)
    (DEMO_TABLES / "job.json").write_text(json.dumps({"secret_fingerprint": "an earlier random one"}))
    assert main(["run", "-q"]) == 0  # the session's cluster is the default client
    captured = capsys.readouterr()
    assert "replacing the earlier demo output" in captured.err and "written:" in captured.out


def _until(lines: list[str], text: str, process: subprocess.Popen, limit: float = 300) -> None:
    deadline = time.monotonic() + limit
    while not any(text in line for line in lines):
        assert process.poll() is None and time.monotonic() < deadline, "".join(lines)
        time.sleep(0.1)


def test_ctrl_c_exits_130_with_one_line_on_how_to_resume(archive):
    """Ctrl-C at a terminal reaches the whole process group, here while a small job's units run in the
    command's own process."""
    write_tree(archive / "src", study_objects(4, 20, seed="sigint"))
    process = subprocess.Popen([*CLI, "run", str(archive / "src"), str(archive / "dest"), "--tables",
                                str(archive / "tables")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True, env=_env(**{SECRET_ENV: SECRET.decode()}))
    lines: list[str] = []
    pump = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    pump.start()
    try:
        _until(lines, "running in this process", process)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=120) == 130
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    pump.join(10)
    err = "".join(lines)
    assert err.count(RESUME_HINT) == 1 and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.rstrip("\n").endswith(RESUME_HINT)


def _on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a pseudo-terminal, as a person at a shell sees it."""
    timeline = watch(argv, env, terminal=True)
    return timeline.code, timeline.text


def test_on_a_terminal_progress_is_drawn_as_bars(archive, dask_client):
    code, seen = _on_a_terminal([*CLI, *_run_args(archive, dask_client)], _env())
    assert code == 0, seen
    assert "\r" in seen and "de-identify objects: 100%" in seen and "obj/s" in seen
    assert "listing" in seen and "planning work units" in seen


def test_a_config_file_gives_the_job_and_flags_win(archive, capsys, dask_client):
    config = archive / "job.toml"
    config.write_text(f'source = "{archive / "src"}"\ndest = "{archive / "dest"}"\n'
                      f'tables = "{archive / "tables"}"\nmax_unit_objects = 3\n'
                      "[profile]\nretain_uids = true\n")
    base = ["run", "--config", str(config), "--secret-file", str(archive / "secret"), "-q",
            "--scheduler", dask_client.scheduler.address]
    assert main([*base, "--dry-run"]) == 0
    assert "dry run: 6 objects" in capsys.readouterr().out
    assert main([*base, "--max-unit-objects", "1000"]) == 0
    job = json.loads((archive / "tables" / "job.json").read_text())
    assert job["profile"]["retain_uids"] is True and job["source"] == str(archive / "src")


@pytest.mark.parametrize(("text", "expected"), [
    ("bogus = 1\n", "unknown setting(s) bogus"),
    ('[storage_options]\nkey = "AKIA"\n', "hold credentials (key)"),
    ("source = \n", "is not valid TOML"),
])
def test_a_config_file_mistake_is_one_line(tmp_path, capsys, text, expected):
    (tmp_path / "job.toml").write_text(text)
    assert _exit(["run", "--config", str(tmp_path / "job.toml")]) == 2
    assert expected in _one_line(capsys.readouterr().err)
