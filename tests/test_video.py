"""The video pipeline on generated MP4s: streams, frames, timestamps, rotation and metadata kept; pixels
changed inside the boxes and nowhere else; truncated videos fail closed; a killed run resumes."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pyarrow.parquet as pq
import pytest

from blurring import blur_mask
from blurring.config import load_config, output_settings, parse_overrides, settings_digest
from detection.detections import CLASS_NAMES, Detections
from tests.video_clips import write_clip
from video import store
from video.pipeline import Chunk, blur_video, detect_frames, finish_video


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    path = tmp_path_factory.mktemp("clip") / "walk.mp4"
    return path, write_clip(path)


@pytest.fixture(scope="module")
def blurred(clip, detector, tmp_path_factory):
    folder = tmp_path_factory.mktemp("out")
    config = load_config()
    outcome = blur_video(
        clip[0], folder / "walk.mp4", detector, config, folder / "work", folder / "audit.parquet"
    )
    return outcome, folder


def _packets(path: Path) -> dict[int, list[tuple[int | None, bytes]]]:
    """Every stream's packets (pts, payload), but the video's."""
    with av.open(str(path)) as container:
        found: dict[int, list] = {s.index: [] for s in container.streams if s.type != "video"}
        for packet in container.demux(*[container.streams[i] for i in found]):
            if packet.size:
                found[packet.stream.index].append((packet.pts, bytes(packet)))
        return found


def _frames(path: Path) -> tuple[list[float], list[np.ndarray], int]:
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        return (
            [float(f.pts * f.time_base) for f in frames],
            [f.to_ndarray(format="bgr24") for f in frames],
            frames[0].rotation,
        )


def test_output_keeps_streams_frames_timestamps_and_allowed_metadata(clip, blurred):
    outcome, folder = blurred
    assert outcome.status == "blurred", outcome.error
    output = folder / "walk.mp4"
    assert outcome.output == output
    with av.open(str(clip[0])) as source, av.open(str(output)) as result:
        assert [(s.type, s.name) for s in result.streams] == [(s.type, s.name) for s in source.streams]
        assert result.streams.video[0].name == "h264"
        assert result.metadata.get("location") == source.metadata["location"]
        assert "title" in source.metadata and "title" not in result.metadata
        assert result.streams.video[0].metadata.get("timecode") == "01:00:00:00"
        gps = [s for s in result.streams if s.metadata.get("handler_name") == "GoPro MET"]
        assert len(gps) == 1
    source_packets, result_packets = _packets(clip[0]), _packets(output)
    audio_and_gps = [i for i, packets in source_packets.items() if len(packets) > 1]  # not the timecode
    assert len(audio_and_gps) == 2
    for index in audio_and_gps:  # copied packet by packet: the same bytes at the same times
        assert result_packets[index] == source_packets[index]
    source_times, _, _ = _frames(clip[0])
    result_times, _, _ = _frames(output)
    assert len(result_times) == len(source_times) == outcome.frames == 24
    assert result_times == pytest.approx(source_times, abs=1e-6)
    assert len(set(np.round(np.diff(source_times), 3))) > 1  # the clip's rate really varies
    assert outcome.streams_copied == ["#1 audio aac (SoundHandler)", "#2 data bin_data (GoPro MET)"]
    assert outcome.streams_dropped == []
    assert not list(folder.glob(".*partial")) and not (folder / "work").exists()


def test_pixels_change_inside_the_boxes_and_nowhere_else(clip, blurred, tmp_path):
    _, folder = blurred
    audit = pq.read_table(folder / "audit.parquet").to_pandas()
    assert pq.read_metadata(folder / "audit.parquet").metadata[b"frames"] == b"24"
    _, before, _ = _frames(clip[0])
    _, after, _ = _frames(folder / "walk.mp4")
    config = load_config()
    plain = _reencoded(before, config.video.crf, tmp_path / "plain.mp4")  # codec noise, nothing blurred
    for index, (truth, original, result) in enumerate(zip(clip[1], before, after, strict=True)):
        rows = audit[audit.frame == index]
        boxes = Detections(
            rows[["x1", "y1", "x2", "y2"]].to_numpy(),
            rows.score.to_numpy(),
            [CLASS_NAMES.index(c) for c in rows["class"]],
        )
        mask = blur_mask(*original.shape[:2], boxes, config.blur)
        difference = np.abs(original.astype(np.int16) - result.astype(np.int16)).max(axis=2)
        # Outside the blurred areas (and a 4 px band the codec's blocks smear across): codec noise only.
        near = np.zeros_like(mask, bool)
        ys, xs = np.nonzero(mask > 0)
        near[np.clip(ys[:, None] + np.arange(-4, 5), 0, mask.shape[0] - 1), xs[:, None]] = True
        near[ys[:, None], np.clip(xs[:, None] + np.arange(-4, 5), 0, mask.shape[1] - 1)] = True
        outside = difference[~near]
        noise = np.abs(original.astype(np.int16) - plain[index].astype(np.int16)).max(axis=2)[~near]
        assert outside.mean() < noise.mean() + 0.5, index
        assert np.percentile(outside, 99.9) <= np.percentile(noise, 99.9) * 1.5 + 2, index
        # Each real object is inside what was blurred, and its pixels really changed.
        for x1, y1, x2, y2 in truth.round().astype(int):
            assert mask[y1:y2, x1:x2].mean() > 0.95, (index, (x1, y1, x2, y2))
            assert difference[y1:y2, x1:x2].mean() > 8, (index, (x1, y1, x2, y2))


@pytest.mark.parametrize("faststart", [True, False])
def test_truncated_video_fails_closed(tmp_path, detector, faststart):
    whole = tmp_path / "whole.mp4"
    write_clip(whole, frames=12, faststart=faststart)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    out = tmp_path / "out"
    outcome = blur_video(cut, out / "cut.mp4", detector, load_config(), tmp_path / "work")
    assert outcome.status == "failed" and outcome.output is None
    assert outcome.error.startswith(("open failed", "detection failed")), outcome.error
    assert not out.exists() or not any(out.iterdir())
    assert not (tmp_path / "work").exists()


def test_rotation_is_kept_and_boxes_found_in_the_displayed_orientation(tmp_path, detector):
    source = tmp_path / "portrait.mp4"
    truth = write_clip(source, frames=8, rotation=90)
    outcome = blur_video(
        source, tmp_path / "out.mp4", detector, load_config(), tmp_path / "work", tmp_path / "audit.parquet"
    )
    assert outcome.status == "blurred", outcome.error
    _, frames, rotation = _frames(tmp_path / "out.mp4")
    assert rotation == 90 and frames[0].shape[:2] == (640, 360)
    audit = pq.read_table(tmp_path / "audit.parquet").to_pandas()
    detected = audit[(audit.frame == 0) & (audit.source == "detector")]
    for box in truth[0]:  # each object found where it lies in the coded pixels
        ious = [_iou(box, row) for row in detected[["x1", "y1", "x2", "y2"]].to_numpy()]
        assert max(ious, default=0) > 0.5, (box, detected)


def test_a_killed_run_resumes_after_the_last_stored_part(tmp_path, detector, monkeypatch):
    source = tmp_path / "walk.mp4"
    write_clip(source, frames=12)
    monkeypatch.setattr(store, "PART_FRAMES", 4)
    config = load_config()

    def kill_after_eight(stage: str, done: int, total: int) -> None:
        if stage == "detect" and done >= 8:
            raise KeyboardInterrupt  # what a killed run leaves: parts for frames 0-7

    work = tmp_path / "work"
    with pytest.raises(KeyboardInterrupt):
        blur_video(source, tmp_path / "out.mp4", detector, config, work, progress=kill_after_eight)
    assert sorted(p.name for p in work.glob("part-*")) == ["part-000000000.parquet", "part-000000004.parquet"]
    assert not (tmp_path / "out.mp4").exists()
    seen = []
    original = detector.screen_batch
    monkeypatch.setattr(detector, "screen_batch", lambda images: seen.extend(images) or original(images))
    outcome = blur_video(source, tmp_path / "out.mp4", detector, config, work)
    assert outcome.status == "blurred", outcome.error
    assert len(seen) == 4  # only the frames no part held
    assert outcome.frames == 12 and not work.exists()
    # Other detection settings do not reuse the parts
    work.mkdir()
    (work / "key.json").write_text('"another input"')
    (work / "part-000000000.parquet").write_bytes(b"stale")
    seen.clear()
    assert blur_video(source, tmp_path / "again.mp4", detector, config, work).status == "blurred"
    assert len(seen) == 12


def test_chunks_hold_every_frame_once_with_the_boxes_of_the_whole_pass(tmp_path, detector):
    source = tmp_path / "walk.mp4"
    write_clip(source, frames=30, keyframe_every=7)  # B-frames, keyframes at uneven times
    whole = store.DetectionParts(tmp_path / "whole", "key")
    detect_frames(source, whole, detector)
    for count in (2, 3, 5):
        chunks = []
        for index in range(count):
            chunks.append(store.DetectionParts(tmp_path / f"{count}-{index}", "key"))
            detect_frames(source, chunks[-1], detector, Chunk(index, count))
        assert all(chunk.frames for chunk in chunks), count  # each chunk has work
        assert [p for chunk in chunks for p in chunk.pts] == whole.pts, count
        assert [t for chunk in chunks for t in chunk.times] == whole.times
        assert [b.tolist() for chunk in chunks for b in chunk.blurs] == [b.tolist() for b in whole.blurs]
        assert [c for chunk in chunks for c in chunk.checksums] == whole.checksums  # the same pixels
        for joined, alone in zip([d for chunk in chunks for d in chunk.frames], whole.frames, strict=True):
            np.testing.assert_array_equal(joined.xyxy, alone.xyxy)  # the same pixels decoded after a seek


def _every_frame_flagged_key(path: Path, frames: int = 60) -> None:
    """An MPEG-4 part 2 MP4 (a real keyframe every 7 frames) whose every sample is flagged a keyframe,
    as in an MP4 without a sync-sample table: a seek may land on a frame that cannot start decoding
    (this decoder then gives grey garbage with the right timestamps)."""
    with av.open(str(path), "w", format="mp4") as output:
        stream = output.add_stream("mpeg4", rate=25, options={"g": "7", "qscale": "3"})
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        pattern = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
        for index in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(pattern, index * 3, axis=1), format="bgr24")
            frame.pts = index
            for packet in stream.encode(frame):
                packet.is_keyframe = True
                output.mux(packet)
        for packet in stream.encode():
            packet.is_keyframe = True
            output.mux(packet)


def test_chunks_start_at_a_real_keyframe_when_the_index_flags_every_frame(tmp_path, detector):
    source = tmp_path / "allkey.mp4"
    _every_frame_flagged_key(source)
    whole = store.DetectionParts(tmp_path / "whole", "key")
    detect_frames(source, whole, detector)
    for count in (3, 7):
        chunks = [store.DetectionParts(tmp_path / f"{count}-{index}", "key") for index in range(count)]
        for index, chunk in enumerate(chunks):
            detect_frames(source, chunk, detector, Chunk(index, count))
        assert [p for chunk in chunks for p in chunk.pts] == whole.pts, count
        assert [c for chunk in chunks for c in chunk.checksums] == whole.checksums, count


def test_a_frame_that_decodes_otherwise_in_pass_2_fails_the_video_closed(tmp_path, detector):
    source = tmp_path / "walk.mp4"
    write_clip(source, frames=12)
    parts = store.DetectionParts(tmp_path / "work", "key")
    detect_frames(source, parts, detector)
    parts.checksums[5] ^= 1  # what a chunk decoded from a wrong starting frame would have recorded
    outcome = finish_video(source, tmp_path / "out.mp4", parts, detector.model_id, load_config())
    assert outcome.status == "failed" and "frame 5 decodes to other pixels" in outcome.error, outcome.error
    assert not (tmp_path / "out.mp4").exists() and not list(tmp_path.glob(".out.mp4*"))


def test_parts_keep_each_box_s_blur_flag_and_drop_parts_of_the_older_layout(tmp_path):
    boxes = Detections([[0, 0, 10, 10], [20, 20, 30, 30]], [0.9, 0.1], [0, 0])
    parts = store.DetectionParts(tmp_path / "work", "key")
    parts.append(0, 0.0, boxes, np.array([True, False]), 7)
    parts.append(1, 0.04, Detections(), np.zeros(0, bool), 8)
    parts.flush()
    again = store.DetectionParts(tmp_path / "work", "key")
    assert [b.tolist() for b in again.blurs] == [[True, False], []] and len(again.frames[0]) == 2
    assert again.checksums == [7, 8]
    (tmp_path / "work" / "key.json").write_text('"key"')  # how parts without blur flags were keyed
    assert store.DetectionParts(tmp_path / "work", "key").frames == []


def test_video_options_are_config_options_in_the_digest():
    config = load_config(overrides={"video.crf": 20, "video.max_gap_s": 1})
    assert config.video.crf == 20 and config.video.max_gap_s == 1.0

    no_verdict = load_config(overrides=parse_overrides(["video.track_verdict=false"]))
    assert load_config().video.track_verdict and not no_verdict.video.track_verdict

    def digest(config, video):
        return settings_digest(output_settings(config, "model", "torch", "fp32", video))

    assert digest(config, video=True) != digest(load_config(), video=True)
    assert digest(no_verdict, video=True) != digest(load_config(), video=True)
    # Proposals are linked into tracks: their threshold changes videos (not photos) with verify off
    lower = load_config(overrides={"detect.proposal_thresholds.face": 0.05})
    assert lower.detect.verify == "off" and digest(lower, video=True) != digest(load_config(), video=True)
    assert digest(lower, video=False) == digest(load_config(), video=False)
    lower_no_verdict = load_config(
        overrides={"detect.proposal_thresholds.face": 0.05, "video.track_verdict": False}
    )
    assert digest(lower_no_verdict, video=True) == digest(no_verdict, video=True)  # unused without verdicts
    assert digest(config, video=False) == digest(load_config(), video=False)  # photos are not redone
    with pytest.raises(ValueError, match="crf"):
        load_config(overrides={"video.crf": 60})


def _reencoded(frames: list[np.ndarray], crf: int, path: Path) -> list[np.ndarray]:
    """`frames` through libx264 at `crf` and back: what the codec alone changes."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=25, options={"crf": str(crf)})
        stream.height, stream.width = frames[0].shape[:2]
        for pixels in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="bgr24")))
        output.mux(stream.encode())
    return _frames(path)[1]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union
