"""Stage 1: listing local trees, S3 prefixes (split in parallel) and listing files."""

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import s3fs

from pipeline.listing import LISTING_SCHEMA, list_objects, split_prefixes
from pipeline.storage import filesystem


def _tree(root: Path) -> dict[str, int]:
    """A small tree of files at several depths, with an empty directory; returns url -> size."""
    files = {"a.dcm": 3, "x/b.dcm": 5, "x/y/c.dcm": 7, "x/y/z/d": 11, "w/e.dcm": 0}
    for name, size in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"\0" * size)
    (root / "empty-dir").mkdir()
    return {f"file://{root / name}": size for name, size in files.items()}


def _as_dict(table: pa.Table) -> dict[str, int]:
    return dict(zip(table["url"].to_pylist(), table["size"].to_pylist(), strict=True))


def test_local_tree_lists_every_file_sorted_without_directories(tmp_path):
    expected = _tree(tmp_path)
    table = list_objects(str(tmp_path))
    assert table.schema == LISTING_SCHEMA
    assert _as_dict(table) == expected
    assert table["url"].to_pylist() == sorted(expected)


def test_file_url_and_single_file_source(tmp_path):
    expected = _tree(tmp_path)
    assert _as_dict(list_objects(f"file://{tmp_path}/x")) == {
        url: size for url, size in expected.items() if "/x/" in url}
    single = f"file://{tmp_path}/x/b.dcm"
    assert _as_dict(list_objects(single)) == {single: 5}


def test_missing_source_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_objects(str(tmp_path / "nothing-here"))


def _fill_bucket(s3_server: dict, bucket: str) -> dict[str, int]:
    """Keys at the top, in many sub-prefixes and nested below them, plus a zero-byte "folder/" marker."""
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    keys = {f"archive/top{i}.dcm": i for i in range(3)}
    keys |= {f"archive/p{p:02d}/s{s}/o{o}.dcm": p * 100 + s * 10 + o + 1
             for p in range(12) for s in range(3) for o in range(2)}
    for key, size in keys.items():
        fs.pipe(f"{bucket}/{key}", b"x" * size)
    fs.pipe(f"{bucket}/archive/p00/", b"")
    fs.pipe(f"{bucket}/elsewhere/not-mine.dcm", b"x")
    return {f"s3://{bucket}/{key}": size for key, size in keys.items()}


def test_s3_prefix_split_lists_everything_exactly_once(s3_server, s3_bucket, dask_client):
    expected = _fill_bucket(s3_server, s3_bucket)
    options = s3_server["storage_options"]
    fs, path = filesystem(f"s3://{s3_bucket}/archive", options)
    found, prefixes = split_prefixes(fs, path, target=20)
    # Two levels down: 12 study prefixes would not reach 20, so it descends to the 36 series prefixes.
    assert len(prefixes) == 36
    assert sorted(found["url"].to_pylist()) == sorted(u for u in expected if "/top" in u)

    table = list_objects(f"s3://{s3_bucket}/archive", options, client=dask_client)
    assert table.schema == LISTING_SCHEMA
    assert table["url"].to_pylist() == sorted(expected)  # sorted, and each object exactly once
    assert _as_dict(table) == expected
    assert _as_dict(list_objects(f"s3://{s3_bucket}/archive/", options)) == expected  # no client: threads


def test_csv_listing_file_with_urls_and_duplicates(tmp_path):
    expected = _tree(tmp_path)
    listing = tmp_path / "listing.csv"
    urls = sorted(expected, reverse=True)
    pacsv.write_csv(pa.table({"url": urls + urls[:1]}), listing)
    table = list_objects(str(listing))
    assert table["url"].to_pylist() == sorted(expected)
    assert table["size"].null_count == len(expected)  # sizes unknown until scanned


def test_parquet_s3_inventory_listing(tmp_path, s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    inventory = pa.table({"bucket": [s3_bucket] * 3, "key": ["b/2.dcm", "a/1.dcm", "a/"],
                          "size": [20, 10, 0], "storage_class": ["STANDARD"] * 3})
    pq.write_table(inventory, tmp_path / "inventory.parquet")
    fs.put(str(tmp_path / "inventory.parquet"), f"{s3_bucket}/inventory/data.parquet")
    table = list_objects(f"s3://{s3_bucket}/inventory/data.parquet", s3_server["storage_options"])
    assert _as_dict(table) == {f"s3://{s3_bucket}/a/1.dcm": 10, f"s3://{s3_bucket}/b/2.dcm": 20}


def test_csv_s3_inventory_columns(tmp_path):
    listing = tmp_path / "inv.csv"
    listing.write_text("bucket,key,size\nbkt,k/2,5\nbkt,k/1,4\n")
    assert _as_dict(list_objects(str(listing))) == {"s3://bkt/k/1": 4, "s3://bkt/k/2": 5}


def test_listing_file_without_url_columns_is_refused(tmp_path):
    listing = tmp_path / "bad.csv"
    listing.write_text("path,size\n/a,1\n")
    with pytest.raises(ValueError, match="url"):
        list_objects(str(listing))


def test_s3_inventory_manifest_with_csv_data_files(s3_server, s3_bucket):
    """A versioned CSV inventory: header-less, gzip, URL-encoded keys, one delete marker."""
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    rows = [("src", "a/hello+world.dcm", "v2", "true", "false", "10"),
            ("src", "a/b%2Bc.dcm", "v1", "true", "false", "20"),
            ("src", "a/old.dcm", "v1", "false", "false", "30"),
            ("src", "a/deleted.dcm", "v3", "true", "true", "")]
    lines = "".join(",".join(f'"{value}"' for value in row) + "\n" for row in rows)
    fs.pipe(f"{s3_bucket}/inv/data/part-1.csv.gz", gzip.compress(lines.encode()))
    manifest = {"sourceBucket": "src", "destinationBucket": f"arn:aws:s3:::{s3_bucket}", "fileFormat": "CSV",
                "fileSchema": "Bucket, Key, VersionId, IsLatest, IsDeleteMarker, Size",
                "files": [{"key": "inv/data/part-1.csv.gz", "size": 1, "MD5checksum": "x"}]}
    fs.pipe(f"{s3_bucket}/inv/manifest.json", json.dumps(manifest).encode())
    table = list_objects(f"s3://{s3_bucket}/inv/manifest.json", s3_server["storage_options"])
    assert _as_dict(table) == {"s3://src/a/b+c.dcm": 20, "s3://src/a/hello world.dcm": 10}


def test_s3_inventory_manifest_with_parquet_data_files(tmp_path, s3_server, s3_bucket):
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    for part, keys in enumerate((["x/1.dcm", "x/2.dcm"], ["y/3.dcm"])):
        pq.write_table(pa.table({"bucket": ["src"] * len(keys), "key": keys, "size": [7] * len(keys)}),
                       tmp_path / f"{part}.parquet")
        fs.put(str(tmp_path / f"{part}.parquet"), f"{s3_bucket}/inv/data/{part}.parquet")
    manifest = {"destinationBucket": f"arn:aws:s3:::{s3_bucket}", "fileFormat": "Parquet",
                "fileSchema": "message s3.inventory { required binary bucket; required binary key; }",
                "files": [{"key": f"inv/data/{part}.parquet"} for part in (0, 1)]}
    fs.pipe(f"{s3_bucket}/inv/manifest.json", json.dumps(manifest).encode())
    table = list_objects(f"s3://{s3_bucket}/inv/manifest.json", s3_server["storage_options"])
    assert table["url"].to_pylist() == ["s3://src/x/1.dcm", "s3://src/x/2.dcm", "s3://src/y/3.dcm"]
