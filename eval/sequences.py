"""Labelled sequences for scoring video blurring: clips with known boxes in every frame, and the
figures that matter over time.

`moving_crop` turns one labelled photo into a clip by moving a crop window over it (pan, zoom, jitter,
now and then motion blur), so every frame's boxes are exact. `video_frame_runs` and `video_frame_clip`
assemble the labelled frames of a real video (files named `VIDEO#t=SECONDS.jpg`) into clips of
consecutive frames; their labels name no objects across frames, so the boxes are linked into objects
by the project's own linker (`detection.tracking.link_tracks`): those identities are approximate.
`sequence_figures` scores what a video blur covered, per labelled object over the frames: the blurred
fraction of object-frames, the **leak rate** (objects left visible in at least one frame: one frame
is enough to recognise a face) and **flicker** (frames where an object is visible between frames
where it is blurred).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from blurring import BlurConfig, blur_mask
from detection.detections import Detections
from detection.tracking import link_tracks
from eval.datasets import LabelledImage, video_frame_time
from eval.metrics import BLURRED_COVERAGE, covered_fraction

MIN_VISIBLE = 0.5  # an object counts in a frame when at least this share of its box is in the frame


@dataclass(frozen=True)
class LabelledClip:
    """Frames (BGR, one size) and per frame the exact boxes of the objects; `objects[i][j]` is the
    number of the object that box j of frame i shows (the same object across frames)."""

    frames: list[np.ndarray]
    boxes: list[Detections]
    objects: list[np.ndarray]


def moving_crop(
    image: np.ndarray, boxes: Detections, frames: int, size: tuple[int, int], seed: int = 0
) -> LabelledClip:
    """A clip of `frames` frames of `size` (width, height): a window panning across `image`, zooming in
    and out by up to 20%, jittering by a few pixels and with motion blur on one frame in five; each
    frame's boxes are the labelled `boxes` moved and scaled with the window (those less than
    `MIN_VISIBLE` inside it left out)."""
    rng = np.random.default_rng(seed)
    height, width = image.shape[:2]
    out_w, out_h = size
    base = min(width / out_w, height / out_h) * 0.8  # source pixels per output pixel at zoom 1
    clip = LabelledClip([], [], [])
    for i in range(frames):
        phase = i / max(frames - 1, 1)
        scale = base * (1 + 0.2 * np.sin(2 * np.pi * phase))
        win_w, win_h = out_w * scale, out_h * scale
        x0 = (width - win_w) * phase + rng.normal(0, 2)
        y0 = (height - win_h) * (0.5 + 0.3 * np.sin(np.pi * phase)) + rng.normal(0, 2)
        x0, y0 = float(np.clip(x0, 0, width - win_w)), float(np.clip(y0, 0, height - win_h))
        warp = np.array([[1 / scale, 0, -x0 / scale], [0, 1 / scale, -y0 / scale]], np.float32)
        frame = cv2.warpAffine(image, warp, size, flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT)
        if i % 5 == 4:
            kernel = np.zeros((1, 9), np.float32)
            kernel[0, :] = 1 / 9
            frame = cv2.filter2D(frame, -1, kernel)
        moved = boxes.scaled(1 / scale, (-x0 / scale, -y0 / scale))
        keep = _visible(moved, out_w, out_h)
        clip.frames.append(frame)
        clip.boxes.append(moved[keep].clipped(out_w, out_h))
        clip.objects.append(np.flatnonzero(keep))
    return clip


def video_frame_runs(images: Sequence[LabelledImage]) -> list[tuple[np.ndarray, list[LabelledImage]]]:
    """`images`, frames of videos named `VIDEO#t=SECONDS.jpg`, as runs of consecutive frames:
    `(timestamps in seconds, frames)` per video in time order, cut wherever two frames lie further
    apart than the video's smallest step (its frame interval: frames in between are missing).
    `ValueError` for a file not named so."""
    by_video: dict[str, list[tuple[float, LabelledImage]]] = {}
    for image in images:
        found = video_frame_time(image.path.name)
        if found is None:
            raise ValueError(f"{image.path.name}: not a video's frame (named VIDEO#t=SECONDS.jpg)")
        by_video.setdefault(found[0], []).append((found[1], image))
    runs = []
    for frames in by_video.values():
        frames.sort(key=lambda pair: pair[0])
        times = np.array([t for t, _ in frames])
        step = np.diff(times).min() if len(times) > 1 else 0.0
        for part in np.split(np.arange(len(frames)), np.flatnonzero(np.diff(times) > step + 1e-6) + 1):
            runs.append((times[part], [frames[i][1] for i in part]))
    return runs


def video_frame_clip(
    times: np.ndarray, images: Sequence[LabelledImage], min_iou: float = 0.1, max_distance: float = 2.0
) -> LabelledClip:
    """The clip of one run of consecutive frames (`video_frame_runs`): the frames as read, their
    labelled boxes, and objects linked from frame to frame by `link_tracks` (overlap with the box
    moved on by its velocity, else centre distance; `min_iou`, `max_distance` as `video.link_iou`,
    `video.link_distance`), a box joining an object of the frame just before or starting a new one.
    The labels name no objects, so these identities are approximate."""
    boxes = [image.boxes for image in images]
    step = float(np.diff(times).min()) if len(times) > 1 else 0.0
    objects = [np.full(len(b), -1) for b in boxes]
    for number, track in enumerate(link_tracks(boxes, times, step, min_iou, max_distance)):
        for frame, index in zip(track.frames, track.det_index, strict=True):
            objects[frame][index] = number
    return LabelledClip([cv2.imread(str(image.path)) for image in images], boxes, objects)


def _visible(boxes: Detections, width: int, height: int) -> np.ndarray:
    """Whether at least `MIN_VISIBLE` of each box's area is inside the frame."""
    xyxy = boxes.xyxy
    inside_w = np.clip(np.minimum(xyxy[:, 2], width) - np.maximum(xyxy[:, 0], 0), 0, None)
    inside_h = np.clip(np.minimum(xyxy[:, 3], height) - np.maximum(xyxy[:, 1], 0), 0, None)
    return inside_w * inside_h >= MIN_VISIBLE * np.maximum(boxes.area, 1e-9)


