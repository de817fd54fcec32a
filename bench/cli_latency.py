"""Milliseconds per 1280x720 photo for the single-image path (decode, detect, blur, encode).

Runs the same code as `streetblur blur` on dashcam frames from ../shared/datasets/plates-dashcam,
after one warm-up image, and prints the median and mean per stage. Not a test: numbers depend on
the machine. Usage: python bench/cli_latency.py [--images 20] [--set detect.tile_size=0 ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from blurring.pipeline import blur_image_bytes, load_config, parse_overrides
from detection.detector import Detector

DASHCAM = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "plates-dashcam" / "images"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = parse_overrides(args.set)
    config = load_config(overrides=overrides)
    paths = sorted(DASHCAM.glob("*.jpg"))[:: max(1, len(list(DASHCAM.glob("*.jpg"))) // args.images)]
    paths = paths[: args.images]
    detector = Detector(config.detect)
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
    print(
        json.dumps(
            {
                "images": len(paths),
                "size": f"{outcome.width}x{outcome.height}",
                "overrides": overrides,
                "ms_per_image_median": round(statistics.median(totals), 1),
                "ms_per_image_mean": round(statistics.mean(totals), 1),
                "stage_ms_median": {k: round(statistics.median(v), 1) for k, v in stages.items()},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
