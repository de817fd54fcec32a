"""One video in, its blurred copy out, in two passes with bounded memory. Fails closed.

Pass 1 decodes every frame, detects faces and plates (in the frame's display orientation) and stores
each frame's boxes, those that blur and the proposals that do not, in Parquet parts (`video.store`),
so a killed run resumes after the last part. Between the passes the boxes are linked into tracks
(`detection.tracking`), which blur their proposals where one of their boxes blurs (track verdicts)
and fill the frames the detector missed. Pass 2 decodes again, blurs all those boxes with
`blurring.anonymize`, encodes H.264 with every frame's own timestamp (variable frame rates stay
variable), and copies the audio, subtitle and data streams packet by packet (`video.streams`).
Frames without boxes are encoded from the decoded picture itself, untouched by colour conversion.

Pass 1 can also run on a `Chunk` of the video (the frames of one stretch of its duration, decoded
from the keyframe before it), so that several workers detect one long video at once
(`detect_frames`); `finish_video` then links, blurs and encodes the joined detections in one go.

The output is written under a temporary name and renamed only when the whole video was decoded,
blurred and encoded, and its frame count matches the input's.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from av.sidedata.sidedata import Type as SideDataType

from blurring import anonymize
from blurring.config import Config, output_settings, settings_digest
from detection.detections import Detections
from detection.detector import Detector
from detection.tracking import tracked_boxes
from video.store import DetectedFrames, DetectionParts, frame_checksum, write_audit
from video.streams import allowed_metadata, describe, plan_streams

CONTAINER_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".avi": "avi"}
"""The muxer written for each output suffix (`video.config.VIDEO_SUFFIXES`)."""

# Pixel formats libx264 encodes: a source in one of them keeps it, any other becomes yuv420p.
_X264_PIXEL_FORMATS = ("yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "nv12")
_DETECT_FRAMES = 4  # frames sent to the detector at once (their views share model batches)

Progress = Callable[[str, int, int], None]
"""`progress(stage, frames_done, frames_total)`; stage "detect" (pass 1) or "blur" (pass 2); total 0
when the container does not say."""


@dataclass
class VideoOutcome:
    """What happened to one video. `output` is set only when `status == "blurred"`."""

    status: str  # "blurred" or "failed"
    error: str = ""
    output: Path | None = None
    frames: int = 0
    width: int = 0
    height: int = 0
    detections: dict[str, int] = field(default_factory=dict)  # boxes that blur on their own, per class
    filled: int = 0  # boxes tracks added (gaps, padding) or blurred by their verdict (proposals)
    tracks: int = 0
    streams_copied: list[str] = field(default_factory=list)
    streams_dropped: list[str] = field(default_factory=list)  # "#index type codec: reason"
    timings_s: dict[str, float] = field(default_factory=dict)  # decode, detect, link, blur, encode


@dataclass(frozen=True)
class _Orientation:
    """The first frame's display matrix (9 int32, or None) and its rotation in degrees counterclockwise."""

    matrix: tuple[int, ...] | None
    rotation: int


