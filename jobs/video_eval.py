"""What tracks add to video blurring, on labelled clips: leak rate and flicker with tracking on and off.

Clips are of two kinds: each labelled photo made a clip with exact boxes in every frame
(`eval.sequences.moving_crop`, `tracking_figures`), or the labelled frames of real videos in runs of
consecutive frames at their own rate, their boxes linked into approximate objects
(`eval.sequences.video_frame_clip`, `video_frame_figures`). Each clip is encoded as H.264 at
`CLIP_CRF` (compression) and blurred once by `video.pipeline.blur_video`. Its audit file says which
boxes blurred on their own (`detector`), because of their track's verdict (`track-verdict`) or were
added by a track (`track`), so the same pass scores every setting: tracking off blurs the `detector`
rows alone; tracking on, all rows; and, where the config has track verdicts, tracking on without them
is replayed from the `detector` rows (linked alone, as `video.track_verdict=false` links them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq

from blurring.config import Config
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector
from detection.tracking import tracked_boxes
from eval.datasets import LabelledImage
from eval.metrics import overlaps_nothing
from eval.sequences import LabelledClip, moving_crop, sequence_figures, video_frame_clip
from video.pipeline import blur_video

CLIP_CRF = 28  # how the clips are compressed before they are blurred
COUNTS = ("objects", "object_frames", "leaked_objects", "flicker_frames", "false_boxes")
SETTINGS = {
    "off": "off",
    "on_without_verdict": "on, without track verdicts",
    "on": "on",
}
"""Each setting's key in the figures, and its name in the table. `on_without_verdict` only where
`video.track_verdict` is on (else `on` is that setting); `on` is the config's own setting."""


def write_h264(
    path: Path, frames: list[np.ndarray], crf: int, rate: int | Fraction = 25, keyframe_every: int = 250
) -> None:
    """`frames` (BGR, one size) as an H.264 MP4 at `rate` frames/s, a keyframe at most every
    `keyframe_every` frames."""
    with av.open(str(path), "w") as output:
        options = {"crf": str(crf), "g": str(keyframe_every)}
        stream = output.add_stream("libx264", rate=rate, options=options)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
            frame.pts, frame.time_base = index, 1 / Fraction(rate)
            output.mux(stream.encode(frame))
        output.mux(stream.encode())


def tracking_figures(
    images: list[LabelledImage], detector: Detector, config: Config, frames: int, size: tuple[int, int]
) -> dict:
    """Figures of moving-crop clips of `frames` frames of `size` made from `images` (25 frames/s),
    blurred with `config`: per setting (`SETTINGS`) the summed `eval.sequences.sequence_figures`
    counts and the rates."""
    clips = (
        (moving_crop(cv2.imread(str(image.path)), image.boxes, frames, size, seed=number), 25)
        for number, image in enumerate(images)
    )
    result = {"clips_from": "photos", "clips": len(images), "frames": frames, "size": list(size)}
    return result | {"clip_crf": CLIP_CRF} | _clip_figures(clips, detector, config)


def video_frame_figures(
    runs: list[tuple[np.ndarray, list[LabelledImage]]], detector: Detector, config: Config
) -> dict:
    """Figures of clips of real video frames: `runs` of consecutive frames (`eval.sequences.
    video_frame_runs`, timestamps in seconds), each encoded at its own frame rate, its boxes linked
    into objects with `config.video`'s link settings; as `tracking_figures`."""
    clips = (
        (
            video_frame_clip(times, images, config.video.link_iou, config.video.link_distance),
            (1 / Fraction(float(np.diff(times).min()))).limit_denominator(1001),
        )
        for times, images in runs
    )
    frames = sum(len(images) for _, images in runs)
    result = {"clips_from": "video-frames", "clips": len(runs), "frames": frames, "clip_crf": CLIP_CRF}
    return result | _clip_figures(clips, detector, config)


