"""`streetblur eval-video`: leak rate and flicker of video blurring, with tracking on and off, on clips
made from labelled photos (`jobs.video_eval`)."""

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
        "(objects visible in any frame) and flicker (visible between blurred frames), with tracking on "
        "and off. Writes report.json and report.md.",
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="a labelled set (repeatable)")
    p.add_argument(
        "--split",
        default="dev",
        choices=["all", "val", "dev", "train"],
        help="part of a shared set; all: every photo (a labelled folder of your own) (default: dev)",
    )
    p.add_argument("--clips", type=int, default=24, help="photos turned into clips, spread over the sets")
    p.add_argument("--frames", type=int, default=30, help="frames per clip (25 frames/s)")
    p.add_argument("--size", default="640x384", metavar="WxH", help="clip frame size")
    p.add_argument("--out", type=Path, required=True, help="folder for report.json and report.md")
    add_config_options(p, MODELS_HELP)
    p.set_defaults(run=_run_eval_video)


def _run_eval_video(args: argparse.Namespace) -> int:
    from detection.detector import Detector
    from eval.datasets import load_dataset, load_split
    from jobs.video_eval import markdown_table, tracking_figures
    from storage.files import write_file_atomically

    width, _, height = args.size.partition("x")
    if not (width.isdigit() and height.isdigit()) or args.clips < 1 or args.frames < 2:
        raise ValueError(f"need --size WxH, --clips >= 1 and --frames >= 2; got {args.size}, {args.clips}")
    config = config_from_args(args)
    images = []
    for number, root in enumerate(args.data):
        part = load_dataset(root) if args.split == "all" else load_split(root, args.split)
        labelled = [image for image in part if len(image.boxes)]
        share = args.clips // len(args.data) + (number < args.clips % len(args.data))
        images += labelled[:: max(1, len(labelled) // max(share, 1))][:share]
    result = tracking_figures(images, Detector(config.detect), config, args.frames, (int(width), int(height)))
    result |= {"data": [str(root) for root in args.data], "split": args.split}
    write_file_atomically(args.out / "report.json", (json.dumps(result, indent=2) + "\n").encode())
    table = markdown_table(result)
    write_file_atomically(args.out / "report.md", f"# Video blurring: tracks\n\n{table}".encode())
    print(table, file=sys.stdout)
    return 0
