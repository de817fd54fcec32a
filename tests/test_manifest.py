"""The manifest's sorted, partitioned state: resume lookups part by part, streaming compaction, and the
conditional switch of `manifest.json` (in a folder and on S3)."""

from __future__ import annotations

import random
from datetime import datetime, timezone

import pytest

from jobs.batch import manifest
from jobs.batch.manifest import (
    INDEX_KEY,
    MANIFEST_SCHEMA,
    IndexChanged,
    StateCursor,
    compact,
    read_index,
    read_manifest_rows,
    run_part_key,
    uncompacted_runs,
    write_rows,
)
from storage.objects import Storage


@pytest.fixture(params=["folder", "s3"])
def target(request, tmp_path) -> Storage:
    if request.param == "folder":
        return Storage(str(tmp_path / "out"))
    return Storage(f"s3://photos/manifest-{tmp_path.name}", request.getfixturevalue("s3_endpoint"))


def row(key: str, run_id: str, status: str = "blurred") -> dict:
    finished = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return dict.fromkeys(MANIFEST_SCHEMA.names) | {
        "key": key,
        "status": status,
        "run_id": run_id,
        "etag": f"{run_id}-{key}",
        "finished_at": finished,
    }


def write_run(target: Storage, run_id: str, keys: list[str], block_rows: int) -> None:
    """A run's done rows as the job writes them: one part per block of its sorted listing."""
    keys = sorted(keys)
    for number, start in enumerate(range(0, len(keys), block_rows)):
        block = [row(k, run_id) for k in keys[start : start + block_rows]]
        random.Random(number).shuffle(block)  # rows come back in any order; parts are sorted
        write_rows(target, run_part_key(run_id, "part", number), block)


def test_runs_compact_into_a_sorted_state_in_parts_and_the_latest_row_of_each_key_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(manifest, "STATE_PART_ROWS", 7)
    target = Storage(str(tmp_path))
    keys = [f"cam{c}/{i:03d}.jpg" for c in range(3) for i in range(20)]
    write_run(target, "20260101T000000Z-aaaaaa", keys[:40], block_rows=6)
    index = compact(target, read_index(target), uncompacted_runs(target, read_index(target)))
    assert [p["rows"] for p in index["parts"]] == [7, 7, 7, 7, 7, 5]
    write_run(target, "20260102T000000Z-bbbbbb", keys[30:], block_rows=4)  # 10 redone, 20 new
    write_run(target, "20260103T000000Z-cccccc", keys[35:37], block_rows=4)  # killed early
    assert uncompacted_runs(target, index) == ["20260102T000000Z-bbbbbb", "20260103T000000Z-cccccc"]
    before = read_manifest_rows(target)  # the state merged with the runs not compacted yet

    index = compact(target, index, uncompacted_runs(target, index))
    assert not uncompacted_runs(target, index)
    rows = read_manifest_rows(target)
    assert rows == before
    assert [r["key"] for r in rows] == sorted(keys)
    expected = {k: "20260101T000000Z-aaaaaa" for k in keys[:30]}
    expected |= {k: "20260102T000000Z-bbbbbb" for k in keys[30:]}
    expected |= {k: "20260103T000000Z-cccccc" for k in keys[35:37]}
    assert {r["key"]: r["run_id"] for r in rows} == expected
    assert index["rows"] == 60 and len(index["parts"]) == 9
    for part in index["parts"]:  # each part holds its key range, in order
        part_keys = [r["key"] for r in manifest.read_rows(target, part["key"])]
        assert part_keys == sorted(part_keys)
        assert (part_keys[0], part_keys[-1]) == (part["first"], part["last"])
    generations = {p["key"].split("/")[2] for p in index["parts"]}
    assert sorted(p.name for p in (tmp_path / "_streetblur" / "manifest").iterdir()) == sorted(generations)

    cursor = StateCursor(target, index)  # resume lookups, in key order, one part in memory at a time
    asked = ["cam0/000.jpg", "cam0/005.jpg", "cam0/005x.jpg", "cam1/019.jpg", "cam2/019.jpg", "zzz.jpg"]
    found = [cursor.seek(k) for k in asked]
    assert [r and r["run_id"] for r in found] == [
        "20260101T000000Z-aaaaaa",
        "20260101T000000Z-aaaaaa",
        None,
        "20260102T000000Z-bbbbbb",
        "20260102T000000Z-bbbbbb",
        None,
    ]


