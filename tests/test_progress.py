"""Progress for every stage: a live line on a terminal, plain lines every few seconds in a pipe, and no
stretch of silence long enough to make a person wonder whether the command hangs."""

from __future__ import annotations

import io
import logging
import re
import sys
import time

import fsspec
import pytest
from samples import SECRET, study_objects, write_tree
from test_cli_conventions import CLI, _env

from benchmarks.first_feedback import STAGES, watch
from pipeline import console
from pipeline.console import logging_to_stderr, stage
from pipeline.deid.keys import SECRET_ENV
from pipeline.listing import list_objects

# The longest a terminal may stay unchanged during a run: generous, for a loaded 2-core machine (the
# measured worst is about 1 s there), yet well under the 6-10 s of silence there was before live lines.
MAX_SILENCE = 5.0


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so what a person would see is drawn into it."""

    def isatty(self) -> bool:
        return True


def _until(shown, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not shown():
        assert time.monotonic() < deadline, "never shown"
        time.sleep(0.05)


def test_a_listing_shows_its_count_so_far_on_a_terminal(tmp_path, monkeypatch):
    write_tree(tmp_path / "src", study_objects(2, 3, seed="live"))
    screen = _Terminal()
    monkeypatch.setattr(sys, "stderr", screen)
    with logging_to_stderr(logging.INFO), stage("listing SOURCE"):
        listing = list_objects(str(tmp_path / "src"))
        _until(lambda: "6 objects so far" in screen.getvalue())  # the stage is held open for one redraw
    shown = screen.getvalue()
    assert listing.num_rows == 6
    assert re.search(r"\rlisting SOURCE\.\.\. \d+\.\d s, 6 objects so far", shown), shown
    # Cleared when the stage ends, before anything else is said: no stale line stays on the screen.
    cleared = r"so far\r +\r(\S+ INFO listing SOURCE: done in [\d.]+ s \(6 objects\)\n)?$"
    assert re.search(cleared, shown), shown


def test_a_listing_in_a_pipe_says_its_count_in_plain_lines(tmp_path, monkeypatch):
    write_tree(tmp_path / "src", study_objects(2, 3, seed="pipe"))
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    monkeypatch.setattr(console, "LOG_EVERY", 0.3)
    with logging_to_stderr(logging.INFO), stage("listing SOURCE"):
        list_objects(str(tmp_path / "src"))
        _until(lambda: "6 objects so far" in log_file.getvalue())
    lines = log_file.getvalue().splitlines()
    assert lines[0].endswith("INFO listing SOURCE...")
    assert re.fullmatch(r"\d\d:\d\d:\d\d INFO listing SOURCE\.\.\. \d+\.\d s, 6 objects so far", lines[1])
    assert "\r" not in log_file.getvalue() and "\x1b" not in log_file.getvalue()


def test_without_progress_a_pipe_gets_only_the_stage_lines(tmp_path, monkeypatch):
    write_tree(tmp_path / "src", study_objects(1, 2, seed="quiet"))
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    monkeypatch.setattr(console, "LOG_EVERY", 0.1)
    with logging_to_stderr(logging.INFO, progress=False), stage("listing SOURCE"):
        list_objects(str(tmp_path / "src"))
        time.sleep(0.5)
    assert log_file.getvalue().count("\n") == 1 and "so far" not in log_file.getvalue()


def test_a_listing_through_the_cluster_counts_each_object_once(s3_server, s3_bucket, dask_client,
                                                               monkeypatch):
    """Deep enough that the driver lists the top levels and the cluster's tasks the rest."""
    options = s3_server["storage_options"]
    fs = fsspec.filesystem("s3", **options)
    keys = [f"{s3_bucket}/top.dcm"] + [f"{s3_bucket}/p{i}/q{j}/r{k}/o{n}.dcm" for i in range(2)
                                        for j in range(2) for k in range(2) for n in range(3)]
    fs.pipe({key: b"x" for key in keys})
    log_file = io.StringIO()
    monkeypatch.setattr(sys, "stderr", log_file)
    with logging_to_stderr(logging.DEBUG), stage("listing SOURCE"):
        listing = list_objects(f"s3://{s3_bucket}", options, client=dask_client)
    assert listing.num_rows == len(keys) == 25
    assert "listing SOURCE: done in " in log_file.getvalue() and "(25 objects)" in log_file.getvalue()


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "pipe"])
def test_a_run_is_never_silent_for_long(tmp_path, terminal):
    """The whole command on an embedded cluster, as a person runs it: every stage shows, the cluster's
    start is a live line on a terminal and a line before and after in a pipe, finalize has a meter."""
    write_tree(tmp_path / "src", study_objects(3, 10, seed="live"))
    argv = [*CLI, "run", str(tmp_path / "src"), str(tmp_path / "dest"), "--tables", str(tmp_path / "tables"),
            "--workers", "2"]  # a cluster, which a job this small would not start by itself
    timeline = watch(argv, _env(**{SECRET_ENV: SECRET.decode()}), terminal=terminal, timeout=500)
    text = timeline.text
    assert timeline.code == 0, text
    for name, marker in STAGES:
        assert timeline.first(marker) is not None, f"{name}: {marker!r} never shown:\n{text}"
    silence, before = timeline.longest_silence()
    if terminal:
        assert silence < MAX_SILENCE, f"{silence:.1f} s of silence after {before!r}"
        assert re.search(r"\rdicom-deid run: starting\.\.\. \d+\.\d s", text), text
        assert re.search(r"\rstarting a local Dask cluster of \d+ workers\.\.\. \d+\.\d s", text), text
        assert re.search(r"\rfinalize parts: 100%\|[^\r]*\| \d+/\d+ ", text), text
    else:
        assert "\r" not in text and "\x1b" not in text
        lines = text.splitlines()
        starting = next(i for i, line in enumerate(lines) if "INFO starting a local Dask cluster" in line)
        ready = next(i for i, line in enumerate(lines) if "INFO Dask dashboard: " in line)
        # A line before and after the cluster's start, and between them only lines about it.
        assert starting < ready and all("a local Dask cluster" in line for line in lines[starting:ready])
        assert re.search(r"INFO finalize: (\d+)/\1 parts \(100%\)", text), text
        assert re.search(r"INFO de-identify: 30 objects \([\d.]+ [KM]iB\) to do", text), text


def test_a_usage_error_on_a_terminal_stands_alone(tmp_path):
    """The live line shown while the command loads is cleared before argparse speaks."""
    timeline = watch([*CLI, "run", "--bogus"], _env(), terminal=True, timeout=120)
    assert timeline.code == 2
    before, _, after = timeline.text.partition("dicom-deid run: error: unrecognized arguments: --bogus")
    assert after and before.rsplit("\r", 1)[-1].strip() == "", timeline.text


def test_help_on_a_terminal_shows_no_live_line():
    timeline = watch([*CLI, "run", "--help"], _env(), terminal=True, timeout=120)
    assert timeline.code == 0 and "usage: dicom-deid run" in timeline.text
    assert "starting..." not in timeline.text
