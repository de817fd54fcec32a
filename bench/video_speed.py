"""Video blurring: speed, and what tracks add (leak rate and flicker with tracking on and off).

    python bench/video_speed.py speed [--frames 60] [--set detect.device=cuda:0 ...]
    python bench/video_speed.py tracking [--photos 24] [--frames 30] [--split dev]

`speed` writes a 1280x720 H.264 clip (a window panning over the two dashcam sample photos, CRF 18),
blurs it with `video.pipeline.blur_video` (both passes, as `streetblur blur clip.mp4` does) and
prints frames/s with the share of decode, detect, link, blur and encode; then blurs the same frames
as JPEG photos (`blurring.pipeline.blur_image_bytes`, as `streetblur blur` does a folder of frames).

`tracking` turns labelled photos of the `dev` split (street-faces-plates: faces and plates; and
plates-dashcam) into clips with exact boxes in every frame (`eval.sequences.moving_crop`: pan,
zoom, jitter, motion blur), encodes them as H.264 at CRF 28 (compression), blurs each once, and
scores the boxes each setting blurs: tracking off (the detections alone, from the audit file's
`detector` rows) and on (all rows), with `eval.sequences.sequence_figures`. The photos come from
$STREETBLUR_DATASETS, else ../shared/datasets beside the repository.

Not a test: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow.parquet as pq
import simplejpeg

from blurring.config import Config, load_config, parse_overrides
from blurring.pipeline import blur_image_bytes
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector
from eval.datasets import load_split
from eval.sequences import moving_crop, sequence_figures
from video.pipeline import blur_video

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("STREETBLUR_DATASETS") or REPO.parent / "shared" / "datasets")
STAGES = ("decode", "detect", "link", "blur", "encode")


def write_h264(path: Path, frames: list[np.ndarray], crf: int, rate: int = 25) -> None:
    """`frames` (BGR) as an H.264 MP4 at `rate` frames/s."""
    with av.open(str(path), "w") as output:
        stream = output.add_stream("libx264", rate=rate, options={"crf": str(crf)})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for index, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="bgr24")
            frame.pts, frame.time_base = index, Fraction(1, rate)
            output.mux(stream.encode(frame))
        output.mux(stream.encode())


def speed(config: Config, frames: int) -> None:
    detector = Detector(config.detect)
    print(f"runtime {detector.runtime}, precision {detector.precision}, {os.cpu_count()} CPUs")
    pictures = []
    for name in ("dashcam_0.jpg", "dashcam_1.jpg"):
        photo = cv2.resize(cv2.imread(str(REPO / "samples" / name)), None, fx=1.6, fy=1.6)
        pictures += moving_crop(photo, Detections(), frames // 2, (1280, 720)).frames
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        write_h264(folder / "clip.mp4", pictures, crf=18)
        blur_video(folder / "clip.mp4", folder / "warm.mp4", detector, config, folder / "w0")  # warm-up
        start = time.perf_counter()
        outcome = blur_video(folder / "clip.mp4", folder / "out.mp4", detector, config, folder / "w1")
        wall = time.perf_counter() - start
        assert outcome.status == "blurred", outcome.error
        shares = ", ".join(f"{s} {100 * outcome.timings_s[s] / wall:.0f}%" for s in STAGES)
        print(
            f"video 1280x720 H.264, {outcome.frames} frames: {outcome.frames / wall:.2f} frames/s ({shares})"
        )
        with av.open(str(folder / "clip.mp4")) as container:
            decoded = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
        jpegs = [simplejpeg.encode_jpeg(p, quality=95, colorspace="BGR") for p in decoded]
        totals = dict.fromkeys(("decode", "detect", "blur", "encode"), 0.0)
        start = time.perf_counter()
        for data in jpegs:
            result = blur_image_bytes(data, "jpeg", detector, config)
            for stage in totals:
                totals[stage] += result.timings_ms.get(stage, 0.0) / 1000
        wall = time.perf_counter() - start
        shares = ", ".join(f"{s} {100 * t / wall:.0f}%" for s, t in totals.items())
        print(f"the same frames as JPEG photos: {len(jpegs) / wall:.2f} frames/s ({shares})")


def tracking(config: Config, photos: int, frames: int, split: str) -> None:
    detector = Detector(config.detect)
    images = []
    for name in ("street-faces-plates", "plates-dashcam"):
        labelled = [im for im in load_split(DATASETS / name, split) if len(im.boxes)]
        images += labelled[:: max(1, len(labelled) // (photos // 2))][: photos // 2]
    figures: dict[str, list[dict]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        for number, image in enumerate(images):
            clip = moving_crop(cv2.imread(str(image.path)), image.boxes, frames, (640, 384), seed=number)
            write_h264(folder / "clip.mp4", clip.frames, crf=28)
            outcome = blur_video(
                folder / "clip.mp4",
                folder / "out.mp4",
                detector,
                config,
                folder / "work",
                folder / "boxes.pq",
            )
            assert outcome.status == "blurred", outcome.error
            rows = pq.read_table(folder / "boxes.pq").to_pandas()
            for setting, chosen in (("off", rows[rows.source == "detector"]), ("on", rows)):
                blurred = []
                for index in range(frames):
                    here = chosen[chosen.frame == index]
                    blurred.append(
                        Detections(
                            here[["x1", "y1", "x2", "y2"]].to_numpy(),
                            here.score.to_numpy(),
                            [CLASS_NAMES.index(c) for c in here["class"]],
                        )
                    )
                figures[setting].append(
                    sequence_figures(clip.boxes, clip.objects, blurred, (640, 384), config.blur)
                )
    print(f"{len(images)} clips of {frames} frames at 640x384 from {split} photos, H.264 CRF 28")
    print(
        "| tracking | objects | object-frames | blurred fraction | leaked objects (leak rate) "
        "| flicker frames (rate) |"
    )
    print("|---|---|---|---|---|---|")
    for setting, rows in figures.items():
        total = {
            k: sum(r[k] for r in rows)
            for k in ("objects", "object_frames", "leaked_objects", "flicker_frames")
        }
        blurred = sum(r["blurred_fraction"] * r["object_frames"] for r in rows) / total["object_frames"]
        print(
            f"| {setting} | {total['objects']} | {total['object_frames']} | {blurred:.3f} | "
            f"{total['leaked_objects']} ({total['leaked_objects'] / total['objects']:.3f}) | "
            f"{total['flicker_frames']} ({total['flicker_frames'] / total['object_frames']:.4f}) |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["speed", "tracking"])
    parser.add_argument("--frames", type=int, help="frames per clip (speed: 60, tracking: 30)")
    parser.add_argument("--photos", type=int, default=24, help="labelled photos turned into clips")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE")
    args = parser.parse_args()
    config = load_config(overrides=parse_overrides(args.set))
    if args.what == "speed":
        speed(config, args.frames or 60)
    else:
        tracking(config, args.photos, args.frames or 30, args.split)


if __name__ == "__main__":
    main()
