"""`streetblur eval`: score one or more models on a labelled set and write a report (see eval/report.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from detection.detections import CLASS_NAMES
from eval.datasets import (
    SHARED_DATASETS,
    LabelledImage,
    dataset_settings,
    load_dataset,
    parse_class_map,
    split_dataset,
)

if TYPE_CHECKING:
    from eval.report import RayInference


def add_eval_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `eval` subcommand to the main parser's subcommands."""
    p = subparsers.add_parser(
        "eval",
        help="score models on a labelled set: COCO mAP, recall, blurred share, false blurs",
        description=__doc__,
    )
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
        choices=["all", "val", "dev", "train"],
        default="all",
        help="part of a shared set, by its fixed held-out rule: val for reported figures, dev for "
        "choosing settings (default: all)",
    )
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images, by file name")
    p.add_argument(
        "--model",
        action="extend",
        nargs="+",
        dest="models",
        metavar="FILE",
        help="weights, or a baseline (centerface, retinaface, ...-x2), to evaluate; several give one "
        "side-by-side report (default: the configured model)",
    )
    p.add_argument(
        "--threshold",
        action="append",
        default=[],
        metavar="CLASS=SCORE",
        help="deployed per-class score threshold, e.g. --threshold face=0.3",
    )
    p.add_argument(
        "--target-recall",
        type=float,
        default=0.95,
        help="report the per-class thresholds that reach this recall at IoU 0.5 (default: 0.95)",
    )
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="options file of `streetblur blur`")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.OPTION=VALUE",
        help="any option of `streetblur blur`, e.g. --set detect.upscale_to=1280",
    )
    p.add_argument("--device", help="cpu, 0, cuda:0 ... (default: ultralytics chooses)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.md/.html/.json and predictions")
    ray = p.add_argument_group("Ray", "the inference pass on a pool of detector actors, as `streetblur run`")
    ray.add_argument("--ray", action="store_true", help="run the inference pass on Ray (the same figures)")
    ray.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    ray.add_argument(
        "--actors", type=int, metavar="N", help="detector actors (default: as many as the cluster allows)"
    )
    ray.add_argument("--actor-gpus", type=float, metavar="G", help="GPUs per detector actor (default: 0)")
    p.set_defaults(run=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    """Run `streetblur eval` from parsed arguments; the exit code."""
    from eval.report import run_evaluation, write_report  # matplotlib, the detector: only when run
    from jobs.pipeline import load_config, parse_overrides

    ray = _ray_inference(args)
    overrides: dict[str, object] = parse_overrides(args.set)
    if args.threshold:
        overrides["detect.thresholds"] = parse_overrides(args.threshold)  # DetectorConfig checks them
    if args.device:
        overrides["detect.device"] = args.device
    config = load_config(args.config, overrides)
    configs = [
        dataclasses.replace(config, detect=dataclasses.replace(config.detect, models=(m,)))
        for m in args.models or []
    ]
    images, dataset = _images(args.data, args.format, args.class_map, args.split, args.limit)
    evaluation = run_evaluation(images, configs or [config], args.target_recall, dataset, ray=ray)
    files = write_report(evaluation, args.out)
    for model in evaluation.models:
        for name, row in model.privacy["deployed"].items():
            if name in CLASS_NAMES and row["recall50"] is not None:
                figures = f"recall@0.5 {row['recall50']:.3f}, blurred {row['blurred']['all']:.3f}, "
                figures += f"false blurs/image {row['false_blurs_per_image']:.2f}"
                print(f"{model.label} {name}: AP50 {model.coco[name]['AP50']:.3f}, {figures}")
    print(f"wrote {', '.join(str(path) for path in files.values())}", file=sys.stderr)
    return 0


def _ray_inference(args: argparse.Namespace) -> RayInference | None:
    """The `--ray` options, or None; `ValueError` for bad ones or Ray options without `--ray`."""
    from eval.report import RayInference

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
    gpus = {} if args.actor_gpus is None else {"actor_gpus": args.actor_gpus}
    return RayInference(address=args.address, actors=args.actors, **gpus)


def _images(
    data: Path, format: str | None, class_map: str | None, split: str, limit: int | None
) -> tuple[list[LabelledImage], dict[str, object]]:
    """The labelled images of `data` that the options select, and their description for the report."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such folder")
    spec = SHARED_DATASETS.get(data.name)
    label_format, class_map_used = dataset_settings(
        data, format, parse_class_map(class_map) if class_map else None
    )
    images = load_dataset(data, label_format, class_map_used)
    if split != "all":
        if spec is None:
            raise ValueError(
                f"--split {split}: {data.name} has no split rule; one of {sorted(SHARED_DATASETS)}"
            )
        images = split_dataset(images, spec.split)[split]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        images = images[:limit]
    dataset = {"root": str(data), "format": label_format, "split": split, "class_map": class_map_used}
    return images, dataset


def add_calibrate_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add the `calibrate` subcommand: per-class thresholds within a false-blur budget."""
    p = subparsers.add_parser(
        "calibrate",
        help="choose per-class thresholds on labelled sets: most blurred within a false-blur budget",
        description="For each class, the lowest score threshold whose false blurs per image stay within "
        "the budget on the given labelled sets: the most real faces and plates blurred that the budget "
        "allows. Use the dev splits of the shared sets, or labelled photos of your own.",
    )
    p.add_argument("--data", type=Path, action="append", required=True, help="labelled set; repeat for more")
    p.add_argument(
        "--split",
        choices=["all", "val", "dev", "train"],
        help="part of each shared set (default: dev for the shared sets, all of any other set)",
    )
    p.add_argument("--max-false-blurs", type=float, default=0.3, help="per image and class (default: 0.3)")
    p.add_argument(
        "--model",
        action="extend",
        nargs="+",
        dest="models",
        metavar="FILE",
        help="weights or baseline names, combined into one detector (default: the configured model)",
    )
    p.add_argument("--config", type=Path, metavar="FILE.yaml", help="options file of `streetblur blur`")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.OPTION=VALUE")
    p.add_argument("--out", type=Path, help="also write the sweep tables here (Markdown)")
    p.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> int:
    """Run `streetblur calibrate` from parsed arguments; the exit code."""
    from eval.calibrate import calibrate, markdown
    from jobs.pipeline import load_config, parse_overrides

    overrides: dict[str, object] = parse_overrides(args.set)
    if args.models:
        overrides["detect.models"] = list(args.models)
    config = load_config(args.config, overrides)
    sets = []
    for root in args.data:
        split = args.split or ("dev" if root.name in SHARED_DATASETS else "all")
        images, _ = _images(root, None, None, split, None)
        sets.append(images)
    results = calibrate(sets, config, args.max_false_blurs)
    text = markdown(results, args.max_false_blurs)
    if args.out:
        args.out.write_text(text)
    print(text)
    chosen = [f"--set detect.thresholds.{r.name}={r.chosen}" for r in results if r.chosen is not None]
    print("thresholds: " + " ".join(chosen))
    over = [r.name for r in results if r.chosen is None]
    if over:
        print(
            f"no threshold keeps {', '.join(over)} within {args.max_false_blurs} false blurs/image",
            file=sys.stderr,
        )
    return 1 if over else 0
