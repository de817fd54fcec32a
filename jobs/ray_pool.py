"""Ray start-up and detector actor pools: shared by the batch job and `streetblur eval --ray`.

Detector actors load the models once each and then take batches of rows; read and write tasks
beside them get a fraction of a CPU (`IO_CPUS`), so that on a small machine the actors do not
starve them (`pool_size` leaves each actor that room).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import math
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from detection.baselines import is_baseline
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector, DetectorConfig
from eval.datasets import LabelledImage
from eval.evaluate import Scan, read_pixels
from jobs.defaults import ACTOR_CPUS, BATCH_SIZE, IO_CPUS


def start_ray(address: str | None, verbose: bool = True) -> None:
    """Connect to the Ray cluster at `address` (None: `RAY_ADDRESS`, else start a new local Ray).

    A new local Ray, not "whatever cluster this machine last started": that one may be gone. Not
    `verbose`: Ray's progress blocks and info logs, Ray Data's warnings, the lines of Ray's C++ core in
    this driver (`quiet_ray_core`) and its notice that a new local Ray turns token authentication on
    are kept off this driver's console (Ray's other warnings stay). Ray still writes all but that
    notice to its log folder (`/tmp/ray/session_latest/logs` on a local Ray).
    """
    import logging

    import ray
    import ray.data

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # A local Ray runs this job alone: no dashboard, whose processes would take CPU from the actors.
    local = {"include_dashboard": False} if address == "local" else {}
    level = logging.INFO if verbose else logging.WARNING
    if not verbose:
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, logging_level=level, **local)
    if not verbose:
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # its warnings stay in ray-data.log
        quiet_ray_core()


# A line of Ray's C++ core: "[2026-12-07 04:32:58,956 E 8505 8505] core_worker.cc:2465: ..."
RAY_CORE_LINE = re.compile(rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWE] \d+ \d+\] ")
_quiet: dict = {}  # the running filter of `quiet_ray_core`: its pipe and thread, and the console's fd


def quiet_ray_core() -> None:
    """Keep the lines of Ray's C++ core off this process's stderr from now on, the rest as it was.

    Ray's core in a driver writes its warnings and errors both to its log file (`python-core-driver-*.log`
    in Ray's log folder) and to stderr, where they mean nothing to a user of this program: "Actor ...
    has constructor arguments in the object store and max_restarts > 0", for each actor pool Ray Data
    starts. Ray has no option for it, so file descriptor 2 becomes a pipe read by a thread that passes
    on all else to the console as it comes (Ray's fatal errors too); a partial line is held only if
    it may start such a line (it starts with "["), so progress bars redrawn with "\\r" still show. At
    exit, after Ray's own shutdown, stderr is the console again and the thread drains the pipe. A
    no-op while the filter runs, or where there is no stderr."""
    if _quiet and _is_fd2(_quiet["pipe"]):
        return
    sys.stderr.flush()
    try:
        console = os.dup(2)
    except OSError:  # no stderr: nothing to keep quiet
        return
    if not _quiet:
        atexit.register(_stop_quiet)  # Ray registered its shutdown on init: this one runs after it
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    thread = threading.Thread(target=_pass_on, args=(read, console), name="quiet-ray-core", daemon=True)
    thread.start()
    _quiet.update(pipe=os.fstat(2), console=console, thread=thread)


def _is_fd2(status: os.stat_result) -> bool:
    """True if file descriptor 2 is the file of `status`."""
    current = os.fstat(2)
    return (current.st_dev, current.st_ino) == (status.st_dev, status.st_ino)


def _pass_on(read: int, console: int | None) -> None:
    """Copy what arrives on `read` to `console`, but for Ray's core lines (`RAY_CORE_LINE`). Once the
    console cannot be written to (a closed pipe), drain `read` all the same: writers never block."""
    held = b""
    while chunk := os.read(read, 1 << 16):
        *lines, held = (held + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not RAY_CORE_LINE.match(line))
        if not held.startswith(b"["):
            out, held = out + held, b""
        console = _write_all(console, out)
    if not RAY_CORE_LINE.match(held):
        _write_all(console, held)
    os.close(read)


def _write_all(fd: int | None, data: bytes) -> int | None:
    """Write all of `data` to `fd`; `fd`, or None once it fails (and for None)."""
    try:
        while data and fd is not None:
            data = data[os.write(fd, data) :]
    except OSError:
        return None
    return fd


def _stop_quiet() -> None:
    """At exit: stderr is the console again, and what the pipe still holds reaches it."""
    if not _is_fd2(_quiet["pipe"]):
        return
    sys.stderr.flush()
    os.dup2(_quiet["console"], 2)  # closes the pipe's last write end: the thread drains it and ends
    _quiet["thread"].join(timeout=2)


def pool_size(actor_cpus: float, actor_gpus: float, io_cpus: float = IO_CPUS, memory_gb: float = 0.0) -> int:
    """Detector actors that fit the connected cluster now, leaving each room for a read or write task,
    each with `memory_gb` of Ray's memory resource."""
    import ray

    resources = ray.cluster_resources()
    if actor_gpus > 0:
        fit = int(resources.get("GPU", 0) / actor_gpus)
    else:
        fit = int(resources.get("CPU", 1) / (actor_cpus + io_cpus))
    if memory_gb > 0:
        fit = min(fit, int(resources.get("memory", 0) / (memory_gb * 2**30)))
    return max(1, fit)


def with_actor_pool(
    dataset,
    actor: type,
    constructor_kwargs: dict,
    actors: int | None,
    batch_size: int,
    actor_cpus: float,
    actor_gpus: float,
    io_cpus: float = IO_CPUS,
    memory_gb: float = 0.0,
):
    """`dataset` mapped in batches by a pool of `actors` instances of `actor`, each built once and
    reserving `memory_gb` of Ray's memory resource (0: none), so that Ray places no more actors on a
    node than its memory holds.

    `actors` None: as many as fit the cluster now (`pool_size`), growing as the cluster grows. Ray Data
    restarts a dead actor and retries its batch (`max_restarts=-1` by default).
    """
    import ray

    if actors:
        pool = ray.data.ActorPoolStrategy(size=actors)
    else:
        fit = pool_size(actor_cpus, actor_gpus, io_cpus, memory_gb)
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=None, initial_size=fit)
    return dataset.map_batches(
        actor,
        fn_constructor_kwargs=constructor_kwargs,
        compute=pool,
        batch_size=batch_size,
        num_cpus=actor_cpus,
        num_gpus=actor_gpus,
        **({"memory": memory_gb * 2**30} if memory_gb > 0 else {}),
    )


