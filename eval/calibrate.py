"""Per-class score thresholds chosen on labelled sets (`streetblur calibrate`), by one of two rules.

- A budget of false blurs: for each class, the *lowest* swept threshold whose false blurs per image
  (pooled over every image of the sets that label the class) stay within `max_false_blurs`. A lower
  threshold blurs more real objects, so that threshold gives the highest blurred fraction the
  budget allows.
- A privacy target (`targets`, e.g. face 0.95): the *highest* swept threshold whose blurred fraction
  still reaches the target, so the target is met with the fewest false blurs the model allows.

Calibrate on the `dev` splits (held out from training, and not the `val` splits the figures are
reported on), or on labelled photos of your own fleet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from blurring.pipeline import Config
from detection.detections import CLASS_NAMES, Detections
from eval.datasets import LabelledImage
from eval.evaluate import at_thresholds, scan_config, scan_in_process
from eval.metrics import privacy_metrics

CALIBRATION_SWEEP = tuple(
    round(t, 2) for t in [0.01, 0.02, 0.03, 0.05, 0.07, *[k / 20 for k in range(2, 19)]]
)


@dataclass(frozen=True)
class ClassCalibration:
    """One class: its figures at every swept threshold, and the one chosen."""

    name: str
    images: int
    boxes: int
    rows: list[dict[str, float]]  # threshold, blurred, recall50, false_blurs_per_image
    rule: str  # what the chosen threshold meets, e.g. "false blurs/image <= 0.3" or "blurred >= 0.95"
    chosen: float | None  # None: no swept threshold meets the rule


def calibrate(
    sets: list[list[LabelledImage]],
    config: Config,
    max_false_blurs: float = 0.5,
    targets: dict[str, float] | None = None,
    progress: bool = True,
) -> list[ClassCalibration]:
    """Sweep thresholds over `sets` (the inference runs once per image) and choose one per class: by
    its blurred-fraction target where `targets` names the class, else by the false-blur budget."""
    targets = targets or {}
    if unknown := set(targets) - set(CLASS_NAMES):
        raise ValueError(f"targets for unknown classes {sorted(unknown)}; classes are {CLASS_NAMES}")
    pooled = [image for images in sets for image in images]
    images = [replace(image, image_id=n) for n, image in enumerate(pooled)]  # each set counts from 0
    set_of = [s for s, images in enumerate(sets) for _ in images]
    unmerged, _ = scan_in_process(
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
        rows = []
        for threshold in CALIBRATION_SWEEP:
            found = [
                _only(
                    at_thresholds(dets, dict.fromkeys(CLASS_NAMES, threshold), config.detect.merge_overlap), k
                )
                for _, dets in picked
            ]
            row = privacy_metrics([im for im, _ in picked], found, config.blur)[name]
            rows.append(
                {
                    "threshold": threshold,
                    "blurred": row["blurred"]["all"],
                    "recall50": row["recall50"],
                    "false_blurs_per_image": row["false_blurs_per_image"],
                }
            )
        boxes = sum(int((im.boxes.class_id == k).sum()) for im, _ in picked)
        if name in targets:
            rule = f"blurred >= {targets[name]}"
            meeting = [r["threshold"] for r in rows if r["blurred"] >= targets[name] - 1e-9]
            chosen = max(meeting) if meeting else None
        else:
            rule = f"false blurs/image <= {max_false_blurs}"
            meeting = [r["threshold"] for r in rows if r["false_blurs_per_image"] <= max_false_blurs + 1e-9]
            chosen = min(meeting) if meeting else None
        results.append(ClassCalibration(name, len(picked), boxes, rows, rule, chosen))
    return results


def _only(detections: Detections, class_id: int) -> Detections:
    return detections[detections.class_id == class_id]


def markdown(results: list[ClassCalibration]) -> str:
    """The sweep as a Markdown table per class, the chosen threshold marked."""
    lines = []
    for result in results:
        lines += [
            f"## {result.name}: {result.images} images, {result.boxes} boxes; "
            f"chosen threshold {result.chosen} ({result.rule})",
            "",
            "| threshold | blurred | recall@0.5 | false blurs/image |",
            "|---|---|---|---|",
        ]
        for row in result.rows:
            mark = " **chosen**" if row["threshold"] == result.chosen else ""
            lines.append(
                f"| {row['threshold']:.2f}{mark} | {row['blurred']:.3f} | {row['recall50']:.3f} "
                f"| {row['false_blurs_per_image']:.2f} |"
            )
        lines.append("")
    return "\n".join(lines)
