"""What tracks add to video blurring, on labelled clips: leak rate and flicker with tracking on and off.

Each labelled photo becomes a clip with exact boxes in every frame (`eval.sequences.moving_crop`),
encoded as H.264 at `CLIP_CRF` (compression) and blurred once by `video.pipeline.blur_video`. Its
audit file says which boxes came from the detector and which from tracks, so the same pass scores
both settings: tracking off blurs the `detector` rows alone, tracking on all of them.
"""

from __future__ import annotations

import tempfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq

from blurring.config import Config
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector
from eval.datasets import LabelledImage
from eval.sequences import moving_crop, sequence_figures
from video.pipeline import blur_video

CLIP_CRF = 28  # how the clips are compressed before they are blurred
COUNTS = ("objects", "object_frames", "leaked_objects", "flicker_frames")


def write_h264(path: Path, frames: list[np.ndarray], crf: int, rate: int = 25) -> None:
    """`frames` (BGR, one size) as an H.264 MP4 at `rate` frames/s."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
            frame.pts, frame.time_base = index, Fraction(1, rate)
            output.mux(stream.encode(frame))
        output.mux(stream.encode())


def tracking_figures(
    images: list[LabelledImage], detector: Detector, config: Config, frames: int, size: tuple[int, int]
) -> dict:
    """Figures of clips of `frames` frames of `size` made from `images`, blurred with `config`: per
    setting ("off", "on") the summed `eval.sequences.sequence_figures` counts and the rates."""
    totals = {setting: dict.fromkeys(COUNTS, 0) | {"blurred_object_frames": 0.0} for setting in ("off", "on")}
    with tempfile.TemporaryDirectory(prefix="streetblur-video-eval-") as scratch:
        folder = Path(scratch)
        for number, image in enumerate(images):
            clip = moving_crop(cv2.imread(str(image.path)), image.boxes, frames, size, seed=number)
            write_h264(folder / "clip.mp4", clip.frames, CLIP_CRF)
            outcome = blur_video(
                folder / "clip.mp4",
                folder / "out.mp4",
                detector,
                config,
                folder / "parts",
                folder / "boxes.pq",
            )
            if outcome.status != "blurred":
                raise RuntimeError(f"{image.path}: {outcome.error}")
            rows = pq.read_table(folder / "boxes.pq").to_pandas()
            for setting, chosen in (("off", rows[rows.source == "detector"]), ("on", rows)):
                blurred = [_boxes(chosen[chosen.frame == index]) for index in range(frames)]
                figures = sequence_figures(clip.boxes, clip.objects, blurred, size, config.blur)
                for name in COUNTS:
                    totals[setting][name] += figures[name]
                totals[setting]["blurred_object_frames"] += (
                    figures["blurred_fraction"] * figures["object_frames"]
                )
    result = {"clips": len(images), "frames": frames, "size": list(size), "clip_crf": CLIP_CRF}
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
    """`tracking_figures` as a Markdown table."""
    lines = [
        f"{result['clips']} clips of {result['frames']} frames at {result['size'][0]}x{result['size'][1]}, "
        f"H.264 CRF {result['clip_crf']}",
        "",
        "| tracking | objects | object-frames | blurred fraction | leaked objects | leak rate "
        "| flicker frames | flicker rate |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for setting in ("off", "on"):
        f = result[setting]
        lines.append(
            f"| {setting} | {f['objects']} | {f['object_frames']} | {f['blurred_fraction']:.3f} | "
            f"{f['leaked_objects']} | {f['leak_rate']:.3f} | "
            f"{f['flicker_frames']} | {f['flicker_rate']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def _boxes(rows) -> Detections:
    return Detections(
        rows[["x1", "y1", "x2", "y2"]].to_numpy(),
        rows.score.to_numpy(),
        [CLASS_NAMES.index(c) for c in rows["class"]],
    )