def test_a_run_with_nothing_done_leaves_the_state_as_it_is(tmp_path):
    target = Storage(str(tmp_path))
    write_run(target, "20260101T000000Z-aaaaaa", ["a.jpg", "b.jpg"], block_rows=2)
    index = compact(target, read_index(target), ["20260101T000000Z-aaaaaa"])
    write_rows(target, run_part_key("20260102T000000Z-bbbbbb", "skipped", 0), [row("a.jpg", "x", "skipped")])
    after = compact(target, index, ["20260102T000000Z-bbbbbb"])
    assert after["parts"] == index["parts"] and after["runs"][-1] == "20260102T000000Z-bbbbbb"


def test_parts_out_of_key_order_are_refused_not_merged_wrongly(tmp_path):
    target = Storage(str(tmp_path))
    write_rows(target, run_part_key("r", "part", 0), [row("b.jpg", "r")])
    write_rows(target, run_part_key("r", "part", 1), [row("a.jpg", "r")])
    with pytest.raises(RuntimeError, match="not in key order"):
        compact(target, read_index(target), ["r"])
    assert not read_index(target)["runs"]  # nothing switched


def test_an_index_switched_by_another_run_since_it_was_read_is_not_switched_again(target):
    """`manifest.json` is replaced only if it is still the version the run read (S3: `If-Match` its
    ETag): else `IndexChanged`, and the other run's state stays whole."""
    write_run(target, "20260101T000000Z-aaaaaa", ["a.jpg"], block_rows=1)
    read_by_both = read_index(target)
    write_run(target, "20260101T000001Z-bbbbbb", ["b.jpg"], block_rows=1)
    current = compact(target, read_by_both, ["20260101T000000Z-aaaaaa", "20260101T000001Z-bbbbbb"])
    switched = target.read(INDEX_KEY)
    write_run(target, "20260102T000000Z-cccccc", ["c.jpg"], block_rows=1)
    with pytest.raises(IndexChanged, match="changed since this run read it"):
        compact(target, read_by_both, ["20260102T000000Z-cccccc"])  # it did not see the switch
    assert target.read(INDEX_KEY) == switched
    for part in current["parts"]:  # nothing deleted
        target.read(part["key"])

    write_run(target, "20260101T000000Z-dddddd", ["d.jpg"], block_rows=1)
    stale = read_index(target)
    compact(target, current, ["20260101T000000Z-dddddd"])  # the index as it is: switched
    write_rows(target, run_part_key("20260102T000000Z-eeeeee", "skipped", 0), [row("a.jpg", "x", "skipped")])
    with pytest.raises(IndexChanged):  # a run with nothing done switches conditionally too
        compact(target, stale, ["20260102T000000Z-eeeeee"])


def test_a_first_index_is_created_only_if_no_other_run_created_one_meanwhile(target):
    """With no `manifest.json` read, the switch creates it only if there is still none (S3:
    `If-None-Match: *`)."""
    write_run(target, "20260101T000000Z-aaaaaa", ["a.jpg"], block_rows=1)
    empty = read_index(target)
    assert empty["version"] is None
    created = compact(target, empty, ["20260101T000000Z-aaaaaa"])
    write_run(target, "20260102T000000Z-bbbbbb", ["b.jpg"], block_rows=1)
    with pytest.raises(IndexChanged):
        compact(target, empty, ["20260102T000000Z-bbbbbb"])
    assert read_index(target) == created


def test_proposals_round_trip_and_parts_written_before_the_column_read_as_none_proposed(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Storage(str(tmp_path))
    proposal = {"class": "face", "score": 0.125, "box": [1.0, 2.0, 30.0, 40.0], "stage": "verifier"}
    write_rows(
        target,
        run_part_key("20260102T000000Z-bbbbbb", "part", 0),
        [row("new.jpg", "r") | {"proposals": [proposal]}],
    )
    # A part as a job wrote it before `proposals` was appended to the schema
    old_schema = pa.schema([f for f in MANIFEST_SCHEMA if f.name != "proposals"])
    old_row = {k: v for k, v in row("old.jpg", "20260101T000000Z-aaaaaa").items() if k != "proposals"}
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([old_row], schema=old_schema), buffer)
    target.write(run_part_key("20260101T000000Z-aaaaaa", "part", 0), buffer.getvalue())
    # appended after the columns it found: those keep their places
    assert MANIFEST_SCHEMA.names.index("proposals") == MANIFEST_SCHEMA.names.index("finished_at") + 1

    index = compact(target, read_index(target), uncompacted_runs(target, read_index(target)))
    rows = {r["key"]: r for r in read_manifest_rows(target)}
    assert rows["old.jpg"]["proposals"] == []
    assert rows["new.jpg"]["proposals"] == [proposal]
    assert index["parts"]
