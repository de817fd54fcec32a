"""Images/s of the whole Ray job against the detector alone in one process (the floor), and peak memory.

Both run on the same real photos of the labelled sets (dashcam frames and crowd photos) in `--data`
($STREETBLUR_DATASETS, else ../shared/datasets beside the repository):
- floor: one process, default `Detector`, `detect` on photos decoded beforehand (no I/O, no blur,
  no encode: the least work any job must do);
- job: `run_job` from a local folder to a local folder, local Ray started in-process; its rate is
  taken over its whole wall time, Ray's start and the actors' model loading included, and also from
  its first output to its last (the manifest's `finished_at`): the rate once started, which is what
  a long job runs at. `startup_s` is the time to its first output.
Each stage's share of the actors' time (decode, detect, blur, encode; from the manifest's timings)
shows what the detector waits on: on a GPU, the share not spent in detect is time the GPU idles
unless more actors or a larger batch fill it.
Peak memory is the largest resident set summed over this process and all its children (Ray workers),
sampled every 0.2 s; pages of Ray's shared object store count once per process that maps them, so
the job's figure overstates its real use. Not a test: numbers depend on the machine.

    python bench/job_throughput.py [--data DIR] [--images 40] [--actors N] [--actor-cpus C]
        [--set KEY=VALUE ...]
    python bench/job_throughput.py --actor-gpus 1 --actor-cpus 2 --set detect.precision=fp16  # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import cv2
import psutil

from blurring.config import Config, load_config, parse_overrides
from detection.detector import Detector
from jobs.batch.job import JobOptions, run_job
from jobs.batch.manifest import TIMING_COLUMNS, read_manifest_rows
from storage.objects import Storage

SHARED_DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"  # beside the repository
DATASETS = Path(os.environ.get("STREETBLUR_DATASETS") or SHARED_DATASETS)


class PeakMemory:
    """Samples the summed RSS of this process tree in a background thread."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.2)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()


def photos(data: Path, count: int) -> list[Path]:
    """Half dashcam frames (1280x720), half crowd photos, spread over each set in `data`."""
    dashcam = sorted((data / "plates-dashcam" / "images").glob("*.jpg"))
    crowd = sorted((data / "faces-crowd" / "images").glob("*.jpg"))
    half = count // 2
    return dashcam[:: len(dashcam) // half][:half] + crowd[:: len(crowd) // (count - half)][: count - half]


def detector_alone(paths: list[Path], config: Config) -> dict:
    images = [cv2.imread(str(p)) for p in paths]
    detector = Detector(config.detect)
    detector.detect(images[0])  # warm-up
    with PeakMemory() as memory:
        start = time.perf_counter()
        for image in images:
            detector.detect(image)
        seconds = time.perf_counter() - start
    return {
        "runtime": detector.runtime,
        "precision": detector.precision,
        "images_per_s": round(len(images) / seconds, 3),
        "peak_rss_mb": round(memory.peak / 2**20),
    }


def whole_job(
    paths: list[Path], config: Config, actors: int | None, actor_cpus: float, actor_gpus: float
) -> dict:
    work = Path(tempfile.mkdtemp(prefix="streetblur-bench-"))
    try:
        (work / "in").mkdir()
        for i, path in enumerate(paths):
            shutil.copyfile(path, work / "in" / f"{i:04d}{path.suffix}")
        options = JobOptions(
            str(work / "in"),
            str(work / "out"),
            actors=actors,
            actor_cpus=actor_cpus,
            actor_gpus=actor_gpus,
            config=config,
        )
        started = time.time()
        with PeakMemory() as memory:
            summary = run_job(options)
        rows = read_manifest_rows(Storage(str(work / "out")))
        finished = sorted(row["finished_at"].timestamp() for row in rows)
        stages = [c for c in TIMING_COLUMNS if c not in ("read_ms", "write_ms")]  # the actors' stages
        totals = {c.removesuffix("_ms"): sum(row[c] for row in rows) for c in stages}
        return {
            **{k: summary[k] for k in ("blurred", "failed", "wall_s", "images_per_s")},
            "startup_s": round(finished[0] - started, 1),
            "images_per_s_once_started": round((len(finished) - 1) / (finished[-1] - finished[0]), 3),
            "actors": summary["actors"],
            "actor_time_share": {k: round(v / sum(totals.values()), 3) for k, v in totals.items()},
            "peak_rss_mb": round(memory.peak / 2**20),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATASETS, help="folder of the labelled sets")
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--actors", type=int, help="detector actors (default: the job's own default)")
    parser.add_argument("--actor-cpus", type=float, default=JobOptions.actor_cpus)
    parser.add_argument("--actor-gpus", type=float, default=0.0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config option")
    args = parser.parse_args()
    if not (args.data / "plates-dashcam").is_dir() or not (args.data / "faces-crowd").is_dir():
        parser.error(f"--data {args.data}: no plates-dashcam/ and faces-crowd/ there")
    config = load_config(overrides=parse_overrides(args.set))
    if args.actor_gpus and config.detect.device is None:
        config = load_config(overrides={**parse_overrides(args.set), "detect.device": "cuda:0"})
    paths = photos(args.data, args.images)
    floor = detector_alone(paths, config)
    job = whole_job(paths, config, args.actors, args.actor_cpus, args.actor_gpus)
    print(
        json.dumps(
            {
                "images": len(paths),
                "cpus": psutil.cpu_count(),
                "overrides": args.set,
                "detector_alone": floor,
                "job": job,
                "ratio": round(job["images_per_s"] / floor["images_per_s"], 2),
                "ratio_once_started": round(job["images_per_s_once_started"] / floor["images_per_s"], 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
