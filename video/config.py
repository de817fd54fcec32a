"""The video options, `Config.video` (`--set video.crf=20`). Imports nothing heavy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath

VIDEO_SUFFIXES: tuple[str, ...] = (".mp4", ".mov", ".mkv", ".avi")
"""Inputs read as videos, and the containers written (the output keeps its input's suffix)."""


def is_video_key(key: str) -> bool:
    """Whether an input named `key` (a storage key or a file name) is read as a video."""
    return PurePosixPath(key).suffix.lower() in VIDEO_SUFFIXES


# Container and stream metadata copied to the output; every other key (encoder, title, comment,
# vendor tags...) is dropped. The GPS position and time of capture are kept on purpose: dashcam
# users need them, and they describe the place, not a person.
METADATA_KEYS: tuple[str, ...] = (
    "creation_time",
    "date",
    "location",
    "location-eng",
    "com.apple.quicktime.location.ISO6709",
    "com.apple.quicktime.creationdate",
    "com.apple.quicktime.make",
    "com.apple.quicktime.model",
    "make",
    "model",
    "language",
    "handler_name",
    "timecode",
)


@dataclass(frozen=True)
class VideoConfig:
    """How videos are encoded and how detections are linked into tracks."""

    crf: int = 18  # libx264 constant rate factor: 18 is about visually lossless for most sources
    preset: str = "medium"  # libx264 preset: slower is smaller at the same quality
    tracking: bool = True  # link detections into tracks and blur the frames the detector missed
    # Link the proposals that do not blur on their own too; a track blurs whole (every box, its gap
    # fills and padding) when at least one of its boxes blurs on its own. False: link blurring boxes only.
    track_verdict: bool = True
    max_gap_s: float = 0.5  # fill gaps in a track up to this long (seconds, from the frames' timestamps)
    pad_frames: int = 3  # also blur this many frames before a track starts and after it ends
    # A detection joins a track when it overlaps the track's predicted box by this IoU, or when its
    # centre lies within `link_distance` box sizes of the predicted centre (small, fast objects).
    link_iou: float = 0.1
    link_distance: float = 2.0

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise ValueError(f"video.crf must be in [0, 51], got {self.crf}")
        if self.max_gap_s < 0 or self.pad_frames < 0:
            raise ValueError(f"need video.max_gap_s >= 0 and pad_frames >= 0: {self}")
        if not 0 < self.link_iou <= 1 or self.link_distance < 0:
            raise ValueError(f"need 0 < video.link_iou <= 1 and link_distance >= 0: {self}")
