"""`streetblur blur`: blur a photo or a video, or a folder of them, on this machine."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from jobs.cli.options import MODELS_HELP, add_config_options, config_from_args


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`streetblur blur`."""
    p = commands.add_parser("blur", help="blur faces and plates in a photo, a video or a folder")
    p.add_argument(
        "input", type=Path, help="a photo or video (.mp4 .mov .mkv .avi), or a folder searched recursively"
    )
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output photo or video (format from its extension), or folder: for a folder input, or a "
        "file's folder given ending in / (created if missing); never the input or a folder around it",
    )
    add_config_options(p, MODELS_HELP)
    # The defaults of `blurring.config.Config`, which tests/test_cli.py checks against these.
    p.add_argument("--tile-size", type=int, help="tile images larger than this (0: no tiling) (default: 640)")
    p.add_argument(
        "--tile-overlap", type=float, help="tile overlap as a fraction of the tile size (default: 0.2)"
    )
    p.add_argument(
        "--panorama",
        choices=["auto", "on", "off"],
        help="wrap the left/right seam (auto: 2:1) (default: auto)",
    )
    p.add_argument(
        "--mode", choices=["gaussian", "pixelate", "solid"], help="how boxes are obscured (default: gaussian)"
    )
    p.add_argument(
        "--margin",
        type=float,
        help="grow boxes by this fraction of their size before blurring (default: 0.3)",
    )
    p.add_argument(
        "--max-pixels", type=int, help="refuse images with more pixels than this (default: 250000000)"
    )
    p.add_argument("--strip-metadata", action="store_true", help="write no EXIF or ICC profile")
    p.add_argument(
        "--detections", type=Path, metavar="FILE.json", help="also write the boxes found (default: none)"
    )
    p.set_defaults(run=_run_blur)


def _blur_flags(args: argparse.Namespace) -> dict:
    """Dotted config overrides from the blur command's own flags."""
    return {
        "detect.tile_size": args.tile_size,
        "detect.tile_overlap": args.tile_overlap,
        "detect.panorama": args.panorama,
        "blur.mode": args.mode,
        "blur.margin": args.margin,
        "max_pixels": args.max_pixels,
        "keep_metadata": False if args.strip_metadata else None,
    }


def _run_blur(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from blurring.image_io import BadImageError, output_format
    from blurring.outputs import plan_outputs
    from blurring.pipeline import Outcome, blur_image_bytes
    from detection.detector import Detector
    from storage.files import write_file_atomically
    from video.config import VIDEO_SUFFIXES

    config = config_from_args(args, _blur_flags(args))
    pairs = plan_outputs(
        args.input,
        Path(args.output),
        into_folder=args.output.endswith(("/", os.sep)),
        video_suffixes=VIDEO_SUFFIXES,
    )
    detector = Detector(config.detect)
    records, failures = [], []
    videos = [(s, t) for s, t in pairs if s.suffix.lower() in VIDEO_SUFFIXES]
    for source, target in videos:
        record = _blur_one_video(source, target, detector, config)
        if record["status"] != "blurred":
            failures.append((source, record["error"]))
        records.append(record)
    photos = [(s, t) for s, t in pairs if s.suffix.lower() not in VIDEO_SUFFIXES]
    for source, target in tqdm(photos, unit="image", disable=len(photos) <= 1 or None, file=sys.stderr):
        try:
            outcome = blur_image_bytes(source.read_bytes(), output_format(target), detector, config)
            if outcome.output is not None:
                write_file_atomically(target, outcome.output)
        except (BadImageError, OSError) as error:
            outcome = Outcome("failed", str(error))
        if outcome.output is None:
            failures.append((source, outcome.error))
            tqdm.write(f"streetblur: error: {source}: {outcome.error}", file=sys.stderr)
        records.append(_record(source, target, outcome) | {"detections": outcome.detections.to_records()})
    if args.detections:
        report = {"model": detector.model_id, "images": records}
        write_file_atomically(args.detections, (json.dumps(report, indent=1) + "\n").encode())
    if args.input.is_dir():
        blurred = len(pairs) - len(failures)
        kinds = f"{len(photos)} images and {len(videos)} videos" if videos else f"{len(pairs)} images"
        print(f"streetblur: {blurred} blurred, {len(failures)} failed of {kinds}", file=sys.stderr)
        for source, error_text in failures:
            print(f"  failed: {source}: {error_text}", file=sys.stderr)
    return 1 if failures else 0


def _blur_one_video(source: Path, target: Path, detector, config) -> dict:
    """Blur one video with progress bars in frames/s and an ETA, and say what its output does not
    carry; the record `--detections` writes for it. Its boxes go to `TARGET.detections.parquet`, and
    pass 1's parts to a hidden folder beside the output, from which a killed run resumes."""
    from tqdm import tqdm

    from video.pipeline import blur_video

    bars: dict[str, tqdm] = {}

    def progress(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            for bar in bars.values():  # the pass before is done
                bar.close()
            label = "detect (pass 1)" if stage == "detect" else "blur (pass 2)"
            bars[stage] = tqdm(
                total=total or None, unit="frame", desc=f"{source.name}: {label}", file=sys.stderr
            )
        bars[stage].update(done - bars[stage].n)

    audit = target.with_name(target.name + ".detections.parquet")
    work = target.with_name(f".{target.name}.streetblur-parts")
    try:
        outcome = blur_video(source, target, detector, config, work, audit, progress)
    finally:
        for bar in bars.values():
            bar.close()
    if outcome.status == "blurred":
        seconds = sum(outcome.timings_s.values())
        print(
            f"streetblur: {source}: {outcome.frames} frames blurred "
            f"({outcome.frames / seconds:.1f} frames/s over both passes), "
            f"{sum(outcome.detections.values())} boxes detected, "
            f"{outcome.filled} added by {outcome.tracks} tracks",
            file=sys.stderr,
        )
        for dropped in outcome.streams_dropped:
            print(f"streetblur: {source}: not carried: stream {dropped}", file=sys.stderr)
    else:
        print(f"streetblur: error: {source}: {outcome.error}", file=sys.stderr)
    return _record(source, target, outcome) | {
        "frames": outcome.frames,
        "detections_file": str(audit) if outcome.output is not None else None,
        "streams_copied": outcome.streams_copied,
        "streams_dropped": outcome.streams_dropped,
    }


def _record(source: Path, target: Path, outcome) -> dict:
    """What `--detections` writes of every input, photo or video (a pipeline's outcome)."""
    return {
        "input": str(source),
        "output": str(target) if outcome.output is not None else None,
        "status": outcome.status,
        "error": outcome.error,
        "width": outcome.width,
        "height": outcome.height,
    }
