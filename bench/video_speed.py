"""Video blurring: speed, and what tracks add (leak rate and flicker with tracking on and off).

    python bench/video_speed.py speed [--frames 60] [--set detect.device=cuda:0 ...]
    python bench/video_speed.py tracking [--photos 24] [--frames 30] [--split dev]
    python bench/video_speed.py job [--frames 480] [--actors 2]

`speed` writes a 1280x720 H.264 clip (a window panning over the two dashcam sample photos, CRF 18),
blurs it with `video.pipeline.blur_video` (both passes, as `streetblur blur clip.mp4` does) and
prints frames/s with the share of decode, detect, link, blur and encode; then blurs the same frames
as JPEG photos (`blurring.pipeline.blur_image_bytes`, as `streetblur blur` does a folder of frames).

`job` blurs one such clip (longer, a keyframe every 2 s) with the Ray batch job on a local Ray, once
with one actor per video (`--video-chunk-mb 0`) and once cut into chunks spread over the actors,
and prints each run's wall time and frames/s: what chunking gives when there are fewer videos than
actors (the end of every job).

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
from pathlib import Path

import av
import cv2
import simplejpeg

from blurring.config import Config, load_config, parse_overrides
from blurring.pipeline import blur_image_bytes
from detection.detections import Detections
from detection.detector import Detector
from eval.datasets import load_split
from eval.sequences import moving_crop
from jobs.batch.job import JobOptions, run_job
from jobs.video_eval import markdown_table, tracking_figures, write_h264
from video.pipeline import blur_video

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("STREETBLUR_DATASETS") or REPO.parent / "shared" / "datasets")
STAGES = ("decode", "detect", "link", "blur", "encode")


def _dashcam_clip(path: Path, frames: int, keyframe_every: int = 250) -> None:
    """A 1280x720 H.264 clip (CRF 18, 25 frames/s) of a window panning over the two dashcam samples."""
    pictures = []
    for name in ("dashcam_0.jpg", "dashcam_1.jpg"):
        photo = cv2.resize(cv2.imread(str(REPO / "samples" / name)), None, fx=1.6, fy=1.6)
        pictures += moving_crop(photo, Detections(), frames // 2, (1280, 720)).frames
    write_h264(path, pictures, crf=18, keyframe_every=keyframe_every)


def speed(config: Config, frames: int) -> None:
    detector = Detector(config.detect)
    print(f"runtime {detector.runtime}, precision {detector.precision}, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        _dashcam_clip(folder / "clip.mp4", frames)
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


def job(config: Config, frames: int, actors: int) -> None:
    print(f"{os.cpu_count()} CPUs, {actors} actors")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "in").mkdir()
        _dashcam_clip(folder / "in" / "clip.mp4", frames, keyframe_every=50)
        size_mb = (folder / "in" / "clip.mp4").stat().st_size / 2**20
        # one actor per video; then chunks in as many batches as there are actors
        for name, chunk_mb in (("one actor per video", 0.0), ("chunked", size_mb / actors * 0.999)):
            options = JobOptions(
                str(folder / "in"), str(folder / name), actors=actors, video_chunk_mb=chunk_mb, config=config
            )
            summary = run_job(options)
            assert summary["blurred"] == 1, summary
            wall = summary["wall_s"]
            print(f"{name}: {wall:.1f} s, {frames / wall:.2f} frames/s (job wall time, Ray start included)")


def tracking(config: Config, photos: int, frames: int, split: str) -> None:
    images = []
    for name in ("street-faces-plates", "plates-dashcam"):
        labelled = [im for im in load_split(DATASETS / name, split) if len(im.boxes)]
        images += labelled[:: max(1, len(labelled) // (photos // 2))][: photos // 2]
    result = tracking_figures(images, Detector(config.detect), config, frames, (640, 384))
    print(f"{split} photos of street-faces-plates and plates-dashcam")
    print(markdown_table(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["speed", "tracking", "job"])
    parser.add_argument("--frames", type=int, help="frames per clip (speed: 60, tracking: 30, job: 480)")
    parser.add_argument("--actors", type=int, default=2, help="job: detector actors")
    parser.add_argument("--photos", type=int, default=24, help="labelled photos turned into clips")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE")
    args = parser.parse_args()
    config = load_config(overrides=parse_overrides(args.set))
    if args.what == "speed":
        speed(config, args.frames or 60)
    elif args.what == "job":
        job(config, args.frames or 480, args.actors)
    else:
        tracking(config, args.photos, args.frames or 30, args.split)


if __name__ == "__main__":
    main()
