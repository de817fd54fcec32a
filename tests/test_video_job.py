"""The Ray batch job on photos and videos together, from a local folder and from S3; a re-run skips
what is done; videos cut into chunks for several actors, and a killed job that resumes them."""

from __future__ import annotations

import io
import shutil
from dataclasses import replace

import av
import boto3
import pyarrow.parquet as pq
import pytest

from blurring.config import load_config
from jobs.batch.job import JobOptions, run_job
from jobs.batch.manifest import AUDIT_DIR, read_manifest_rows
from jobs.batch.videos import ChunkTally, VideoChunks, chunks_folder, detections_key, remove_chunks
from storage.objects import Storage
from tests.conftest import SAMPLES
from tests.video_clips import write_clip
from video.pipeline import Chunk


@pytest.fixture
def ray_session():
    """A local Ray per test, started by the job: so that its workers see the test's S3 settings."""
    import ray

    yield
    ray.shutdown()


def _frames(data: bytes) -> int:
    with av.open(io.BytesIO(data)) as container:
        return sum(1 for _ in container.decode(video=0))


def test_a_folder_of_photos_and_videos_then_a_rerun_that_skips_them(tmp_path, ray_session):
    source = tmp_path / "in"
    (source / "drive").mkdir(parents=True)
    for name in ("crowd_1.jpg", "dashcam_0.jpg"):
        shutil.copy(SAMPLES / name, source / name)
    write_clip(source / "drive" / "walk.mp4", frames=10)
    whole = (source / "drive" / "walk.mp4").read_bytes()
    (source / "drive" / "cut.mp4").write_bytes(whole[: len(whole) // 2])
    options = JobOptions(str(source), str(tmp_path / "out"), actors=1, block_rows=2)
    summary = run_job(options)
    assert (summary["blurred"], summary["failed"]) == (3, 1)
    rows = {row["key"]: row for row in read_manifest_rows(Storage(str(tmp_path / "out")))}
    assert sorted(rows) == ["crowd_1.jpg", "dashcam_0.jpg", "drive/cut.mp4", "drive/walk.mp4"]
    video = rows["drive/walk.mp4"]
    assert video["status"] == "blurred" and video["frames"] == 10 and video["streams_dropped"] == []
    assert video["faces"] >= 10 and video["plates"] >= 10  # each object, in each frame
    assert (video["width"], video["height"]) == (640, 360)
    assert _frames((tmp_path / "out" / "drive" / "walk.mp4").read_bytes()) == 10
    boxes = pq.read_table(tmp_path / "out" / detections_key("drive/walk.mp4")).to_pandas()
    assert set(boxes.frame) == set(range(10))
    cut = rows["drive/cut.mp4"]
    assert cut["status"] == "failed" and cut["error"] and cut["frames"] is None
    assert not (tmp_path / "out" / "drive" / "cut.mp4").exists()
    assert rows["crowd_1.jpg"]["status"] == "blurred" and rows["crowd_1.jpg"]["frames"] is None
    again = run_job(options)
    assert (again["blurred"], again["skipped"], again["skipped_failed"]) == (0, 4, 1)  # the failed one too
    # Another video quality redoes the videos, not the photos
    config = replace(options.config, video=replace(options.config.video, crf=30))
    recoded = run_job(replace(options, config=config))
    assert (recoded["blurred"], recoded["failed"], recoded["skipped"]) == (1, 1, 2)
    assert recoded["settings_digest"] == again["settings_digest"]
    assert recoded["video_settings_digest"] != again["video_settings_digest"]


def test_videos_from_s3_to_s3(s3_endpoint, tmp_path, ray_session):
    write_clip(tmp_path / "walk.mov", frames=6)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.put_object(Bucket="photos", Key="clips/a/walk.mov", Body=(tmp_path / "walk.mov").read_bytes())
    client.put_object(Bucket="photos", Key="clips/crowd_2.jpg", Body=(SAMPLES / "crowd_2.jpg").read_bytes())
    options = JobOptions("s3://photos/clips", "s3://photos/out", endpoint_url=s3_endpoint, actors=1)
    summary = run_job(options)
    assert (summary["blurred"], summary["failed"]) == (2, 0)
    output = client.get_object(Bucket="photos", Key="out/a/walk.mov")["Body"].read()
    assert _frames(output) == 6
    rows = {r["key"]: r for r in read_manifest_rows(Storage("s3://photos/out", s3_endpoint))}
    assert rows["a/walk.mov"]["detections_key"] == detections_key("a/walk.mov")
    client.head_object(Bucket="photos", Key=f"out/{detections_key('a/walk.mov')}")


def test_files_are_uploaded_and_downloaded_whole_locally_and_on_s3(tmp_path, s3_endpoint):
    data = bytes(range(256)) * 5000  # 1.3 MB
    (tmp_path / "file.bin").write_bytes(data)
    for storage in (Storage(str(tmp_path / "store")), Storage("s3://photos/files", s3_endpoint)):
        storage.upload(tmp_path / "file.bin", "a/b.mp4")
        assert storage.read("a/b.mp4") == data
        storage.download("a/b.mp4", tmp_path / "back.bin")
        assert (tmp_path / "back.bin").read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "store" / "a").iterdir()) == ["b.mp4"]  # no partial left


