"""Evaluate one or more models on labelled images: one inference pass per model serves every figure.

The detector runs with every class threshold lowered to `SCAN_THRESHOLD` and its tile merge switched
off. `at_thresholds` then keeps the boxes at given thresholds and merges them as the detector does
(`detection.tiling.merge_boxes`), which is exactly what the detector run at those thresholds
returns. (Keeping the boxes of the merged output would not be: the merge widens high-score boxes
with the low-score boxes it absorbs, and at a low threshold so much that few boxes still match at
IoU 0.5.) So:
- COCO metrics and the predictions file: every box, as `best_of_groups` (see there);
- PR curves: the detector at each threshold of `SWEEP` and at the deployed thresholds;
- privacy figures: the detector at the deployed thresholds, and again at the target thresholds: per
  class, the highest threshold whose blurred fraction reaches the target, by the rule and figures
  of `streetblur calibrate --target` (`eval.metrics.privacy_sweep`, the other classes at their
  deployed thresholds); the deployed one stands in for a class whose target is not reached or that
  has no ground truth.

The inference pass is a `DetectionPass`: `detection_pass_in_process` here, or any other that returns
the same boxes (`jobs.eval_on_ray.ray_detection_pass` runs it on the batch job's Ray actor pool).
`eval.report` writes the results; `eval.calibrate` reuses the pass to choose thresholds.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from blurring.config import Config
from blurring.image_io import decode_image
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector, DetectorConfig, model_id, resolve_models
from detection.tiling import merge_boxes
from detection.verify import blurred_by_cascade, proposed_boxes
from eval.datasets import LabelledImage
from eval.metrics import (
    PRCurve,
    coco_metrics,
    left_unblurred,
    precision_recall,
    privacy_metrics,
    privacy_sweep,
    threshold_for_blurred,
)

SCAN_THRESHOLD = 0.01  # score threshold of the inference pass (lower where a deployed one is lower)
SWEEP = tuple(np.round(np.r_[np.arange(0.01, 0.3, 0.01), np.arange(0.3, 0.96, 0.05)], 2).tolist())
"""Score thresholds of the PR curves (with the deployed thresholds added): hundredths up to 0.3."""


@dataclass(frozen=True)
class ModelResult:
    """One model's detections and figures on the evaluated images."""

    label: str
    config: Config
    model_id: str
    inference_s: float
    predictions: list[Detections]  # every box, by `best_of_groups`, per image
    thresholds: dict[str, dict[str, float | None]]  # "deployed" / "target" -> class -> score
    detections: dict[str, list[Detections]]  # "deployed" / "target" -> what the detector returns
    coco: dict[str, dict[str, float | None]]
    curves: dict[str, PRCurve | None]
    privacy: dict[str, dict[str, dict]]  # "deployed" / "target" -> `privacy_metrics`
    sweeps: dict[str, list[dict[str, float]] | None]  # per class: `privacy_sweep`, None without ground truth
    # On the labels as published, where the evaluated ones are corrected: "coco" and "privacy" (at
    # the deployed thresholds); None otherwise.
    raw: dict[str, dict] | None = None
    # The two stages at the deployed thresholds: "proposal_thresholds", "verify_thresholds" (None with
    # verification off), "proposals" (`privacy_metrics` of every proposal blurred) and "left_unblurred"
    # (`eval.metrics.left_unblurred`: the real proposals the deployed detector does not blur)
    stages: dict[str, dict] | None = None


@dataclass(frozen=True)
class Evaluation:
    """Every model's results on one set of labelled images."""

    images: list[LabelledImage]
    dataset: dict[str, object]
    target_blurred: float
    models: list[ModelResult]
    created: str
    wall_time_s: float
    inference: str = "in-process"  # or "ray, N actors"


DetectionPass = Callable[
    [list[LabelledImage], DetectorConfig, int, str, bool], tuple[list[Detections], float]
]
"""Runs a detector config on every image (decoded with a pixel limit): its boxes per image, in order,
and the seconds it took. Arguments: images, config, max_pixels, progress label, progress on."""


def read_pixels(image: LabelledImage, max_pixels: int) -> np.ndarray:
    """BGR pixels of a labelled image, decoded as `streetblur blur` decodes (EXIF orientation applied)."""
    pixels = decode_image(image.path.read_bytes(), max_pixels).pixels
    if pixels.shape[:2] != (image.height, image.width):
        raise ValueError(
            f"{image.path}: labelled as {image.width}x{image.height} but decodes to "
            f"{pixels.shape[1]}x{pixels.shape[0]}"
        )
    return pixels


