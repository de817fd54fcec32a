"""`streetblur eval`, `calibrate` and `audit`: a model's figures on labelled sets, the thresholds they
choose, and the label audit (`eval`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jobs.cli import defaults
from jobs.cli.options import add_config_options, config_from_args

SPLITS = ["all", "val", "dev", "train"]


def add_label_options(p: argparse.ArgumentParser, record: bool = False) -> None:
    """`--raw-labels` and `--label-fixes DIR`: a shared set's labels as published, or with the boxes its
    label audits added (its overlay, `DIR/SET.json`; by default the shipped one). `record`: the help
    says `audit --record` writes there."""
    p.add_argument(
        "--raw-labels",
        action="store_true",
        help="the set's labels as published, without the boxes its label audits added (--label-fixes)",
    )
    written = (
        "; --record writes the verdicts there and needs it named (the project's own overlays: "
        "--label-fixes eval/label_fixes, from a checkout)"
        if record
        else ""
    )
    p.add_argument(
        "--label-fixes",
        type=Path,
        metavar="DIR",
        help=f"folder of the shared sets' label overlays, SET.json, applied unless --raw-labels{written} "
        "(default: the shipped eval/label_fixes/)",
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`streetblur eval`, `calibrate` and `audit`."""
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
            "eye and record in the set's label overlay (--label-fixes DIR/SET.json).",
        )
    )


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
    add_label_options(p)
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
    from eval.datasets import LABEL_FIXES_DIR, select_images
    from eval.evaluate import run_evaluation
    from eval.report import write_report

    ray = _ray_inference(args)
    config = config_from_args(args)
    configs = [
        dataclasses.replace(config, detect=dataclasses.replace(config.detect, models=(m,)))
        for m in args.models or []
    ]
    images, dataset = select_images(
        args.data,
        args.format,
        args.class_map,
        args.split,
        args.limit,
        args.raw_labels,
        args.label_fixes or LABEL_FIXES_DIR,
    )
    raw_images = None
    if dataset["labels"] != "raw":  # corrected by a label audit: report the published labels beside
        raw_images, _ = select_images(args.data, args.format, args.class_map, args.split, args.limit, True)
    detection_pass, inference = (None, "in-process")
    if ray is not None:
        from jobs.eval_on_ray import ray_detection_pass

        detection_pass, inference = ray_detection_pass(ray, len(images))
    evaluation = run_evaluation(
        images,
        configs or [config],
        args.target_blurred,
        dataset,
        detection_pass=detection_pass,
        inference=inference,
        raw_images=raw_images,
    )
    files = write_report(evaluation, args.out)
    for model in evaluation.models:
        for name, row in model.privacy["deployed"].items():
            if name in CLASS_NAMES and row["recall50"] is not None:
                figures = f"recall@0.5 {row['recall50']:.3f}, blurred {row['blurred']['all']:.3f}, "
                figures += f"false blurs/image {row['false_blurs_per_image']:.2f}, "
                figures += f"falsely blurred area {row['false_blur_area']:.3%}"
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


def _add_calibrate_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, action="append", required=True, help="labelled set; repeat for more")
    p.add_argument(
        "--split",
        choices=SPLITS,
        help="part of each shared set (default: dev for the shared sets, all of any other set)",
    )
    p.add_argument("--max-false-blurs", type=float, default=0.5, help="per image and class (default: 0.5)")
    p.add_argument(
        "--max-false-area",
        type=float,
        default=0.005,
        help="share of the image area falsely blurred, per class, averaged over images (default: 0.005)",
    )
    p.add_argument(
        "--target",
        action="extend",
        nargs="+",
        default=[],
        metavar="CLASS=FRACTION",
        help="instead of the budget, the highest threshold whose blurred fraction reaches FRACTION "
        "(e.g. face=0.95 plate=0.97)",
    )
    add_label_options(p)
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
    from eval.datasets import LABEL_FIXES_DIR, select_images
    from storage.files import write_file_atomically

    config = config_from_args(args)
    fixes = args.label_fixes or LABEL_FIXES_DIR
    sets = []
    for root in args.data:
        split = args.split  # None: dev of a shared set (recognised by its files), else all
        images, _ = select_images(root, None, None, split, None, args.raw_labels, fixes)
        sets.append(images)
    results = calibrate(
        sets, config, args.max_false_blurs, parse_overrides(args.target), max_false_area=args.max_false_area
    )
    text = markdown(results)
    if args.out:
        write_file_atomically(args.out, text.encode())
    print(text)
    chosen = [f"--set detect.{r.option}.{r.name}={r.chosen}" for r in results if r.chosen is not None]
    print("thresholds: " + " ".join(chosen))
    missed = [f"{r.name} {r.option} ({r.rule})" for r in results if r.chosen is None]
    if missed:
        print(f"no swept threshold meets {', '.join(missed)}", file=sys.stderr)
    return 1 if missed else 0


def _add_audit_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="labelled set folder")
    p.add_argument("--split", choices=SPLITS, default="dev", help="part of a shared set (default: dev)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N images, by file name")
    add_label_options(p, record=True)
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
        "in the set's label overlay in --label-fixes",
    )
    p.set_defaults(run=_run_audit)


def _run_audit(args: argparse.Namespace) -> int:
    from detection.detections import CLASS_NAMES
    from eval.audit import describe, find_candidates, record_verdicts, rejected_boxes, write_audit
    from eval.datasets import LABEL_FIXES_DIR, select_images

    if args.record:
        if args.label_fixes is None:
            raise ValueError(
                "--record writes into the label overlays of --label-fixes DIR: name it (the project's "
                "own: --label-fixes eval/label_fixes, from a checkout)"
            )
        listing = json.loads((args.out / "candidates.json").read_text())
        entry = record_verdicts(args.data, listing, json.loads(args.record.read_text()), args.label_fixes)
        print(f"recorded {entry['added']} added and {entry['candidates'] - entry['added']} rejected boxes")
        return 0
    config = config_from_args(args)
    fixes = args.label_fixes or LABEL_FIXES_DIR
    images, dataset = select_images(args.data, None, None, args.split, args.limit, args.raw_labels, fixes)
    rejected = None if args.raw_labels else rejected_boxes(args.data, fixes)
    candidates = find_candidates(images, config, args.audit_threshold, args.below, rejected=rejected)
    about = describe(config, args.audit_threshold, dataset, args.below)
    files = write_audit(candidates, args.data, args.out, about)
    counts = {name: sum(c["class"] == name for c in candidates) for name in CLASS_NAMES}
    sheets = len(files) - 1
    print(f"{len(candidates)} candidates in {len(images)} images {counts}; {sheets} sheets in {args.out}")
    return 0