def test_a_video_cut_into_chunks_for_two_actors_matches_one_actor_per_video(tmp_path, ray_session):
    source = tmp_path / "in"
    source.mkdir()
    write_clip(source / "walk.mp4", frames=30, keyframe_every=5)
    size = (source / "walk.mp4").stat().st_size
    whole = run_job(JobOptions(str(source), str(tmp_path / "whole"), actors=2, video_chunk_mb=0))
    chunked = run_job(
        JobOptions(str(source), str(tmp_path / "chunked"), actors=2, video_chunk_mb=size / 2 / 2**20)
    )
    assert whole["blurred"] == chunked["blurred"] == 1
    [row] = read_manifest_rows(Storage(str(tmp_path / "chunked")))  # one row for its 8 chunks
    assert row["status"] == "blurred" and row["frames"] == 30
    assert _frames((tmp_path / "chunked" / "walk.mp4").read_bytes()) == 30
    boxes = [
        pq.read_table(tmp_path / out / detections_key("walk.mp4")).to_pandas() for out in ("whole", "chunked")
    ]
    assert len(boxes[0]) and boxes[0].equals(boxes[1])  # the same boxes in every frame
    assert not (tmp_path / "chunked" / AUDIT_DIR / "video-chunks").exists()  # removed once written


def test_a_killed_job_detects_only_the_chunks_it_had_not_stored(tmp_path, detector, monkeypatch):
    import ray

    source, target = Storage(str(tmp_path / "in")), Storage(str(tmp_path / "out"))
    (tmp_path / "in").mkdir()
    write_clip(tmp_path / "in" / "walk.mp4", frames=24, keyframe_every=6)
    etag = source.stat("walk.mp4").etag
    config = load_config()
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        first = VideoChunks(source, target, detector, config, ray.remote(ChunkTally).remote())
        for index in (0, 2):  # the job is killed before chunk 1 is done
            assert first.blur_chunk("walk.mp4", etag, Chunk(index, 3)) is None
        assert not (tmp_path / "out" / "walk.mp4").exists()
        seen = []
        original = detector.screen_batch
        monkeypatch.setattr(detector, "screen_batch", lambda images: seen.extend(images) or original(images))
        again = VideoChunks(source, target, detector, config, ray.remote(ChunkTally).remote())
        outcomes = [again.blur_chunk("walk.mp4", etag, Chunk(index, 3)) for index in range(3)]
    finally:
        ray.shutdown()
    assert outcomes[:2] == [None, None] and outcomes[2].status == "blurred", outcomes[2]
    assert 0 < len(seen) < 24  # chunk 1's frames alone
    assert outcomes[2].frames == 24 and _frames((tmp_path / "out" / "walk.mp4").read_bytes()) == 24
    audit = pq.read_table(tmp_path / "out" / detections_key("walk.mp4")).to_pandas()
    assert set(audit[audit.source == "detector"].frame) == set(range(24))  # both objects seen in each
    assert (tmp_path / "out" / chunks_folder("walk.mp4")).is_dir()  # until the job has its row
    remove_chunks(target, "walk.mp4")
    assert not (tmp_path / "out" / AUDIT_DIR / "video-chunks").exists()