def scan_config(config: DetectorConfig) -> DetectorConfig:
    """`config` for the inference pass: thresholds lowered to `SCAN_THRESHOLD`, tile merge off."""
    thresholds = {name: min(SCAN_THRESHOLD, score) for name, score in config.thresholds.items()}
    return dataclasses.replace(config, thresholds=thresholds, merge_overlap=math.inf)


def at_thresholds(
    unmerged: Detections,
    thresholds: dict[str, float],
    merge_overlap: float,
    zoom: np.ndarray | None = None,
    proposal_thresholds: dict[str, float] | None = None,
    verify_thresholds: dict[str, float] | None = None,
) -> Detections:
    """What a detector with per-class `thresholds` returns, from its boxes before the tile merge; with
    `zoom` (their zoom scores, `zoom_pass`), what it returns with verification on at those stages'
    thresholds (`detection.verify.blurred_by_cascade`, the detector's own rule)."""
    keep = blurred_by_cascade(unmerged, zoom, thresholds, proposal_thresholds or {}, verify_thresholds or {})
    return merge_boxes(unmerged[keep], merge_overlap)


def zoom_pass(
    images: list[LabelledImage],
    config: Config,
    unmerged: list[Detections],
    proposal_thresholds: dict[str, float],
    label: str,
    progress: bool,
) -> list[np.ndarray]:
    """Per image, the zoom score of each box of `unmerged` (an inference pass's boxes) that scores at
    least its class's `proposal_thresholds`, sure boxes included (so that any sure threshold can be
    evaluated); NaN for the others. In this process, with `config`'s detector."""
    detector = Detector(config.detect, require_every_class=False)
    scores = []
    for image, dets in tqdm(
        list(zip(images, unmerged, strict=True)), desc=f"{label} zoom", disable=not progress, file=sys.stderr
    ):
        proposed = proposed_boxes(dets, proposal_thresholds)
        zoom = np.full(len(dets), np.nan)
        if proposed.any():
            pixels = read_pixels(image, config.max_pixels)
            zoom[proposed] = detector.zoom_scores(pixels, dets[proposed])
        scores.append(zoom)
    return scores


def best_of_groups(unmerged: Detections, merge_overlap: float) -> Detections:
    """The tile merge's boxes, each as its highest-scored member (and any of equal score), not the union.

    A box is absorbed only by higher-scored ones, so the merge keeps the same boxes at every threshold
    and widens each with the members it absorbs above the threshold. At a threshold equal to its own
    score a box is its best member: cut at any threshold, these are the boxes the detector returns
    there, before the widening, and COCO's ranking of them is consistent with thresholding.
    """
    merged = merge_boxes(unmerged, merge_overlap)  # scores: the best member's
    best = []
    for union, score, cls in zip(merged.xyxy, merged.scores, merged.class_id, strict=True):
        inside = (unmerged.xyxy[:, :2] >= union[:2]).all(1) & (unmerged.xyxy[:, 2:] <= union[2:]).all(1)
        members = unmerged.xyxy[inside & (unmerged.scores == score) & (unmerged.class_id == cls)]
        best.append([*members[:, :2].min(0), *members[:, 2:].max(0)])
    return Detections(np.reshape(best, (-1, 4)), merged.scores, merged.class_id)


def run_evaluation(
    images: list[LabelledImage],
    configs: Sequence[Config],
    target_blurred: float = 0.95,
    dataset: dict[str, object] | None = None,
    progress: bool = True,
    detection_pass: DetectionPass | None = None,
    inference: str = "in-process",
    raw_images: list[LabelledImage] | None = None,
) -> Evaluation:
    """Run each config's models once over `images` and compute every figure, the target thresholds for
    the blurred fraction `target_blurred`.

    `dataset` describes the images for the report (root, format, split, class_map). `detection_pass`
    runs the inference pass (default: `detection_pass_in_process`); `inference` says where, for the
    report (`jobs.eval_on_ray.ray_detection_pass` gives both for the batch job's Ray actor pool).
    `raw_images`, the same images with their labels as published where `images` carry a label audit's
    corrections, are scored too (`ModelResult.raw`), so that a report shows both.
    """
    if not images:
        raise ValueError("no labelled images to evaluate")
    if raw_images is not None and [im.path for im in raw_images] != [im.path for im in images]:
        raise ValueError("raw_images must be the evaluated images, in the same order")
    if not 0 < target_blurred <= 1:
        raise ValueError(f"the target blurred fraction must be in (0, 1], got {target_blurred}")
    start = time.perf_counter()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    labels = _labels(configs)
    detection_pass = detection_pass or detection_pass_in_process
    models = [
        _evaluate_model(images, config, label, target_blurred, progress, detection_pass, raw_images)
        for config, label in zip(configs, labels, strict=True)
    ]
    described = {**(dataset or {}), "images": len(images), "boxes": _box_counts(images)}
    wall = time.perf_counter() - start
    return Evaluation(images, described, target_blurred, models, created, wall, inference)


