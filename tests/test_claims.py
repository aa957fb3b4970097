"""Claims of output keys on local disk: hard links to a journal that names each holder, no inode apiece."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from samples import SECRET, study_objects, tree, write_tree

import pipeline.outputs as outputs
from pipeline.deid import Profile
from pipeline.deid.keys import SECRET_ENV
from pipeline.execute import Settings, Unit, run_unit
from pipeline.secret import fingerprint


@pytest.fixture(autouse=True)
def _own_secret(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET.decode())


def _unit(tmp_path: Path, files: dict[str, bytes], name: str = "run", unit_id: str = "u-claims") -> Settings:
    write_tree(tmp_path / "src", files)
    rows = [{"url": (tmp_path / "src" / n).as_uri(), "size": len(d), "duplicate_of": None}
            for n, d in files.items()]
    settings = Settings(str(tmp_path / name / "dest"), str(tmp_path / name / "tables"), Profile(),
                        fingerprint(SECRET))
    run_unit(Unit(unit_id, rows), settings)
    return settings


def _written(settings: Settings) -> dict[str, str]:
    """Output key -> source URL, as the unit's manifest part says."""
    rows = pq.read_table(Path(settings.tables, "manifest", "parts")).to_pylist()
    return {r["output_key"]: r["source_url"] for r in rows if r["status"] == "written"}


def _claims(settings: Settings) -> dict[str, Path]:
    root = Path(settings.tables, "claims")
    return {str(p.relative_to(root))[:-len(".url")]: p for p in root.rglob("*.url")}


def _holder(claim: Path, key: str) -> str | None:
    """The first line for `key` in the journal a claim is linked to."""
    for line in claim.read_text().splitlines():
        claimed, url = json.loads(line)
        if claimed == key:
            return url
    return None


def test_claims_are_hard_links_to_one_journal_whose_lines_name_each_holder(tmp_path):
    settings = _unit(tmp_path, study_objects(2, 3))
    written, claims = _written(settings), _claims(settings)
    assert set(claims) == set(written) and len(written) == 6
    journals = list(Path(settings.tables, "claims").glob("*.journal"))
    assert [p.name for p in journals] == ["u-claims.0.journal"]
    inode = journals[0].stat().st_ino
    assert all(not p.is_symlink() and p.stat().st_ino == inode for p in claims.values())  # no inode apiece
    assert {key: _holder(claims[key], key) for key in claims} == written


def test_a_full_journal_makes_way_for_the_next(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "JOURNAL_LINES", 2)
    settings = _unit(tmp_path, study_objects(1, 5))
    claims, written = _claims(settings), _written(settings)
    assert sorted(p.name for p in Path(settings.tables, "claims").glob("*.journal")) == [
        f"u-claims.{n}.journal" for n in range(3)]
    assert {key: _holder(claims[key], key) for key in claims} == written


def test_a_rerun_after_a_killed_attempt_writes_the_same_outputs_in_a_journal_of_its_own(tmp_path):
    files = study_objects(1, 3)
    reference = _unit(tmp_path, files, "reference")
    settings = _unit(tmp_path, files, "killed")
    # What a killed attempt leaves: its claims and journal, one output cut short, no parts, no marker.
    key = sorted(_written(settings))[0]
    output = Path(settings.dest, key)
    output.write_bytes(output.read_bytes()[:100])
    for leftover in ("units", "manifest", "index", "uid_map", "actions", "quarantine"):
        shutil.rmtree(Path(settings.tables, leftover), ignore_errors=True)

    run_unit(Unit("u-claims", [{"url": (tmp_path / "src" / n).as_uri(), "size": len(d), "duplicate_of": None}
                               for n, d in files.items()]), settings)
    assert tree(Path(settings.dest)) == tree(Path(reference.dest))
    assert _written(settings) == _written(reference)
    journals = sorted(p.name for p in Path(settings.tables, "claims").glob("*.journal"))
    assert journals == ["u-claims.0.journal", "u-claims.1.journal"]  # the killed attempt's stays its own


@pytest.mark.parametrize("kind", ["symlink", "file"])
def test_older_jobs_claims_still_hold_their_keys(tmp_path, kind):
    """Claims of earlier versions: a symbolic link whose target is the URL, or a file holding it."""
    files = study_objects(1, 2)
    first = _unit(tmp_path, files, "first")
    keys = sorted(_written(first))
    older = tmp_path / "older"
    mine = _written(first)[keys[0]]
    for key, url in ((keys[0], mine), (keys[1], "file:///elsewhere/other.dcm")):
        claim = older / "tables" / "claims" / f"{key}.url"
        claim.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(url, claim) if kind == "symlink" else claim.write_text(url)

    settings = _unit(tmp_path, files, "older")
    assert set(_written(settings)) == {keys[0]}  # its own earlier claim: no conflict
    quarantined = pq.read_table(Path(settings.tables, "quarantine", "parts")).to_pylist()
    assert [(q["reason"], q["detail"]) for q in quarantined] == [
        ("duplicate-sop-instance", "same output key as file:///elsewhere/other.dcm, which is kept")]


def test_a_file_system_without_hard_links_gets_symbolic_links(tmp_path, monkeypatch):
    def refused(*args):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(outputs.os, "link", refused)
    settings = _unit(tmp_path, study_objects(1, 3))
    claims, written = _claims(settings), _written(settings)
    assert set(claims) == set(written)
    assert {key: os.readlink(claim) for key, claim in claims.items()} == written


def test_a_journal_holds_one_line_per_key_so_a_second_claimant_names_the_first(tmp_path):
    """Two copies of one object in one unit: the second's claim fails and names the first as holder; its
    line goes to a journal of its own, never beside the holder's line for the same key."""
    data = next(iter(study_objects(1, 1).values()))
    settings = _unit(tmp_path, {"a/first.dcm": data, "b/second.dcm": data})
    (key, holder), = _written(settings).items()
    assert holder.endswith("a/first.dcm")
    quarantined = pq.read_table(Path(settings.tables, "quarantine", "parts")).to_pylist()
    assert [q["detail"] for q in quarantined] == [f"same output key as {holder}, which is kept"]
    for journal in Path(settings.tables, "claims").glob("*.journal"):
        keys = [json.loads(line)[0] for line in journal.read_text().splitlines()]
        assert len(keys) == len(set(keys)), journal.name
    assert _holder(_claims(settings)[key], key) == holder


def test_a_journal_line_is_found_by_its_key_alone():
    """The holder is the first whole line for the key: not a key it merely starts, not a cut line."""
    lines = [json.dumps([f"s/r/{i}.dcm", f"file:///src/{i}.dcm"]) for i in range(3000)]
    text = "\n".join(lines) + "\n" + json.dumps(["s/r/7.dcm", "file:///later"]) + "\n" + '["s/r/x.dcm", "fi'
    assert outputs._journal_holder(text, "s/r/7.dcm") == "file:///src/7.dcm"  # the first line for it
    assert outputs._journal_holder(text, "s/r/2999.dcm") == "file:///src/2999.dcm"
    assert outputs._journal_holder(text, "s/r/1.dc") == ""  # a prefix of keys held, held by nobody
    assert outputs._journal_holder(text, "s/r/x.dcm") == ""  # its line was cut short by a killed writer
    assert outputs._journal_holder('["a", "u"]', "a") == "u"  # a last line without its newline