def _clip_figures(
    clips: Iterable[tuple[LabelledClip, int | Fraction]], detector: Detector, config: Config
) -> dict:
    """Each `(clip, frame rate)` encoded, blurred once and scored: per setting (`SETTINGS`) the summed
    `sequence_figures` counts, `false_boxes` (boxes blurred that share no area with a labelled box of
    their frame) and the rates; `track_boxes`, the boxes tracks added or blurred by their verdict, and
    `verdict_boxes`, those blurred by their verdict."""
    video = config.video
    replay = video.tracking and video.track_verdict
    settings = [s for s in SETTINGS if replay or s != "on_without_verdict"]
    totals = {setting: dict.fromkeys(COUNTS, 0) | {"blurred_object_frames": 0.0} for setting in settings}
    track_boxes = verdict_boxes = 0
    with tempfile.TemporaryDirectory(prefix="streetblur-video-eval-") as scratch:
        folder = Path(scratch)
        for number, (clip, rate) in enumerate(clips):
            write_h264(folder / "clip.mp4", clip.frames, CLIP_CRF, rate)
            outcome = blur_video(
                folder / "clip.mp4",
                folder / "out.mp4",
                detector,
                config,
                folder / "parts",
                folder / "boxes.pq",
            )
            if outcome.status != "blurred":
                raise RuntimeError(f"clip {number}: {outcome.error}")
            rows = pq.read_table(folder / "boxes.pq").to_pandas()
            track_boxes += int((rows.source != "detector").sum())
            verdict_boxes += int((rows.source == "track-verdict").sum())
            size = clip.frames[0].shape[1::-1]
            own = [
                _boxes(rows[(rows.source == "detector") & (rows.frame == i)]) for i in range(len(clip.frames))
            ]
            chosen = {"off": own, "on": [_boxes(rows[rows.frame == i]) for i in range(len(clip.frames))]}
            if replay:
                times = np.arange(len(clip.frames)) / float(rate)
                chosen["on_without_verdict"] = _without_verdicts(own, times, config)
            for setting in settings:
                blurred = chosen[setting]
                figures = sequence_figures(clip.boxes, clip.objects, blurred, size, config.blur)
                figures["false_boxes"] = sum(
                    int(overlaps_nothing(b, truth).sum())
                    for b, truth in zip(blurred, clip.boxes, strict=True)
                )
                for name in COUNTS:
                    totals[setting][name] += figures[name]
                totals[setting]["blurred_object_frames"] += (
                    figures["blurred_fraction"] * figures["object_frames"]
                )
    result: dict = {"track_boxes": track_boxes, "verdict_boxes": verdict_boxes}
    for setting, counts in totals.items():
        object_frames = max(counts["object_frames"], 1)
        result[setting] = {
            **{name: counts[name] for name in COUNTS},
            "blurred_fraction": round(counts["blurred_object_frames"] / object_frames, 4),
            "leak_rate": round(counts["leaked_objects"] / max(counts["objects"], 1), 4),
            "flicker_rate": round(counts["flicker_frames"] / object_frames, 4),
        }
    return result


def markdown_table(result: dict) -> str:
    """`tracking_figures` or `video_frame_figures` as a Markdown table."""
    if result["clips_from"] == "photos":
        width, height = result["size"]
        made = f"{result['clips']} clips of {result['frames']} frames at {width}x{height}"
    else:
        made = f"{result['clips']} clips of consecutive video frames, {result['frames']} frames in all"
    lines = [
        f"{made}, H.264 CRF {result['clip_crf']}; tracks added {result['track_boxes']} boxes "
        f"({result['verdict_boxes']} of them proposals blurred by their track's verdict)",
        "",
        "| tracking | objects | object-frames | blurred fraction | leaked objects | leak rate "
        "| flicker frames | flicker rate | boxes on no labelled object |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for setting, name in SETTINGS.items():
        if setting not in result:
            continue
        f = result[setting]
        lines.append(
            f"| {name} | {f['objects']} | {f['object_frames']} | {f['blurred_fraction']:.3f} | "
            f"{f['leaked_objects']} | {f['leak_rate']:.3f} | "
            f"{f['flicker_frames']} | {f['flicker_rate']:.4f} | {f['false_boxes']} |"
        )
    return "\n".join(lines) + "\n"


def _without_verdicts(own: list[Detections], times: np.ndarray, config: Config) -> list[Detections]:
    """Per frame, what `video.track_verdict=false` blurs: the boxes that blur on their own, `own`,
    linked alone, and the boxes their tracks add."""
    video = config.video
    tracked = tracked_boxes(
        own,
        [np.ones(len(d), bool) for d in own],
        times,
        tracking=True,
        track_verdict=False,
        max_gap_s=video.max_gap_s,
        pad_frames=video.pad_frames,
        min_iou=video.link_iou,
        max_distance=video.link_distance,
    )
    per_frame = [[d] for d in own]
    for frame, _, boxes in tracked.added:
        per_frame[frame].append(boxes)
    return [Detections.concat(boxes) for boxes in per_frame]


def _boxes(rows) -> Detections:
    return Detections(
        rows[["x1", "y1", "x2", "y2"]].to_numpy(),
        rows.score.to_numpy(),
        [CLASS_NAMES.index(c) for c in rows["class"]],
    )
