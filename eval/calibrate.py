"""Per-class score thresholds chosen on labelled sets (`streetblur calibrate`), by one of two rules.

- A budget of false blurs: for each class, the *lowest* swept threshold whose false blurs per image
  (pooled over every image of the sets that label the class) stay within `max_false_blurs` and whose
  falsely blurred area (the mean share of an image) stays within `max_false_area`. A lower
  threshold blurs more real objects, so that threshold gives the highest blurred fraction the
  budget allows.
- A privacy target (`targets`, e.g. face 0.95): the *highest* swept threshold whose blurred fraction
  still reaches the target, so the target is met with the fewest false blurs the model allows.

The figures are those of `streetblur eval` (`eval.metrics.privacy_sweep`): while one class's threshold
is swept, the other classes stay at their configured thresholds, and every box blurs.

Calibrate on the `dev` splits (held out from training, and not the `val` splits the figures are
reported on), or on labelled photos of your own fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

from blurring.config import Config
from detection.detections import CLASS_NAMES, Detections
from eval.datasets import LabelledImage
from eval.evaluate import at_thresholds, detection_pass_in_process, scan_config
from eval.metrics import privacy_sweep, threshold_for_blurred, threshold_within_budget


@dataclass(frozen=True)
class ClassCalibration:
    """One class: its figures at every swept threshold, and the one chosen."""

    name: str
    images: int
    boxes: int
    rows: list[dict[str, float]]  # `eval.metrics.privacy_sweep` rows
    rule: str  # what the chosen threshold meets, e.g. "false blurs/image <= 0.3" or "blurred >= 0.95"
    chosen: float | None  # None: no swept threshold meets the rule


def calibrate(
    sets: list[list[LabelledImage]],
    config: Config,
    max_false_blurs: float = 0.5,
    targets: dict[str, float] | None = None,
    progress: bool = True,
    max_false_area: float = 0.005,
) -> list[ClassCalibration]:
    """Sweep thresholds over `sets` (the inference runs once per image) and choose one per class: by
    its blurred-fraction target where `targets` names the class, else by the false-blur budget."""
    targets = targets or {}
    if unknown := set(targets) - set(CLASS_NAMES):
        raise ValueError(f"targets for unknown classes {sorted(unknown)}; classes are {CLASS_NAMES}")
    pooled = [image for images in sets for image in images]
    images = [replace(image, image_id=n) for n, image in enumerate(pooled)]  # each set counts from 0
    set_of = [s for s, images in enumerate(sets) for _ in images]
    unmerged, _ = detection_pass_in_process(
        images, scan_config(config.detect), config.max_pixels, "calibrate", progress
    )
    results = []
    for k, name in enumerate(CLASS_NAMES):
        labelling = {
            s for s, images in enumerate(sets) if any((im.boxes.class_id == k).any() for im in images)
        }
        picked = [(im, dets) for im, dets, s in zip(images, unmerged, set_of, strict=True) if s in labelling]
        if not picked:
            continue
        found = [dets for _, dets in picked]
        detections_at = partial(_at_thresholds, found, merge_overlap=config.detect.merge_overlap)
        rows = privacy_sweep(
            [im for im, _ in picked], detections_at, config.detect.thresholds, name, config.blur
        )
        boxes = sum(int((im.boxes.class_id == k).sum()) for im, _ in picked)
        if name in targets:
            rule = f"blurred >= {targets[name]}"
            chosen = threshold_for_blurred(rows, targets[name])
        else:
            rule = f"false blurs/image <= {max_false_blurs}, falsely blurred area <= {max_false_area:.2%}"
            chosen = threshold_within_budget(rows, max_false_blurs, max_false_area)
        results.append(ClassCalibration(name, len(picked), boxes, rows, rule, chosen))
    return results


def _at_thresholds(
    unmerged: list[Detections], thresholds: dict[str, float], merge_overlap: float
) -> list[Detections]:
    """Per image, what the detector returns at `thresholds` (see `eval.evaluate.at_thresholds`)."""
    return [at_thresholds(dets, thresholds, merge_overlap) for dets in unmerged]


def markdown(results: list[ClassCalibration]) -> str:
    """The sweep as a Markdown table per class, the chosen threshold marked."""
    lines = []
    for result in results:
        lines += [
            f"## {result.name}: {result.images} images, {result.boxes} boxes; "
            f"chosen threshold {result.chosen} ({result.rule})",
            "",
            "| threshold | blurred | recall@0.5 | false blurs/image | falsely blurred area (pooled) |",
            "|---|---|---|---|---|",
        ]
        for row in result.rows:
            mark = " **chosen**" if row["threshold"] == result.chosen else ""
            lines.append(
                f"| {row['threshold']:.2f}{mark} | {row['blurred']:.3f} | {row['recall50']:.3f} "
                f"| {row['false_blurs_per_image']:.2f} "
                f"| {row['false_blur_area']:.3%} ({row['false_blur_area_pooled']:.3%}) |"
            )
        lines.append("")
    return "\n".join(lines)