@dataclass(frozen=True)
class Chunk:
    """Part `index` (from 0) of `count` of a video: the frames whose presentation timestamps fall in the
    `index`-th of `count` equal stretches of its duration. A video whose duration or start is not known
    is its chunk 0 whole (its other chunks are empty)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"chunk {self.index} of {self.count}")


def blur_video(
    source: Path,
    target: Path,
    detector: Detector,
    config: Config,
    work: Path,
    audit: Path | None = None,
    progress: Progress | None = None,
) -> VideoOutcome:
    """Blur every face and plate in the video `source` into `target` (container from its suffix).

    `work` holds pass 1's detection parts (a run that was killed resumes from them, given the same
    input and detection settings; removed when the video is done or has failed). `audit`, if given,
    receives every box blurred (Parquet, `video.store.AUDIT_SCHEMA`). Never raises for a bad video:
    the outcome says why it failed, and nothing is written to `target`.
    """
    timings = new_timings()
    if target.suffix.lower() not in CONTAINER_FORMATS:
        return VideoOutcome("failed", error=f"open failed: no video container for {target.suffix!r}")
    try:
        parts = DetectionParts(work, _detection_key(source, detector, config))
        detect_frames(source, parts, detector, timings=timings, progress=progress)
    except Exception as error:  # noqa: BLE001 -- any failure fails this video closed, with its reason
        shutil.rmtree(work, ignore_errors=True)  # a video that failed starts afresh next time
        return VideoOutcome(
            "failed", error=f"detection failed: {type(error).__name__}: {error}", timings_s=timings
        )
    outcome = finish_video(source, target, parts, detector.model_id, config, audit, progress, timings)
    if outcome.status == "blurred":
        parts.remove()
    else:
        shutil.rmtree(work, ignore_errors=True)
    return outcome


def finish_video(
    source: Path,
    target: Path,
    detected: DetectedFrames,
    model_id: str,
    config: Config,
    audit: Path | None = None,
    progress: Progress | None = None,
    timings: dict[str, float] | None = None,
) -> VideoOutcome:
    """Link pass 1's boxes (`detected`: every frame of `source`, in presentation order) into tracks,
    then blur, encode and remux `source` into `target` (pass 2, which checks that each frame decodes
    to the pixels pass 1 saw). `audit`, if given, receives every
    box blurred. Never raises for a bad video: the outcome says why it failed, and nothing is written
    to `target`."""
    timings = timings if timings is not None else new_timings()
    outcome = VideoOutcome("failed", timings_s=timings)
    stage = "open"
    try:
        container_format = CONTAINER_FORMATS[target.suffix.lower()]
        orientation = _orientation(source)
        frames, blurs, times = detected.frames, detected.blurs, detected.times
        stage = "detection"
        _check_complete(len(frames), _listed_frames(source))
        stage = "tracking"
        start = time.perf_counter()
        seconds = np.array(times, np.float64)
        video = config.video
        tracked = tracked_boxes(
            frames,
            blurs,
            seconds,
            tracking=video.tracking,
            track_verdict=video.track_verdict,
            max_gap_s=video.max_gap_s,
            pad_frames=video.pad_frames,
            min_iou=video.link_iou,
            max_distance=video.link_distance,
        )
        outcome.tracks = tracked.tracks
        to_blur = [[d[b]] for d, b in zip(frames, tracked.blurred, strict=True)]
        for frame, _, boxes in tracked.added:
            to_blur[frame].append(boxes)
        timings["link"] = time.perf_counter() - start
        stage = "blurring"
        if container_format == "avi" and len(seconds) > 2 and np.ptp(np.diff(seconds)) > 1e-3:
            raise ValueError("an AVI file cannot hold a variable frame rate: write .mp4, .mov or .mkv")
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            streams = _blur_pass(
                source,
                partial,
                container_format,
                [Detections.concat(b) for b in to_blur],
                detected,
                orientation,
                config,
                timings,
                progress,
            )
            if audit is not None:
                metadata = {"source": str(source), "frames": str(len(frames)), "model": model_id}
                write_audit(audit, frames, times, blurs, tracked, metadata)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
    except Exception as error:  # noqa: BLE001 -- any failure fails this video closed, with its reason
        outcome.error = f"{stage} failed: {type(error).__name__}: {error}"
        return outcome
    outcome.status, outcome.output = "blurred", target
    outcome.frames = len(frames)
    outcome.width, outcome.height = streams["width"], streams["height"]
    outcome.streams_copied, outcome.streams_dropped = streams["copied"], streams["dropped"]
    outcome.detections = Detections.concat(d[b] for d, b in zip(frames, blurs, strict=True)).counts()
    outcome.filled = len(tracked.added) + tracked.by_verdict
    return outcome


def new_timings() -> dict[str, float]:
    """Seconds per stage of a video, all 0: decode, detect, link, blur, encode."""
    return dict.fromkeys(("decode", "detect", "link", "blur", "encode"), 0.0)


def detection_digest(detector: Detector, config: Config) -> str:
    """The digest of everything pass 1's boxes depend on: the weights, their runtime and precision, and
    the detection options (the proposal thresholds too, where track verdicts use the proposals)."""
    settings = output_settings(config, detector.model_id, detector.runtime, detector.precision, video=True)
    return settings_digest({k: settings[k] for k in ("model", "runtime", "precision", "detect")})


def _detection_key(source: Path, detector: Detector, config: Config) -> str:
    """The input (its path, size and modification time) and `detection_digest`."""
    status = source.stat()
    digest = detection_digest(detector, config)
    return json.dumps([str(source.resolve()), status.st_size, status.st_mtime_ns, digest])


def _orientation(source: Path) -> _Orientation:
    """The display matrix of the first frame of `source`'s video."""
    with av.open(str(source)) as container:
        frame = next(container.decode(plan_streams(container).video), None)
        if frame is None:
            raise ValueError("the video has no frame that decodes")
        data = frame.side_data.get(SideDataType.DISPLAYMATRIX)
        matrix = struct.unpack("<9i", bytes(data)) if data is not None else None
        return _Orientation(matrix, frame.rotation if matrix else 0)


