"""The batch job's handling of bad inputs, resumes and refused locations, on local folders (real Ray).

Every `run_job` here shares one in-process local Ray (started by the first run, stopped at the end of
the module), one detector actor and a few real photos, so the module stays fast.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import struct
import threading
import time
import zlib
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

import jobs.batch.actor as actor_module
import jobs.batch.job as job_module
from blurring.config import Config
from detection.detector import DEFAULT_MODEL, model_id
from jobs.batch.actor import ImagePipelineActor
from jobs.batch.job import INPUT_SUFFIXES, JobOptions, check_locations, run_job
from jobs.batch.listing import list_inputs
from jobs.batch.manifest import (
    AUDIT_DIR,
    MANIFEST_SCHEMA,
    ManifestPartWriter,
    compact,
    read_index,
    read_manifest_rows,
    run_part_key,
    summary_key,
    uncompacted_runs,
    write_rows,
)
from jobs.cli.main import main
from jobs.ray_cluster import pool_size
from storage.objects import InvalidKey, Storage, check_key
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Two copies of the default weights under different names, so two model ids (and the runs do not
    see the default weights change if they are retrained meanwhile)."""
    folder = tmp_path_factory.mktemp("weights")
    copies = folder / "model-a.pt", folder / "model-b.pt"
    for copy in copies:
        shutil.copyfile(DEFAULT_MODEL, copy)
    return copies


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """The local Ray that the first `run_job` starts is kept for the module's other runs, then stopped."""
    yield
    import ray

    ray.shutdown()


def options(input_dir: Path, output_dir: Path, model: Path, **changes) -> JobOptions:
    config = Config()
    config = replace(config, detect=replace(config.detect, models=(str(model),)))
    return JobOptions(str(input_dir), str(output_dir), actors=1, batch_size=2, config=config, **changes)


def manifest(output_dir: Path) -> dict[str, dict]:
    """The compacted state of the output's manifest, by key (every run compacted into it)."""
    target = Storage(str(output_dir))
    assert not uncompacted_runs(target, read_index(target))
    return {row["key"]: row for row in read_manifest_rows(target)}