@dataclass(frozen=True)
class RayInference:
    """Run the inference pass on Ray: a pool of detector actors, as `streetblur run` does.

    The actors read the images and model files by their absolute paths: on a cluster of several
    machines, these must be there on every node (a shared file system).
    """

    address: str | None = None  # None: RAY_ADDRESS, else a new local Ray
    actors: int | None = None  # None: as many as the cluster allows (`pool_size`)
    actor_cpus: float = ACTOR_CPUS
    actor_gpus: float = 0.0
    batch_size: int = BATCH_SIZE  # images per actor call (each still detected alone)


def ray_scan(options: RayInference, n_images: int) -> tuple[Scan, str]:
    """Connect to Ray (`start_ray`) and size the actor pool; the `Scan` for `eval.evaluate.run_evaluation`
    and its note for the report.

    The pool: `options.actors`, else as many as the cluster allows, at most one per batch of images.
    """
    if options.actors is not None and options.actors < 1:
        raise ValueError(f"actors must be at least 1, got {options.actors}")
    if options.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {options.batch_size}")
    start_ray(options.address)
    actors = options.actors or pool_size(options.actor_cpus, options.actor_gpus)
    actors = max(1, min(actors, math.ceil(n_images / options.batch_size)))

    def scan(
        images: list[LabelledImage], config: DetectorConfig, max_pixels: int, label: str, progress: bool
    ) -> tuple[list[Detections], float]:
        return _scan_on_ray(images, config, max_pixels, label, progress, options, actors)

    return scan, f"ray, {actors} actor{'s' if actors > 1 else ''}"


def _scan_on_ray(
    images: list[LabelledImage],
    config: DetectorConfig,
    max_pixels: int,
    label: str,
    progress: bool,
    options: RayInference,
    actors: int,
) -> tuple[list[Detections], float]:
    """`Scan` on a pool of `_ScanActor`s; the seconds include starting them (loading the models)."""
    import ray

    start = time.perf_counter()
    items = [
        {"index": i, "path": str(image.path.resolve()), "width": image.width, "height": image.height}
        for i, image in enumerate(images)
    ]  # absolute paths: a worker's working folder need not be this one's
    missing = [m for m in config.models if not is_baseline(m) and not Path(m).is_file()]
    if missing:
        raise FileNotFoundError(f"model file not found: {missing[0]}")  # here, not in every actor
    config = dataclasses.replace(
        config, models=tuple(m if is_baseline(m) else str(Path(m).resolve()) for m in config.models)
    )
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    dataset = with_actor_pool(
        dataset,
        _ScanActor,
        {"config": config, "max_pixels": max_pixels},
        actors,
        options.batch_size,
        options.actor_cpus,
        options.actor_gpus,
    )
    found: dict[int, Detections] = {}
    with tqdm(total=len(images), desc=label, unit="image", disable=not progress, file=sys.stderr) as bar:
        for batch in dataset.iter_batches(batch_size=None):
            for index, records in zip(batch["index"], batch["boxes"], strict=True):
                found[int(index)] = Detections.from_records(json.loads(records))
            bar.update(len(batch["index"]))
    if sorted(found) != list(range(len(images))):
        raise RuntimeError(f"Ray returned boxes for {len(found)} of {len(images)} images")
    return [found[i] for i in range(len(images))], time.perf_counter() - start


def _exact_records(detections: Detections) -> list[dict]:
    """`Detections.to_records` without its rounding: `Detections.from_records` gives the same float32s."""
    return [
        {"class": CLASS_NAMES[c], "score": float(s), "box": [float(v) for v in b]}
        for b, s, c in zip(detections.xyxy, detections.scores, detections.class_id, strict=True)
    ]


class _ScanActor:
    """A Ray detector actor: loads the models once, then decodes and detects image by image."""

    def __init__(self, config: DetectorConfig, max_pixels: int) -> None:
        self.detector = Detector(config, require_every_class=False)
        self.max_pixels = max_pixels

    def __call__(self, batch: dict) -> dict:
        boxes = []
        for index, path, width, height in zip(
            batch["index"], batch["path"], batch["width"], batch["height"], strict=True
        ):
            image = LabelledImage(Path(str(path)), int(width), int(height), Detections(), int(index))
            found = self.detector.detect(read_pixels(image, self.max_pixels))  # one by one, as in-process
            boxes.append(json.dumps(_exact_records(found)))
        return {"index": [int(i) for i in batch["index"]], "boxes": boxes}