def _listed_frames(source: Path) -> int:
    """How many frames the container's index lists for the video (0: it does not say)."""
    with av.open(str(source)) as container:
        return plan_streams(container).video.frames


def _frame_time(frame: av.VideoFrame, index: int, rate: Fraction | None) -> float:
    """A frame's presentation time in seconds; from its index and the stream's rate if it has no pts."""
    if frame.pts is not None and frame.time_base is not None:
        return float(frame.pts * frame.time_base)
    return index / float(rate) if rate else float(index)


def detect_frames(
    source: Path,
    parts: DetectionParts,
    detector: Detector,
    chunk: Chunk = Chunk(),
    timings: dict[str, float] | None = None,
    progress: Progress | None = None,
) -> None:
    """Pass 1 on `chunk` of `source` (default: the whole video): decode its frames, from the keyframe at
    or before its start, detect in those `parts` does not hold yet (in the display orientation) and add
    their boxes to it. `ValueError` when the whole video does not decode to its end (a chunk's frames
    are checked against the container's count once joined, by `finish_video`)."""
    timings = timings if timings is not None else new_timings()
    orientation = _orientation(source)
    with av.open(str(source)) as container:
        stream = plan_streams(container).video
        stream.thread_type = "AUTO"
        expected = stream.frames if chunk.count == 1 else 0
        already = len(parts.frames)
        batch: list[tuple[int | None, float, np.ndarray, int]] = []
        index = 0
        start = time.perf_counter()
        for frame in _chunk_frames(container, stream, chunk):
            if index >= already:
                batch.append(
                    (
                        frame.pts,
                        _frame_time(frame, index, stream.average_rate),
                        frame.to_ndarray(format="bgr24"),
                        _checksum(frame),
                    )
                )
            index += 1
            if len(batch) == _DETECT_FRAMES:
                timings["decode"] += time.perf_counter() - start
                _detect_batch(batch, parts, detector, orientation, timings)
                start = time.perf_counter()
                batch = []
                if progress:
                    progress("detect", index, expected)
        timings["decode"] += time.perf_counter() - start
        if chunk.count == 1:
            _check_complete(index, expected)
        if batch:
            _detect_batch(batch, parts, detector, orientation, timings)
        parts.flush()
        if progress:
            progress("detect", index, expected)
        if index != len(parts.frames):
            raise ValueError(f"decoded {index} frames, but the stored detections cover {len(parts.frames)}")


def _chunk_frames(
    container: av.container.InputContainer, stream: av.VideoStream, chunk: Chunk
) -> Iterator[av.VideoFrame]:
    """The frames of `chunk` in presentation order: every frame for a single chunk; else decoding from
    a keyframe at or before the chunk's start, the frames whose timestamps fall in its stretch."""
    span = _chunk_span(container, stream, chunk)
    if span is None:  # nothing to cut by: chunk 0 is the whole video
        if chunk.index == 0:
            yield from container.decode(stream)
        return
    low, high = span
    if low is not None:
        _seek_at_or_before(container, stream, low)
    for frame in container.decode(stream):
        if frame.pts is None:
            raise ValueError("a frame without a timestamp: this video cannot be cut into chunks")
        if high is not None and frame.pts >= high:
            return  # frames come out in presentation order: the rest are later still
        if low is None or frame.pts >= low:
            yield frame


