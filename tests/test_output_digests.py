"""Outputs are the same bytes, under the same keys, with the same quarantine reasons, as when the digest
list was made: a speed-up or refactoring that changes any output fails here."""

from __future__ import annotations

from digests import DIGESTS, fixed_archive, run_digests
from samples import SECRET

import pipeline


def test_a_fixed_archive_gives_the_stored_outputs_byte_for_byte(tmp_path, dask_client):
    fixed_archive(tmp_path / "source")
    result = pipeline.run(str(tmp_path / "source"), str(tmp_path / "dest"), tables=str(tmp_path / "tables"),
                          client=dask_client, secret=SECRET)
    assert result.ok
    found = run_digests(tmp_path / "source", tmp_path / "dest", tmp_path / "tables")
    stored = DIGESTS.read_text().splitlines()
    assert len(found) == len(stored) == result.objects
    assert [line for line in found if line not in stored] == []  # what changed, if anything, is named
    assert found == stored
