"""Milliseconds per photo of the single-image path (decode, detect, blur, encode), side by side for
runtimes x precisions x view plans, on 1280x720 dashcam frames and on small (about 400x300) crowd photos.

Runs the same code as `streetblur blur` (`blurring.pipeline.blur_image_bytes`) after one warm-up
image per configuration (which also builds and caches any export), and prints the median and mean
per photo and the median per stage. Not a test: numbers depend on the machine. Usage:

    python bench/cli_latency.py [--images 20] [--runtime torch onnx openvino] [--precision fp32 int8]
                                [--plan NAME ...]     # INT8 runs on OpenVINO only; other pairs are skipped
    python bench/cli_latency.py --runtime torch --precision fp32 fp16 --set detect.device=cuda:0   # a GPU
    python bench/cli_latency.py --plan tiles --set detect.batch_size=4      # any option, all configs
    python bench/cli_latency.py --quality val    # also each config's figures on every shared set

With `--quality SPLIT`, each configuration is also evaluated as `streetblur eval --split SPLIT` does
(`eval.evaluate.run_evaluation`) on every shared set: blurred fraction and false blurs per image per
set, so speed and privacy are compared in the same run. The photos come from the labelled sets in
$STREETBLUR_DATASETS, else ../shared/datasets beside the repository.

Start-up instead, the wait before the first output of a one-photo `streetblur blur` (imports, model
load and compile, one photo), with an empty model cache (cold) and with the one a first run left
(warm); the default photo is samples/crowd_0.jpg:

    python bench/cli_latency.py --startup 5 [--photo PHOTO] [--set detect.runtime=torch ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from blurring.config import load_config, parse_overrides
from blurring.pipeline import blur_image_bytes
from detection.detector import Detector
from eval.datasets import SHARED_DATASETS, select_images
from eval.evaluate import run_evaluation

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("STREETBLUR_DATASETS") or REPO.parent / "shared" / "datasets")
PHOTOS = {
    "1280x720": sorted((DATASETS / "plates-dashcam" / "images").glob("*.jpg")),
    "small": sorted((DATASETS / "faces-crowd" / "images").glob("*.jpg")),
}
PLANS = {
    "tiles": {},  # the defaults: 640 px tiles overlapping by 20%, plus the whole image at 640
    "tiles-verify": {"detect.verify": "on"},  # the same views, then the zoom-in verifier (detection.verify)
    "whole-1280": {"detect.tile_size": 0, "detect.imgsz": 1280},  # one pass at native size up to 1280
    "tiles-736": {"detect.tile_size": 736, "detect.imgsz": 736},  # 2 tiles + whole for 1280x720
}


def measure(paths: list[Path], detector: Detector, config) -> dict:
    blur_image_bytes(paths[0].read_bytes(), "JPEG", detector, config)  # warm-up
    totals, stages = [], {}
    for path in paths:
        data = path.read_bytes()
        start = time.perf_counter()
        outcome = blur_image_bytes(data, "JPEG", detector, config)
        totals.append((time.perf_counter() - start) * 1000)
        assert outcome.status == "blurred", outcome.error
        for stage, ms in outcome.timings_ms.items():
            stages.setdefault(stage, []).append(ms)
    return {
        "median_ms": round(statistics.median(totals), 1),
        "mean_ms": round(statistics.mean(totals), 1),
        "stage_ms_median": {k: round(statistics.median(v), 1) for k, v in stages.items()},
    }


def blur_once(photo: Path, output: Path, cache: Path, options: list[str]) -> tuple[float, float]:
    """Seconds from starting `streetblur blur PHOTO -o OUTPUT` (a new process running this repository's
    code, with `cache` as STREETBLUR_CACHE) to its output file, and to its exit."""
    env = {**os.environ, "STREETBLUR_CACHE": str(cache)}
    command = [sys.executable, "-m", "jobs.cli", "blur", str(photo), "-o", str(output), *options]
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=errors)
        first = None
        while process.poll() is None:
            if first is None and output.exists():  # written in one rename: there whole, or not at all
                first = time.perf_counter() - start
            time.sleep(0.005)
        end = time.perf_counter() - start
        if process.returncode:
            errors.seek(0)
            raise RuntimeError(f"{' '.join(command)} failed: {errors.read().decode()}")
    return (end if first is None else first), end


def startup(photo: Path, runs: int, options: list[str]) -> dict:
    """Median seconds to the first output and to the exit of `blur_once`, `runs` times each with an
    empty cache (cold: exports built, OpenVINO compiling the model) and with the one a first run left."""
    figures = {}
    with tempfile.TemporaryDirectory(prefix="streetblur-startup-") as folder:
        work = Path(folder)
        blur_once(photo, work / "first.jpg", work / "warm", options)  # fills the warm cache
        for label in ("cold", "warm"):
            times = []
            for i in range(runs):
                cache = work / "warm" if label == "warm" else work / f"cold-{i}"
                times.append(blur_once(photo, work / f"{label}-{i}.jpg", cache, options))
            figures[label] = {
                "first_output_s": round(statistics.median(t[0] for t in times), 2),
                "exit_s": round(statistics.median(t[1] for t in times), 2),
            }
    return {"photo": str(photo), "runs": runs, "options": options, **figures}


def quality(config, split: str) -> dict:
    """Blurred fraction and false blurs per image of each shared set's labelled class on `split`."""
    figures = {}
    for name in sorted(SHARED_DATASETS):
        images, dataset = select_images(DATASETS / name, None, None, split, None)
        model = run_evaluation(images, [config], dataset=dataset, progress=False).models[0]
        for cls, row in model.privacy["deployed"].items():
            if cls != "all" and row["recall50"] is not None:
                figures[f"{name} {cls}"] = {
                    "blurred": round(row["blurred"]["all"], 3),
                    "false_blurs_per_image": round(row["false_blurs_per_image"], 2),
                }
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20, help="photos per size (spread over the set)")
    parser.add_argument("--runtime", nargs="+", default=["torch", "onnx", "openvino"])
    parser.add_argument("--precision", nargs="+", default=["fp32", "int8"], choices=["fp32", "fp16", "int8"])
    parser.add_argument("--plan", nargs="+", default=list(PLANS), choices=list(PLANS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="for every config")
    parser.add_argument("--quality", choices=["dev", "val"], help="also evaluate each config on this split")
    parser.add_argument(
        "--startup", type=int, metavar="RUNS", help="measure the start-up instead, RUNS times"
    )
    parser.add_argument("--photo", type=Path, default=REPO / "samples" / "crowd_0.jpg", help="for --startup")
    args = parser.parse_args()
    if args.startup:
        options = [f"--set={setting}" for setting in args.set]
        print(json.dumps(startup(args.photo, args.startup, options)))
        return
    rows = []
    combinations = [
        (runtime, precision, plan)
        for runtime in args.runtime
        for precision in args.precision
        for plan in args.plan
        if precision == "fp32" or (precision, runtime) in (("int8", "openvino"), ("fp16", "torch"))
    ]
    for runtime, precision, plan in combinations:
        overrides = {
            "detect.runtime": runtime,
            "detect.precision": precision,
            **PLANS[plan],
            **parse_overrides(args.set),
        }
        config = load_config(overrides=overrides)
        detector = Detector(config.detect)
        row = {"runtime": detector.runtime, "precision": detector.precision, "plan": plan}
        row["overrides"] = overrides
        for size, paths in PHOTOS.items():
            spread = paths[:: max(1, len(paths) // args.images)][: args.images]
            row[size] = measure(spread, detector, config)
        if args.quality:
            row["quality"] = quality(config, args.quality)
        rows.append(row)
        print(json.dumps(row), flush=True)
    sets = list(rows[0].get("quality", {}))
    header = "| runtime | precision | view plan | ms per 1280x720 | ms per small photo |"
    print("\n" + header + "".join(f" {name} |" for name in sets))
    print("|---|---|---|---|---|" + "---|" * len(sets))
    for row in rows:
        figures = row.get("quality", {}).values()
        cells = [f"{q['blurred']:.3f} ({q['false_blurs_per_image']:.2f})" for q in figures]
        times = f"{row['1280x720']['median_ms']} | {row['small']['median_ms']}"
        names = f"{row['runtime']} | {row['precision']} | {row['plan']}"
        print(f"| {names} | {times} |" + "".join(f" {c} |" for c in cells))
    if sets:
        print(f"\nquality: blurred fraction (false blurs per image) on the {args.quality} splits")


if __name__ == "__main__":
    main()
