"""`streetblur eval --ray`: the evaluation's inference pass on a pool of detector actors, as the batch
job runs them (`jobs.ray_cluster`), giving the boxes `eval.evaluate.detection_pass_in_process` gives.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from detection.baselines import is_baseline
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector, DetectorConfig
from eval.datasets import LabelledImage
from eval.evaluate import DetectionPass, read_pixels
from jobs.ray_cluster import ACTOR_CPUS, BATCH_SIZE, pool_size, start_ray, with_actor_pool


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


def ray_detection_pass(options: RayInference, n_images: int) -> tuple[DetectionPass, str]:
    """Connect to Ray (`start_ray`) and size the actor pool; the `DetectionPass` for
    `eval.evaluate.run_evaluation` and its note for the report.

    The pool: `options.actors`, else as many as the cluster allows, at most one per batch of images.
    """
    if options.actors is not None and options.actors < 1:
        raise ValueError(f"actors must be at least 1, got {options.actors}")
    if options.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {options.batch_size}")
    start_ray(options.address)
    actors = options.actors or pool_size(options.actor_cpus, options.actor_gpus)
    actors = max(1, min(actors, math.ceil(n_images / options.batch_size)))

    def detection_pass(
        images: list[LabelledImage], config: DetectorConfig, max_pixels: int, label: str, progress: bool
    ) -> tuple[list[Detections], float]:
        return _detection_pass_on_ray(images, config, max_pixels, label, progress, options, actors)

    return detection_pass, f"ray, {actors} actor{'s' if actors > 1 else ''}"


def _detection_pass_on_ray(
    images: list[LabelledImage],
    config: DetectorConfig,
    max_pixels: int,
    label: str,
    progress: bool,
    options: RayInference,
    actors: int,
) -> tuple[list[Detections], float]:
    """`DetectionPass` on a pool of `_DetectionPassActor`s; the seconds include starting them (loading
    the models)."""
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
        _DetectionPassActor,
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


class _DetectionPassActor:
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