def files_outside(root: Path, output_dir: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` but outside `output_dir`, with its size and modification time."""
    return {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if output_dir not in (p, *p.parents)
    }


def test_bad_keys_in_a_keys_file_become_failed_rows_and_nothing_is_written_outside_the_output(
    tmp_path, models
):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    photo = (SAMPLES / "crowd_0.jpg").read_bytes()
    (source / "crowd.jpg").write_bytes(photo)
    Image.open(SAMPLES / "dashcam_0.jpg").save(source / "anim.gif")
    (source / "noext").write_bytes(photo)
    (source / "dir.jpg").mkdir()  # read_bytes raises IsADirectoryError, whoever runs the tests
    (tmp_path / "x.jpg").write_bytes((SAMPLES / "dashcam_0.jpg").read_bytes())  # beside the input
    absolute = str(tmp_path / "x.jpg")
    keys = ["crowd.jpg", "missing.jpg", "anim.gif", "../x.jpg", absolute, "dir.jpg", "noext", "a//b.jpg"]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text("\n".join([*keys, "", "crowd.jpg"]) + "\n")  # a blank line, a repeated key
    before = files_outside(tmp_path, output)

    summary = run_job(options(source, output, models[0], keys_file=str(keys_file)))

    rows = manifest(output)
    assert sorted(rows) == sorted(keys)  # every key of the file once
    expected = {
        "crowd.jpg": ("blurred", ""),
        "missing.jpg": ("failed", "input not found"),
        "anim.gif": ("failed", "unsupported format"),
        "noext": ("failed", "unsupported format"),
        "../x.jpg": ("failed", "invalid key"),
        absolute: ("failed", "invalid key"),
        "a//b.jpg": ("failed", "invalid key"),
        "dir.jpg": ("failed", "read failed: IsADirectoryError"),
    }
    assert {k: (r["status"], r["error"][: len(expected[k][1])]) for k, r in rows.items()} == expected
    assert ".gif" in rows["anim.gif"]["error"]
    assert all(r["output_key"] is None for k, r in rows.items() if k != "crowd.jpg")
    assert (summary["inputs"], summary["blurred"], summary["failed"], summary["skipped"]) == (8, 1, 7, 0)
    assert files_outside(tmp_path, output) == before  # x.jpg beside the input untouched, nothing new
    written = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    assert [k for k in written if not k.startswith(f"{AUDIT_DIR}/")] == ["crowd.jpg"]
    assert (output / "crowd.jpg").read_bytes() != photo


def test_resume_skips_only_unchanged_inputs_done_with_the_same_settings(tmp_path, models, monkeypatch):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    photo = (SAMPLES / "crowd_0.jpg").read_bytes()
    (source / "a.jpg").write_bytes(photo)
    (source / "b.jpg").write_bytes((SAMPLES / "dashcam_0.jpg").read_bytes())
    (source / "bad.jpg").write_bytes(photo[: len(photo) // 2])  # truncated: fails every time
    model_a, model_b = models
    target = Storage(str(output))

    # 1. The pipeline raises after its last image: the rows it finished are flushed all the same
    #    (block_rows is larger than the run, so only the final flush writes them), then it raises.
    real_pipeline = job_module.run_pipeline

    def pipeline_then_lost(*args):
        real_pipeline(*args)
        raise RuntimeError("lost the cluster")

    monkeypatch.setattr(job_module, "run_pipeline", pipeline_then_lost)
    with pytest.raises(RuntimeError, match="lost the cluster"):
        run_job(options(source, output, model_a, block_rows=100))
    monkeypatch.undo()
    assert not (output / AUDIT_DIR / "manifest.json").exists()  # the run did not get that far
    [killed] = uncompacted_runs(target, read_index(target))
    started = json.loads(target.read(summary_key(killed)))  # written before its first row
    assert not started["finished"] and started["settings"]["model"] == model_id((str(model_a),))
    first = {row["key"]: row for row in read_manifest_rows(target)}
    assert {k: r["status"] for k, r in first.items()} == {
        "a.jpg": "blurred",
        "b.jpg": "blurred",
        "bad.jpg": "failed",
    }

    # 2. Nothing changed: the killed run's parts are compacted first, then all is skipped, and the
    #    summary says one of them had failed.
    summary = run_job(options(source, output, model_a))
    assert read_index(target)["runs"] == [killed, summary["run_id"]]
    assert (summary["blurred"], summary["failed"], summary["skipped"], summary["skipped_failed"]) == (
        0,
        0,
        3,
        1,
    )
    parts = sorted((output / AUDIT_DIR / "runs" / summary["run_id"]).glob("skipped-*.parquet"))
    skipped_rows = pq.read_table(parts[0], schema=MANIFEST_SCHEMA).to_pylist()
    assert all(r["status"] == "skipped" and "same ETag and settings" in r["error"] for r in skipped_rows)

    # 3. b.jpg changed (new ETag) and --retry-failed: b.jpg and bad.jpg redone, a.jpg skipped.
    (source / "b.jpg").write_bytes((SAMPLES / "dashcam_1.jpg").read_bytes())
    summary = run_job(options(source, output, model_a, retry_failed=True))
    assert (summary["blurred"], summary["failed"], summary["skipped"], summary["skipped_failed"]) == (
        1,
        1,
        1,
        0,
    )
    rows = manifest(output)
    assert rows["a.jpg"]["run_id"] == first["a.jpg"]["run_id"]
    assert rows["b.jpg"]["run_id"] == rows["bad.jpg"]["run_id"] == summary["run_id"]
    assert rows["b.jpg"]["etag"] != first["b.jpg"]["etag"]

    # 4. --overwrite redoes everything.
    summary = run_job(options(source, output, model_a, overwrite=True))
    assert (summary["blurred"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    assert {r["run_id"] for r in manifest(output).values()} == {summary["run_id"]}

    # 5. Other weights redo everything; 6. a second run with them redoes nothing.
    summary = run_job(options(source, output, model_b))
    assert (summary["blurred"], summary["failed"], summary["skipped"]) == (2, 1, 0)
    assert {r["model_id"] for r in manifest(output).values()} == {model_id((str(model_b),))}
    summary = run_job(options(source, output, model_b))
    assert (summary["blurred"], summary["failed"], summary["skipped"], summary["skipped_failed"]) == (
        0,
        0,
        3,
        1,
    )
    digest = summary["settings_digest"]
    assert {r["settings_digest"] for r in manifest(output).values()} == {digest}
    assert summary["settings"]["model"] == model_id((str(model_b),))

    # 7. Any setting that changes the pixels redoes everything: a lower threshold, another blur, tile
    #    plan or output quality; a setting that changes only the speed redoes nothing.
    job = options(source, output, model_b)
    for change in (
        {"detect": replace(job.config.detect, thresholds={"face": 0.2})},
        {"blur": replace(job.config.blur, mode="pixelate")},
        {"detect": replace(job.config.detect, tile_size=480)},
        {"quality": 90},
    ):
        summary = run_job(replace(job, config=replace(job.config, **change)))
        assert (summary["blurred"], summary["failed"], summary["skipped"]) == (2, 1, 0), change
        assert summary["settings_digest"] != digest, change
        digest = summary["settings_digest"]
        rows = manifest(output)
        assert {r["settings_digest"] for r in rows.values()} == {digest}
        assert {r["run_id"] for r in rows.values()} == {summary["run_id"]}
    last = replace(job.config, quality=90)
    speed_only = replace(last, detect=replace(last.detect, batch_size=3, threads=1))
    summary = run_job(replace(job, config=speed_only, batch_size=1))
    assert (summary["blurred"], summary["skipped"], summary["settings_digest"]) == (0, 3, digest)


def test_overlapping_or_missing_locations_are_refused_before_anything_runs(tmp_path, models):
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.jpg").write_bytes((SAMPLES / "crowd_0.jpg").read_bytes())
    (tmp_path / "link").symlink_to(source)
    outputs = (source, source / "blurred", f"{source}/x/../blurred", tmp_path / "link" / "blurred", tmp_path)
    for output in outputs:  # tmp_path holds the input: out/in/a.jpg would be written over in/a.jpg
        with pytest.raises(ValueError, match=r"are one, or one is inside the other"):
            run_job(options(source, Path(output), models[0]))
    with pytest.raises(ValueError, match="no such folder"):
        run_job(options(tmp_path / "nope", tmp_path / "out", models[0]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "link"]
    assert [p.name for p in source.rglob("*")] == ["a.jpg"]  # nothing written anywhere

    for input_uri, output_uri in (
        ("s3://photos/raw", "s3://photos/raw"),
        ("s3://photos/raw/", "s3://photos/raw/blurred"),
        ("s3://photos", "s3://photos/blurred"),
        ("s3://photos/raw", "s3://photos"),  # raw/a.jpg would be written over the input raw/a.jpg
        ("s3://photos/raw/2024", "s3://photos/raw/"),
    ):
        with pytest.raises(ValueError, match="one is inside the other"):  # refused before any S3 call
            run_job(JobOptions(input_uri, output_uri, endpoint_url="http://127.0.0.1:9"))
    check_locations(Storage("s3://photos/raw"), Storage("s3://photos/raw-blurred"))
    check_locations(Storage("s3://photos/raw-blurred"), Storage("s3://photos/raw"))
    check_locations(Storage("s3://photos/raw"), Storage("s3://other/raw"))
    check_locations(Storage(str(source)), Storage(str(tmp_path / "out")))


def test_latest_row_is_that_of_the_latest_run_even_if_its_clock_was_behind(tmp_path):
    target = Storage(str(tmp_path))
    now = datetime(2025, 1, 2, tzinfo=timezone.utc)
    for run_id, finished_at, status in (
        ("20250102T000000Z-bbbbbb", now - timedelta(hours=1), "blurred"),  # later run, clock behind
        ("20250101T230000Z-aaaaaa", now, "failed"),
    ):
        row = dict.fromkeys(MANIFEST_SCHEMA.names)
        row |= {"key": "a.jpg", "status": status, "run_id": run_id, "finished_at": finished_at}
        write_rows(target, run_part_key(run_id, "part", 0), [row])
    [latest] = read_manifest_rows(target)
    assert (latest["run_id"], latest["status"]) == ("20250102T000000Z-bbbbbb", "blurred")
    compact(target, read_index(target), uncompacted_runs(target, read_index(target)))
    assert read_manifest_rows(target) == [latest]


def test_an_image_that_crashes_the_batch_fails_alone(detector, monkeypatch):
    """Should `blur_images` ever raise (it is meant to fail images, not raise), the actor retries the
    batch image by image, so only the image that raises fails, closed, and the job goes on."""
    real_blur_images = actor_module.blur_images

    def blur_images(inputs, *args):
        if any(data == b"boom" for data, _ in inputs):
            raise RuntimeError("boom")
        return real_blur_images(inputs, *args)

    monkeypatch.setattr(actor_module, "blur_images", blur_images)
    actor = ImagePipelineActor(Config(), detector)  # the models of the shared `detector` fixture
    photo = (SAMPLES / "crowd_0.jpg").read_bytes()
    batch = {
        "key": ["a.jpg", "boom.jpg", "gone.jpg"],
        "etag": ["1", "2", ""],
        "size": [len(photo), 4, -1],
        "data": [photo, b"boom", b""],
        "format": ["JPEG", "JPEG", ""],
        "error": ["", "", "input not found"],
        "read_ms": [1.0, 1.0, 1.0],
        "block": [0, 0, 0],
        "block_todo": [3, 3, 3],
        "reviewer_boxes": ["[]", "[]", "[]"],
    }
    result = actor(batch)
    assert result["status"] == ["blurred", "failed", "failed"]
    assert result["error"] == ["", "processing failed: RuntimeError: boom", "input not found"]
    assert result["output"][0] and result["output"][1] == result["output"][2] == b""


@pytest.mark.parametrize("key", ["", "/a.jpg", "../a.jpg", "a/../../b.jpg", "./a.jpg", "a//b.jpg", "a/"])
def test_unsafe_keys_are_refused_by_storage(tmp_path, key):
    with pytest.raises(InvalidKey, match="invalid key"):
        check_key(key)
    storage = Storage(str(tmp_path / "root"))
    for call in (storage.read, storage.stat, lambda k: storage.write(k, b"x")):
        with pytest.raises(InvalidKey):
            call(key)
    assert not list(tmp_path.rglob("*"))
    assert check_key("a b/straße#1.jpg") == "a b/straße#1.jpg"


def test_only_formats_the_job_can_write_back_are_listed_and_others_are_refused(tmp_path, capsys):
    """Outputs keep their input's format and key, so the job lists only the formats it writes."""
    source = tmp_path / "in"
    (source / "sub").mkdir(parents=True)
    photo = Image.open(SAMPLES / "crowd_0.jpg")
    for name in ("a.jpg", "b.JPEG", "sub/c.png", "d.webp", "e.tif", "f.bmp", "g.gif"):
        photo.save(source / name)
    photo.save(source / "sub-x.png")  # its key comes before "sub/c.png": '-' < '/'
    (source / "notes.txt").write_text("not a photo\n")
    listed = [o.key for o in list_inputs(Storage(str(source)), INPUT_SUFFIXES, keys=None)]
    assert listed == ["a.jpg", "b.JPEG", "d.webp", "sub-x.png", "sub/c.png"]  # in key order, as on S3
    assert (
        main(["run", "--input", str(source), "--output", str(tmp_path / "out"), "--extensions", "jpg,tif"])
        == 2
    )
    assert "cannot write ['.tif']" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything ran


def damaged_files(count: int, seed: int = 0) -> dict[str, tuple[bytes, str]]:
    """`count` JPEG, PNG and WebP files of a real photo, each damaged at random (bytes overwritten, cut
    short, a stretch repeated or dropped), and among them decompression bombs: tiny files whose headers
    declare 65535x65535 pixels. `{key: (bytes, kind)}`."""
    rng = random.Random(seed)
    photo = Image.open(SAMPLES / "crowd_0.jpg").convert("RGB").resize((200, 133))
    originals = {}
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png"), ("WEBP", "webp")):
        buffer = io.BytesIO()
        photo.save(buffer, format=fmt)
        originals[suffix] = buffer.getvalue()
    files = {}
    for i in range(count):
        suffix = ("jpg", "png", "webp")[i % 3]
        data = bytearray(originals[suffix])
        kind = rng.choice(["overwrite", "cut", "repeat", "drop"] + (["bomb"] if suffix != "webp" else []))
        if kind == "bomb" and suffix == "jpg":  # the start-of-frame marker's height and width
            at = data.index(b"\xff\xc0") + 5
            data[at : at + 4] = struct.pack(">HH", 65535, 65535)
        elif kind == "bomb":  # the PNG header chunk's width and height, its checksum made right again
            data[16:24] = struct.pack(">II", 65535, 65535)
            data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
        elif kind == "overwrite":
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == "cut":
            data = data[: rng.randrange(1, len(data))]
        else:
            start = rng.randrange(len(data))
            end = min(len(data), start + rng.randint(1, 500))
            data = data[:end] + data[start:] if kind == "repeat" else data[:start] + data[end:]
        files[f"damaged/{i:03d}-{kind}.{suffix}"] = (bytes(data), kind)
    return files


def test_damaged_files_and_decompression_bombs_each_end_as_one_row_and_the_job_goes_on(tmp_path, models):
    source, output = tmp_path / "in", tmp_path / "out"
    files = damaged_files(200)
    for key, (data, _) in files.items():
        (source / key).parent.mkdir(parents=True, exist_ok=True)
        (source / key).write_bytes(data)
    job = options(source, output, models[0])
    detect = replace(job.config.detect, upscale_to=0)  # small photos, seen at their own size: fast
    job = replace(job, batch_size=8, config=replace(job.config, detect=detect))

    summary = run_job(job)

    rows = manifest(output)
    assert sorted(rows) == sorted(files)  # every file once
    assert summary["blurred"] + summary["failed"] == 200
    for key, row in rows.items():
        assert row["status"] in ("blurred", "failed"), row
        assert (output / key).exists() == (row["status"] == "blurred")  # nothing published for a failure
        if row["status"] == "failed":
            assert row["error"], key
    bombs = [key for key, (_, kind) in files.items() if kind == "bomb"]
    assert len(bombs) > 10
    assert all(rows[key]["error"].startswith("too many pixels: 65535x65535") for key in bombs), [
        rows[key]["error"] for key in bombs
    ]
    assert summary["failed"] > len(bombs)  # damage other than bombs fails too, each with its reason


def test_a_detector_actor_killed_mid_batch_is_replaced_and_the_job_finishes(tmp_path, models):
    """SIGKILL to the detector actor's process once outputs appear: Ray starts a new actor and retries
    the lost batch; every input ends blurred once, and no output is ever written unblurred."""
    source, output = tmp_path / "in", tmp_path / "out"
    originals = {}
    for i, path in enumerate(sorted((SAMPLES).glob("*.jpg")) * 3):
        originals[f"{i:02d}.jpg"] = path.read_bytes()
        (source / f"{i:02d}.jpg").parent.mkdir(exist_ok=True)
        (source / f"{i:02d}.jpg").write_bytes(originals[f"{i:02d}.jpg"])
    killed: list[int] = []

    def kill_the_detector_actor_once_outputs_appear() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if len(list(output.glob("*.jpg"))) >= 2:
                for process in psutil.Process().children(recursive=True):  # this test's own Ray only
                    try:
                        if "ImagePipelineActor" in " ".join(process.cmdline()):
                            process.send_signal(signal.SIGKILL)
                            killed.append(process.pid)
                    except psutil.Error:
                        pass
            time.sleep(0.1)

    killer = threading.Thread(target=kill_the_detector_actor_once_outputs_appear, daemon=True)
    killer.start()
    summary = run_job(options(source, output, models[0]))
    killer.join()

    assert killed, "no detector actor process was found to kill"
    rows = manifest(output)
    assert sorted(rows) == sorted(originals)
    assert {row["status"] for row in rows.values()} == {"blurred"}
    assert summary["blurred"] == len(originals) and summary["failed"] == 0
    for key, data in originals.items():
        assert (output / key).read_bytes() != data  # every output blurred, none copied through


def test_a_block_that_ray_delivers_again_after_its_part_was_written_changes_nothing(tmp_path):
    """Ray may run a batch twice; a late copy of a block's rows must not rewrite that block's part with
    only the copy (rows lost) nor count its inputs twice."""
    target = Storage(str(tmp_path))
    parts = ManifestPartWriter(target, "20250101T000000Z-aaaaaa")

    def row(key: str, block: int, todo: int) -> dict:
        fields = dict.fromkeys(MANIFEST_SCHEMA.names)
        fields |= {"key": key, "status": "blurred", "run_id": "20250101T000000Z-aaaaaa"}
        return fields | {"finished_at": datetime.now(timezone.utc), "block": block, "block_todo": todo}

    parts.add([row("a.jpg", 0, 2), row("b.jpg", 0, 2)])  # block 0 complete: its part is written
    parts.add([row("c.jpg", 1, 1)])
    parts.add([row("b.jpg", 0, 2)])  # the late copy
    parts.flush()

    written = pq.read_table(tmp_path / run_part_key("20250101T000000Z-aaaaaa", "part", 0)).to_pylist()
    assert [r["key"] for r in written] == ["a.jpg", "b.jpg"]
    assert parts.counts == {"blurred": 3, "failed": 0}
    assert [r["key"] for r in read_manifest_rows(target)] == ["a.jpg", "b.jpg", "c.jpg"]


def test_names_that_are_not_utf8_each_fail_alone_and_the_job_goes_on(tmp_path, models):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    photo = (SAMPLES / "crowd_0.jpg").read_bytes()
    (source / "a.jpg").write_bytes(photo)
    (source / os.fsdecode(b"caf\xe9.jpg")).write_bytes(photo)  # Latin-1, as an old camera may write

    summary = run_job(options(source, output, models[0]))

    rows = manifest(output)
    assert {k: r["status"] for k, r in rows.items()} == {"a.jpg": "blurred", "caf\\xe9.jpg": "failed"}
    assert "not valid UTF-8" in rows["caf\\xe9.jpg"]["error"]
    assert (summary["inputs"], summary["blurred"], summary["failed"]) == (2, 1, 1)
    assert sorted(p.name for p in output.iterdir()) == [AUDIT_DIR, "a.jpg"]

    keys_file = tmp_path / "keys.txt"
    keys_file.write_bytes(b"a.jpg\ncaf\xe9.jpg\n")
    summary = run_job(options(source, tmp_path / "out2", models[0], keys_file=str(keys_file)))
    rows = manifest(tmp_path / "out2")
    assert {k: r["status"] for k, r in rows.items()} == {"a.jpg": "blurred", "caf\\xe9.jpg": "failed"}
    assert "not valid UTF-8" in rows["caf\\xe9.jpg"]["error"]


def test_inputs_over_the_byte_limit_fail_unread_and_a_run_of_failures_fails(tmp_path, models, monkeypatch):
    source, output = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    small, large = (SAMPLES / "crowd_0.jpg").read_bytes(), (SAMPLES / "dashcam_0.jpg").read_bytes()
    assert len(small) < len(large)
    (source / "small.jpg").write_bytes(small)
    (source / "large.jpg").write_bytes(large)
    read = []
    real_read = Storage.read
    monkeypatch.setattr(Storage, "read", lambda self, key: read.append(key) or real_read(self, key))

    summary = run_job(options(source, output, models[0], max_input_bytes=len(small)))

    rows = manifest(output)
    assert rows["small.jpg"]["status"] == "blurred"
    assert rows["large.jpg"]["status"] == "failed"
    assert (
        rows["large.jpg"]["error"] == f"input is {len(large):,} bytes, over --max-input-bytes {len(small):,}"
    )
    assert (summary["failed_fraction"], summary["failed_fraction_exceeded"]) == (0.5, False)

    # Every input failing (here: all over the limit) fails the run; so does a run with no input.
    summary = run_job(options(source, tmp_path / "out2", models[0], max_input_bytes=10))
    assert (summary["failed"], summary["failed_fraction"], summary["failed_fraction_exceeded"]) == (
        2,
        1.0,
        True,
    )
    tolerant = run_job(
        options(source, tmp_path / "out3", models[0], max_input_bytes=10, max_failed_fraction=1)
    )
    assert tolerant["failed_fraction_exceeded"] is False
    (tmp_path / "empty").mkdir()
    summary = run_job(options(tmp_path / "empty", tmp_path / "out4", models[0]))
    assert (summary["inputs"], summary["failed_fraction_exceeded"]) == (0, True)


def test_detector_actors_reserve_memory_and_no_more_are_started_than_it_holds(monkeypatch):
    import ray

    gib = 2**30
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "memory": 5.0 * gib})
    assert pool_size(0.75, 0.0, 0.25) == 16
    assert pool_size(0.75, 0.0, 0.25, memory_gb=2.0) == 2
    assert JobOptions("in", "out").actor_memory_gb > 0
