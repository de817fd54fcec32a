"""`streetblur eval-video`: leak rate and flicker of video blurring, with tracking on and off, on clips
made from labelled photos or assembled from the labelled frames of real videos (`jobs.video_eval`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jobs.cli.options import MODELS_HELP, add_config_options, config_from_args


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`streetblur eval-video`."""
    p = commands.add_parser(
        "eval-video",
        help="leak rate and flicker of video blurring, tracking on and off, on labelled moving-crop clips",
        description="Turn labelled photos into clips with exact boxes in every frame (a window panning, "
        "zooming and jittering over each photo, with motion blur; H.264 CRF 28), blur each as "
        "`streetblur blur` does, and score per object: blurred fraction of object-frames, leak rate "
        "(objects visible in any frame), flicker (visible between blurred frames) and boxes on no labelled "
        "object, with tracking off, on without track verdicts and on as configured. Writes report.json "
        "and report.md. With --clips-from video-frames, a set of frames of "
        "videos (named VIDEO#t=SECONDS.jpg, as plates-dashcam) is cut into runs of consecutive frames, "
        "each run encoded at its own frame rate as one clip (runs of one frame are left out), and the "
        "labelled boxes are linked from frame to frame into objects by the tracker's own linker "
        "(approximate identities: the labels name none).",
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="a labelled set (repeatable)")
    p.add_argument(
        "--split",
        default="dev",
        choices=["all", "val", "dev", "train"],
        help="part of a shared set; all: every photo (a labelled folder of your own) (default: dev)",
    )
    p.add_argument(
        "--clips-from",
        default="photos",
        choices=["photos", "video-frames"],
        help="photos: moving crops of labelled photos; video-frames: runs of a video's labelled frames",
    )
    p.add_argument(
        "--clips", type=int, default=24, help="photos turned into clips (or runs taken), spread over the sets"
    )
    p.add_argument("--frames", type=int, default=30, help="frames per clip (25 frames/s); photos only")
    p.add_argument("--size", default="640x384", metavar="WxH", help="clip frame size; photos only")
    p.add_argument("--out", type=Path, required=True, help="folder for report.json and report.md")
    add_config_options(p, MODELS_HELP)
    p.set_defaults(run=_run_eval_video)


def _run_eval_video(args: argparse.Namespace) -> int:
    from detection.detector import Detector
    from eval.datasets import load_dataset, load_split
    from eval.sequences import video_frame_runs
    from jobs.video_eval import markdown_table, tracking_figures, video_frame_figures
    from storage.files import write_file_atomically

    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()) or args.clips < 1 or args.frames < 2:
        raise ValueError(f"need --size WxH, --clips >= 1 and --frames >= 2; got {args.size}, {args.clips}")
    config = config_from_args(args)
    chosen, left_out = [], 0
    for number, root in enumerate(args.data):
        part = load_dataset(root) if args.split == "all" else load_split(root, args.split)
        if args.clips_from == "photos":
            candidates = [image for image in part if len(image.boxes)]
        else:
            runs = video_frame_runs(part)
            candidates = [run for run in runs if len(run[1]) > 1]
            left_out += sum(len(run[1]) == 1 for run in runs)
        share = args.clips // len(args.data) + (number < args.clips % len(args.data))
        chosen += candidates[:: max(1, len(candidates) // max(share, 1))][:share]
    detector = Detector(config.detect)
    if args.clips_from == "photos":
        result = tracking_figures(chosen, detector, config, args.frames, (int(width), int(height)))
    else:
        result = video_frame_figures(chosen, detector, config) | {"single_frames_left_out": left_out}
    result |= {"data": [str(root) for root in args.data], "split": args.split}
    write_file_atomically(args.out / "report.json", (json.dumps(result, indent=2) + "\n").encode())
    table = markdown_table(result)
    write_file_atomically(args.out / "report.md", f"# Video blurring: tracks\n\n{table}".encode())
    print(table, file=sys.stdout)
    return 0
