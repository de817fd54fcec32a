"""The job at bucket scale: driver memory and time to the first image, at 10 k, 100 k and 1 M keys.

    python bench/job_scale.py [--keys 10000 100000 1000000] [--work /tmp/streetblur-scale]

Inputs: a local folder of N empty `.jpg` files (1000 a subfolder), the same storage interface as S3,
plus the sample photos of `samples/` under `000-samples/`, which come first in key order. Two runs each:

- fresh: nothing done before. Measures the time from starting `streetblur run` to the first blurred
  output, and the driver's peak memory meanwhile; the run is then killed (blurring N empty files,
  each a failed row, is not the point).
- resume: a manifest state holding a row for every empty file, as a run of this model would have left
  it, built with the job's own `compact` (timed). Only the sample photos are new. The run lists every key,
  walks the state beside the listing, writes the skipped rows and compacts: it measures driver peak
  memory and wall time for the whole run, at N keys.

The driver's memory is the resident set of the `streetblur run` process (psutil, every 0.2 s); the
listing itself runs in a Ray worker, whose peak is reported too. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from blurring.config import Config, output_settings, settings_digest  # noqa: E402
from detection.detector import model_id, resolve_models  # noqa: E402
from jobs.batch.manifest import MANIFEST_SCHEMA, compact, read_index, run_part_key, write_rows  # noqa: E402
from storage.objects import Storage  # noqa: E402

SAMPLES = REPO / "samples"
PER_FOLDER = 1000
PLANTED_AT = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_inputs(folder: Path, keys: int) -> None:
    """N empty .jpg files, 1000 a subfolder, and the sample photos under 000-samples/ (kept if there)."""
    done_marker = folder / f".made-{keys}"
    if done_marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    for start in range(0, keys, PER_FOLDER):
        sub = folder / f"cam{start // PER_FOLDER:05d}"
        sub.mkdir(parents=True)
        for i in range(start, min(keys, start + PER_FOLDER)):
            os.close(os.open(sub / f"{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644))
    (folder / "000-samples").mkdir(parents=True)
    for photo in SAMPLES.glob("*.jpg"):
        shutil.copyfile(photo, folder / "000-samples" / photo.name)
    done_marker.touch()


def plant_state(source: Path, output: Path) -> float:
    """A manifest state with a failed row for every empty file, made by this model with the default
    settings (the run skips them all); seconds to compact."""
    target = Storage(str(output))
    config = Config()
    runtime, precision, weights = resolve_models(config.detect, "cpu")
    model = model_id(weights)
    digest = settings_digest(output_settings(config, model, runtime, precision))
    run_id = "20260101T000000Z-planted"
    blank = dict.fromkeys(MANIFEST_SCHEMA.names)
    block, number = [], 0
    for item in Storage(str(source)).list((".jpg",)):
        if item.key.startswith("000-samples/"):
            continue
        block.append(
            blank
            | {"key": item.key, "status": "failed", "error": "undecodable image", "model_id": model}
            | {"settings_digest": digest}
            | {"etag": item.etag, "size": item.size, "run_id": run_id, "finished_at": PLANTED_AT}
        )
        if len(block) == 10_000:
            write_rows(target, run_part_key(run_id, "part", number), block)
            block, number = [], number + 1
    if block:
        write_rows(target, run_part_key(run_id, "part", number), block)
    start = time.perf_counter()
    compact(target, read_index(target), [run_id])
    return time.perf_counter() - start


class PeakMemory:
    """Peak resident memory of a process, and of its Ray listing worker, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.driver = self.listing = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.driver = max(self.driver, self.process.memory_info().rss)
                for child in self.process.children(recursive=True):
                    if "ReadListInputsToDo" in " ".join(child.cmdline()):
                        self.listing = max(self.listing, child.memory_info().rss)
            except psutil.Error:
                continue

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def start_run(source: Path, output: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "jobs.cli", "run", "--input", str(source), "--output", str(output)]
    return subprocess.Popen(
        command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def stop_run(run: subprocess.Popen) -> None:
    """Kill the run and every process it started (its local Ray)."""
    processes = [psutil.Process(run.pid), *psutil.Process(run.pid).children(recursive=True)]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.Error:
            continue
    run.wait()


def fresh(source: Path, output: Path) -> tuple[float, int, int]:
    """Seconds to the first blurred output, driver and listing peak memory until then."""
    shutil.rmtree(output, ignore_errors=True)
    started = time.perf_counter()
    run = start_run(source, output)
    memory = PeakMemory(run.pid)
    first = output / "000-samples" / "crowd_0.jpg"
    while not first.exists():
        if run.poll() is not None:
            raise RuntimeError("the run ended before its first output")
        time.sleep(0.05)
    seconds = time.perf_counter() - started
    time.sleep(5)  # a little longer: the listing goes on, and the memory with it if it grew with N
    memory.stop()
    stop_run(run)
    return seconds, memory.driver, memory.listing


def resume(source: Path, output: Path) -> tuple[float, float, int, int]:
    """Seconds to compact the planted state, the whole run's wall seconds, driver and listing peaks."""
    shutil.rmtree(output, ignore_errors=True)
    compact_s = plant_state(source, output)
    started = time.perf_counter()
    run = start_run(source, output)
    memory = PeakMemory(run.pid)
    if run.wait() != 0:
        raise RuntimeError("the resume run failed")
    memory.stop()
    return compact_s, time.perf_counter() - started, memory.driver, memory.listing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/streetblur-scale"))
    args = parser.parse_args()
    mb = 1 / 2**20
    print(
        "| keys | fresh: first image s | fresh: driver MB | resume: planted state compacted s "
        "| resume: run wall s | resume: driver MB | listing worker MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for keys in args.keys:
        source = args.work / f"in-{keys}"
        make_inputs(source, keys)
        first_s, fresh_driver, _ = fresh(source, args.work / f"out-fresh-{keys}")
        compact_s, wall_s, driver, listing = resume(source, args.work / f"out-resume-{keys}")
        print(
            f"| {keys:,} | {first_s:.1f} | {fresh_driver * mb:.0f} | {compact_s:.1f} | {wall_s:.1f} "
            f"| {driver * mb:.0f} | {listing * mb:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
