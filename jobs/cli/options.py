"""The options of every command that runs the detector: `--model`, `--threshold`, `--device`,
`--config FILE.yaml` and `--set SECTION.OPTION=VALUE`, and the `Config` they ask for
(`config_from_args`): defaults, then the YAML file, then the flags, then `--set`; thresholds merge
class by class.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from blurring.config import Config

MODELS_HELP = (
    "detector weights (.pt, .onnx, ...); several are combined (default: the shipped "
    "detection/weights/streetblur-n.pt)"
)


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