def _labels(configs: Sequence[Config]) -> list[str]:
    """Model file names joined by `+`; repeats get `-2`, `-3`, ..."""
    seen: Counter[str] = Counter()
    labels = []
    for config in configs:
        label = "+".join(Path(model).name for model in config.detect.models)
        seen[label] += 1
        labels.append(label if seen[label] == 1 else f"{label}-{seen[label]}")
    return labels


def _box_counts(images: list[LabelledImage]) -> dict[str, int]:
    return Detections.concat(image.boxes for image in images).counts()


def detection_pass_in_process(
    images: list[LabelledImage], config: DetectorConfig, max_pixels: int, label: str, progress: bool
) -> tuple[list[Detections], float]:
    """`DetectionPass` with one detector in this process; the seconds exclude loading the models."""
    detector = Detector(config, require_every_class=False)
    start = time.perf_counter()
    found = [
        detector.detect(read_pixels(image, max_pixels))
        for image in tqdm(images, desc=label, unit="image", disable=not progress, file=sys.stderr)
    ]
    return found, time.perf_counter() - start


def _evaluate_model(
    images: list[LabelledImage],
    config: Config,
    label: str,
    target_blurred: float,
    progress: bool,
    detection_pass: DetectionPass = detection_pass_in_process,
    raw_images: list[LabelledImage] | None = None,
) -> ModelResult:
    deployed = config.detect.thresholds  # every class, filled in by DetectorConfig
    detect = config.detect
    unmerged, inference_s = detection_pass(images, scan_config(detect), config.max_pixels, label, progress)
    zoom: list[np.ndarray | None] = [None] * len(images)
    if detect.verify == "on":
        start = time.perf_counter()
        zoom = zoom_pass(images, config, unmerged, detect.proposal_thresholds, label, progress)
        inference_s += time.perf_counter() - start

    def detections_at(thresholds: dict[str, float]) -> list[Detections]:
        return [
            at_thresholds(
                dets,
                thresholds,
                detect.merge_overlap,
                z,
                detect.proposal_thresholds,
                detect.verify_thresholds,
            )
            for dets, z in zip(unmerged, zoom, strict=True)
        ]

    predictions = [best_of_groups(dets, config.detect.merge_overlap) for dets in unmerged]
    sweep = sorted(set(SWEEP) | set(deployed.values()))
    curves = precision_recall(images, lambda t: detections_at(dict.fromkeys(CLASS_NAMES, t)), sweep)
    sweeps = {
        name: privacy_sweep(images, detections_at, deployed, name, config.blur) if curve else None
        for name, curve in curves.items()
    }
    target = {
        name: threshold_for_blurred(rows, target_blurred) if rows else None for name, rows in sweeps.items()
    }
    detections = {
        "deployed": detections_at(deployed),
        "target": detections_at({n: deployed[n] if target[n] is None else target[n] for n in CLASS_NAMES}),
    }
    proposals = [at_thresholds(dets, detect.proposal_thresholds, detect.merge_overlap) for dets in unmerged]
    stages = {
        "proposal_thresholds": detect.proposal_thresholds,
        "verify_thresholds": detect.verify_thresholds if detect.verify == "on" else None,
        "proposals": privacy_metrics(images, proposals, config.blur),
        "left_unblurred": left_unblurred(images, proposals, detections["deployed"], config.blur),
    }
    return ModelResult(
        label=label,
        config=config,
        model_id=model_id(resolve_models(config.detect, config.detect.device).weights),
        inference_s=inference_s,
        predictions=predictions,
        thresholds={"deployed": deployed, "target": target},
        detections=detections,
        coco=coco_metrics(images, predictions),
        curves=curves,
        privacy={point: privacy_metrics(images, dets, config.blur) for point, dets in detections.items()},
        sweeps=sweeps,
        raw=None
        if raw_images is None
        else {
            "coco": coco_metrics(raw_images, predictions),
            "privacy": privacy_metrics(raw_images, detections["deployed"], config.blur),
        },
        stages=stages,
    )