def _chunk_span(
    container: av.container.InputContainer, stream: av.VideoStream, chunk: Chunk
) -> tuple[int | None, int | None] | None:
    """`chunk`'s first and end timestamps in `stream`'s time base (None: open-ended), or None when the
    video is not cut (a single chunk, no start or duration to cut by, or an AVI file)."""
    duration = stream.duration
    if duration is None and container.duration is not None and stream.time_base:
        duration = round(container.duration / av.time_base / stream.time_base)
    # AVI has no presentation times of its own: its decoded frames may come out of order (B-frames)
    if chunk.count == 1 or stream.start_time is None or not duration or container.format.name == "avi":
        return None
    bounds = [stream.start_time + duration * i // chunk.count for i in range(chunk.count + 1)]
    low = bounds[chunk.index] if chunk.index > 0 else None
    high = bounds[chunk.index + 1] if chunk.index < chunk.count - 1 else None
    return low, high


def _seek_at_or_before(container: av.container.InputContainer, stream: av.VideoStream, pts: int) -> None:
    """Seek `stream` so that decoding starts at a keyframe at or before `pts`. A demuxer's index may land
    later than asked, or on a frame that is no keyframe (an MP4 without a sync-sample table calls every
    frame one), where the decoder gives nothing or garbage: then seek a second earlier, and twice as
    far each time, down to the start. Pass 2 checks every frame's pixels against pass 1 besides."""
    first_pts = stream.start_time or 0
    step = max(1, round(1 / stream.time_base))  # one second
    target = pts
    while True:
        container.seek(target, stream=stream, backward=True, any_frame=False)
        first = next(container.decode(stream), None)
        landed = first is not None and first.key_frame and first.pts is not None and first.pts <= pts
        if landed or target <= first_pts:
            break
        target, step = max(target - step, first_pts), step * 2
    container.seek(target, stream=stream, backward=True, any_frame=False)


def _check_complete(decoded: int, expected: int) -> None:
    """`ValueError` unless every frame the container's index lists (when it lists them) decoded."""
    if decoded == 0:
        raise ValueError("no frame decodes")
    if expected and decoded != expected:
        raise ValueError(f"only {decoded} of the {expected} frames the container lists decode (truncated?)")


def _detect_batch(
    batch: list[tuple[int | None, float, np.ndarray, int]],
    parts: DetectionParts,
    detector: Detector,
    orientation: _Orientation,
    timings: dict[str, float],
) -> None:
    start = time.perf_counter()
    turns = round(orientation.rotation / 90) % 4
    upright = [np.ascontiguousarray(np.rot90(pixels, turns)) for _, _, pixels, _ in batch]
    for (pts, time_s, pixels, checksum), found in zip(batch, detector.screen_batch(upright), strict=True):
        dets = Detections.concat([found.blurred, found.unblurred])  # proposals too, for track verdicts
        blurs = np.arange(len(dets)) < len(found.blurred)
        boxes = _unrotate(dets, turns, pixels.shape[1], pixels.shape[0])
        parts.append(pts, time_s, boxes, blurs, checksum)
    timings["detect"] += time.perf_counter() - start


def _checksum(frame: av.VideoFrame) -> int:
    """`video.store.frame_checksum` of a decoded frame's luma."""
    return frame_checksum(frame.to_ndarray(format="gray"))


def _unrotate(dets: Detections, turns: int, width: int, height: int) -> Detections:
    """Boxes found in `np.rot90(image, turns)` as boxes of `image` (`width` x `height`)."""
    xyxy = dets.xyxy.copy()
    for step in range(turns, 0, -1):  # undo one counterclockwise quarter turn at a time
        before_width = width if step % 2 == 1 else height  # the image's width before this turn
        x1, y1, x2, y2 = xyxy.T.copy()
        xyxy = np.stack([before_width - y2, x1, before_width - y1, x2], axis=1)
    return Detections(xyxy, dets.scores, dets.class_id)


def _blur_pass(
    source: Path,
    partial: Path,
    container_format: str,
    boxes: list[Detections],
    detected: DetectedFrames,
    orientation: _Orientation,
    config: Config,
    timings: dict[str, float],
    progress: Progress | None,
) -> dict:
    """Decode `source` again, check each frame against pass 1's record (`detected`), blur its `boxes`,
    encode and remux into `partial` (flushed to disk). Returns the size and the streams copied and
    dropped."""
    with av.open(str(source)) as container:
        plan = plan_streams(container)
        stream_in = plan.video
        stream_in.thread_type = "AUTO"
        decoder = stream_in.codec_context
        with open(partial, "wb") as handle:
            # Timestamps as they are: no shift of the whole file to make the first B-frame's decoding
            # time non-negative (Matroska would move every frame by a few milliseconds).
            output = av.open(handle, "w", format=container_format, options={"avoid_negative_ts": "disabled"})
            try:
                output.metadata.update(allowed_metadata(container.metadata))
                encoder = {"crf": str(config.video.crf), "preset": config.video.preset}
                if container_format == "avi":  # AVI has no presentation times: frames in decoding order
                    encoder["bf"] = "0"
                stream_out = output.add_stream("libx264", options=encoder)
                stream_out.width, stream_out.height = decoder.width, decoder.height
                source_format = decoder.pix_fmt
                stream_out.pix_fmt = source_format if source_format in _X264_PIXEL_FORMATS else "yuv420p"
                stream_out.time_base = stream_in.time_base
                stream_out.codec_context.time_base = stream_in.time_base
                rate = stream_in.average_rate or stream_in.guessed_rate
                if rate:
                    stream_out.codec_context.framerate = rate
                for tag in ("color_range", "color_primaries", "color_trc", "colorspace"):
                    setattr(stream_out.codec_context, tag, getattr(decoder, tag))
                stream_out.metadata.update(allowed_metadata(stream_in.metadata))
                if plan.timecode:
                    stream_out.metadata["timecode"] = plan.timecode
                if orientation.matrix:
                    stream_out.set_display_matrix(orientation.matrix)
                copies = {}
                for stream in list(plan.copied):
                    if not _can_carry(output, container_format, getattr(stream, "name", None)):
                        plan.copied.remove(stream)
                        plan.dropped.append(
                            f"{describe(stream)}: the {container_format} output cannot hold it"
                        )
                        continue
                    copies[stream.index] = output.add_stream_from_template(stream)
                    copies[stream.index].metadata.update(allowed_metadata(stream.metadata))
                index = _remux(
                    container, plan, stream_out, copies, boxes, detected, config, timings, progress
                )
                start = time.perf_counter()
                output.mux(stream_out.encode())
                timings["encode"] += time.perf_counter() - start
            finally:
                output.close()
            handle.flush()
            os.fsync(handle.fileno())
        if index != len(boxes):
            raise ValueError(f"pass 2 decoded {index} frames, pass 1 {len(boxes)}")
        return {
            "width": decoder.width,
            "height": decoder.height,
            "copied": [describe(s) for s in plan.copied],
            "dropped": plan.dropped,
        }


def _can_carry(output: av.container.OutputContainer, container_format: str, codec: str | None) -> bool:
    """Whether `output` can hold a stream of `codec` copied as it is. MP4 and QuickTime take data
    tracks (GoPro `gpmd`, CAMM) that their codec list does not name."""
    return codec in output.supported_codecs or (codec == "bin_data" and container_format in ("mp4", "mov"))


def _remux(container, plan, stream_out, copies, boxes, detected, config, timings, progress) -> int:
    """Every packet of `container`: video decoded, checked against pass 1 (same timestamp, same pixels),
    blurred and encoded, the others copied. Returns the number of video frames."""
    index = 0
    start = time.perf_counter()
    for packet in container.demux(plan.video, *plan.copied):
        if packet.stream.index in copies:
            if packet.size:  # not the empty packet that ends each stream
                packet.stream = copies[packet.stream.index]
                stream_out.container.mux(packet)
            continue
        for frame in packet.decode():
            timings["decode"] += time.perf_counter() - start
            if index >= len(boxes):
                raise ValueError(f"pass 2 decoded more frames than pass 1 ({len(boxes)})")
            if frame.pts != detected.pts[index]:
                raise ValueError(f"frame {index}: pts {frame.pts} in pass 2, {detected.pts[index]} in pass 1")
            if _checksum(frame) != detected.checksums[index]:
                raise ValueError(f"frame {index} decodes to other pixels in pass 2 than in pass 1")
            start = time.perf_counter()
            if len(boxes[index]):
                frame = _blurred_frame(frame, boxes[index], config)
            else:
                frame.pict_type = av.video.frame.PictureType.NONE  # let the encoder choose
            if frame.pts is None:
                rate = plan.video.average_rate or Fraction(25)
                frame.pts = round(index / rate / plan.video.time_base)
            timings["blur"] += time.perf_counter() - start
            start = time.perf_counter()
            stream_out.container.mux(stream_out.encode(frame))
            timings["encode"] += time.perf_counter() - start
            index += 1
            if progress and index % _DETECT_FRAMES == 0:
                progress("blur", index, len(boxes))
            start = time.perf_counter()
    timings["decode"] += time.perf_counter() - start
    if progress:
        progress("blur", index, len(boxes))
    return index


def _blurred_frame(frame: av.VideoFrame, boxes: Detections, config: Config) -> av.VideoFrame:
    """`frame` with `boxes` blurred. A YUV 4:2:0 frame keeps its own samples wherever the blur left
    the pixels as they were (the BGR round trip would shift them by a grey level or two); only the
    changed pixels, and the chroma samples they share, come from the blurred picture."""
    pixels = frame.to_ndarray(format="bgr24")
    blurred_pixels = anonymize(pixels, boxes, config.blur)
    blurred = av.VideoFrame.from_ndarray(blurred_pixels, format="bgr24")
    if frame.format.name in ("yuv420p", "yuvj420p") and frame.width % 2 == 0 and frame.height % 2 == 0:
        converted = blurred.reformat(format=frame.format.name).to_ndarray()
        planes = frame.to_ndarray()
        height, width = pixels.shape[:2]
        new_luma, luma = converted[:height], planes[:height]
        new_chroma = converted[height:].reshape(2, height // 2, width // 2)
        chroma = planes[height:].reshape(2, height // 2, width // 2)
        for r0, r1, c0, c1 in _touched_regions(boxes, config, width, height):
            changed = np.any(blurred_pixels[r0:r1, c0:c1] != pixels[r0:r1, c0:c1], axis=2)
            luma[r0:r1, c0:c1][changed] = new_luma[r0:r1, c0:c1][changed]
            shared = changed.reshape((r1 - r0) // 2, 2, (c1 - c0) // 2, 2).any(axis=(1, 3))
            rows, cols = slice(r0 // 2, r1 // 2), slice(c0 // 2, c1 // 2)
            chroma[:, rows, cols][:, shared] = new_chroma[:, rows, cols][:, shared]
        blurred = av.VideoFrame.from_ndarray(planes, format=frame.format.name)
        for tag in ("color_range", "colorspace"):
            setattr(blurred, tag, getattr(frame, tag))
    blurred.pts, blurred.time_base = frame.pts, frame.time_base
    return blurred


def _touched_regions(boxes: Detections, config: Config, width: int, height: int) -> list[tuple[int, ...]]:
    """Per box, the rows and columns `(r0, r1, c0, c1)`, at even bounds, outside which `anonymize`
    leaves every pixel as it was: the box grown by the blur's margin, and a pixel more."""
    regions = []
    for x1, y1, x2, y2 in boxes.xyxy.astype(np.float64):
        mx, my = config.blur.margin * (x2 - x1) + 1, config.blur.margin * (y2 - y1) + 1
        c0, c1 = max(int(np.floor(x1 - mx)) // 2 * 2, 0), min(int(np.ceil(x2 + mx) + 1) // 2 * 2, width)
        r0, r1 = max(int(np.floor(y1 - my)) // 2 * 2, 0), min(int(np.ceil(y2 + my) + 1) // 2 * 2, height)
        if c0 < c1 and r0 < r1:
            regions.append((r0, r1, c0, c1))
    return regions
