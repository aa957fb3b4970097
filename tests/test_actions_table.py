"""The per-run table of what happened to each attribute, after a real pipeline run."""

from __future__ import annotations

import pyarrow.parquet as pq
from samples import SECRET, write_tree
from test_safety_net import ct_with_unlisted

import pipeline


def test_each_run_says_what_happened_to_each_attribute(tmp_path, dask_client):
    write_tree(tmp_path / "src", {"a/one.dcm": ct_with_unlisted(), "b/bad.dcm": b"not dicom"})
    paths = [str(tmp_path / name) for name in ("src", "dest", "tables")]
    result = pipeline.run(*paths, client=dask_client, secret=SECRET)
    stored = pq.read_table(tmp_path / "tables" / "runs" / "000001" / "actions.parquet")
    assert stored.column_names == ["attribute", "tag", "action", "source", "count"]

    actions = result.actions()
    found = {tuple(row[:4]): row[4] for row in actions[["attribute", "tag", "action", "source", "count"]]
             .itertuples(index=False)}
    assert found[("PatientName", "(0010,0010)", "emptied", "table")] == 1  # the written object only
    assert found[("EvaluatorName", "(0014,2006)", "emptied", "safety-net")] == 2  # top level and depth 3
    assert found[("FindingsGroupUIDTrial", "(0040,A021)", "new-uid", "safety-net")] == 1
    assert set(actions["run"]) == {1}

    # A later run adds its own table; the first run's stays as it was.
    write_tree(tmp_path / "src", {"c/two.dcm": ct_with_unlisted(sop_uid="1.2.826.0.1.3680043.99.2"),
                                  "d/three.dcm": ct_with_unlisted(sop_uid="1.2.826.0.1.3680043.99.3")})
    later = pipeline.run(*paths, client=dask_client, secret=SECRET)
    second = later.actions(run=2)
    emptied = second[(second["attribute"] == "EvaluatorName") & (second["source"] == "safety-net")]
    assert emptied["count"].tolist() == [4] and emptied["action"].tolist() == ["emptied"]
    assert second["count"].sum() == 2 * result.actions(run=1)["count"].sum()  # the same object, twice
    assert later.actions(run=1).equals(result.actions(run=1))
    assert set(later.actions()["run"]) == {1, 2}


def test_a_units_counts_are_summed_whether_objects_count_alike_or_not():
    """Equal counts in a row are added once times their number: every object must still count once."""
    from collections import Counter

    from pipeline.actions import unit_rows

    drop, empty = (0x00100010, "Z", "empty"), (0x00081030, "X", "drop")
    alike, other = Counter({drop: 1}), Counter({drop: 2, empty: 1})
    rows = unit_rows([alike, Counter(alike), other, alike, Counter({**alike}), Counter(alike)], "u-1")
    counts = {row["tag"]: row["count"] for row in rows}
    assert counts == {"(0010,0010)": 5 + 2, "(0008,1030)": 1}
    assert {row["unit_id"] for row in rows} == {"u-1"}