def sequence_figures(
    clip_boxes: Sequence[Detections],
    clip_objects: Sequence[np.ndarray],
    blurred: Sequence[Detections],
    size: tuple[int, int],
    config: BlurConfig | None = None,
) -> dict[str, float | int]:
    """Per-object figures of one clip: `blurred` holds, per frame, the boxes the video blur covered.

    An object is blurred in a frame when `BLURRED_COVERAGE` of its box lies under the mask that
    `blurring` applies to those boxes with `config` (default: the default blur), as `streetblur eval` scores
    photos. Returns the counts
    (objects, object-frames, leaked objects, flicker frames) and `blurred_fraction`, `leak_rate`
    (leaked / objects) and `flicker_rate` (flicker frames / object-frames).
    """
    width, height = size
    history: dict[int, list[bool]] = {}
    for truth, objects, covered in zip(clip_boxes, clip_objects, blurred, strict=True):
        mask = blur_mask(height, width, covered, config or BlurConfig())
        hidden = covered_fraction(truth.xyxy, mask) >= BLURRED_COVERAGE - 1e-9
        for number, is_hidden in zip(objects, hidden, strict=True):
            history.setdefault(int(number), []).append(bool(is_hidden))
    object_frames = sum(len(h) for h in history.values())
    leaked = sum(not all(h) for h in history.values())
    flicker = 0
    for states in history.values():
        seen = np.array(states)
        before = np.maximum.accumulate(seen)
        after = np.maximum.accumulate(seen[::-1])[::-1]
        flicker += int((~seen & before & after).sum())
    return {
        "objects": len(history),
        "object_frames": object_frames,
        "leaked_objects": leaked,
        "flicker_frames": flicker,
        "blurred_fraction": sum(sum(h) for h in history.values()) / object_frames if object_frames else 1.0,
        "leak_rate": leaked / len(history) if history else 0.0,
        "flicker_rate": flicker / object_frames if object_frames else 0.0,
    }
