"""Per-class score thresholds chosen on labelled sets (`streetblur calibrate`), by one of two rules.

- A budget of false blurs: for each class, the *lowest* swept threshold whose false blurs per image
  (pooled over every image of the sets that label the class) stay within `max_false_blurs` and whose
  falsely blurred area (the mean share of an image) stays within `max_false_area`. A lower
  threshold blurs more real objects, so that threshold gives the highest blurred fraction the
  budget allows.
- A privacy target (`targets`, e.g. face 0.95): the *highest* swept threshold whose blurred fraction
  still reaches the target, so the target is met with the fewest false blurs the model allows.

With verification on (`detect.verify=on`), two more thresholds per class, after the sure one above:
- proposals: the *highest* swept threshold whose proposals, all blurred, would reach
  `proposal_targets` (face 0.97, plate 0.985), leaving the verifier headroom;
- verifier: with the proposals at those thresholds and the sure thresholds as configured, the *lowest*
  swept verify threshold within the budgets, as for the sure one.

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
from eval.evaluate import at_thresholds, detection_pass_in_process, scan_config, zoom_pass
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
    option: str = (
        "thresholds"  # the `detect.` option chosen: thresholds, proposal_thresholds, verify_thresholds
    )


PROPOSAL_TARGETS = {"face": 0.97, "plate": 0.985}
"""Blurred fractions the proposals reach on dev, were they all blurred: headroom for the verifier."""


def calibrate(
    sets: list[list[LabelledImage]],
    config: Config,
    max_false_blurs: float = 0.5,
    targets: dict[str, float] | None = None,
    progress: bool = True,
    max_false_area: float = 0.005,
    proposal_targets: dict[str, float] | None = None,
) -> list[ClassCalibration]:
    """Sweep thresholds over `sets` (the inference runs once per image) and choose one per class: by
    its blurred-fraction target where `targets` names the class, else by the false-blur budgets. With
    `config.detect.verify` on, also each class's proposal and verify thresholds (see the module)."""
    targets = targets or {}
    if unknown := set(targets) - set(CLASS_NAMES):
        raise ValueError(f"targets for unknown classes {sorted(unknown)}; classes are {CLASS_NAMES}")
    pooled = [image for images in sets for image in images]
    images = [replace(image, image_id=n) for n, image in enumerate(pooled)]  # each set counts from 0
    set_of = [s for s, images in enumerate(sets) for _ in images]
    unmerged, _ = detection_pass_in_process(
        images, scan_config(config.detect), config.max_pixels, "calibrate", progress
    )
    detect = config.detect
    budget = f"false blurs/image <= {max_false_blurs}, falsely blurred area <= {max_false_area:.2%}"
    labelled = {}  # class -> indices of the images of the sets that label it
    for k, name in enumerate(CLASS_NAMES):
        labelling = {
            s for s, images in enumerate(sets) if any((im.boxes.class_id == k).any() for im in images)
        }
        if chosen_images := [i for i, s in enumerate(set_of) if s in labelling]:
            labelled[name] = chosen_images
    results = []
    for name, chosen_images in labelled.items():
        picked = [images[i] for i in chosen_images]
        detections_at = partial(_at_thresholds, [unmerged[i] for i in chosen_images], detect.merge_overlap)
        rows = privacy_sweep(picked, detections_at, detect.thresholds, name, config.blur)
        boxes = sum(int((im.boxes.class_id == CLASS_NAMES.index(name)).sum()) for im in picked)
        if name in targets:
            rule = f"blurred >= {targets[name]}"
            chosen = threshold_for_blurred(rows, targets[name])
        else:
            rule, chosen = budget, threshold_within_budget(rows, max_false_blurs, max_false_area)
        results.append(ClassCalibration(name, len(picked), boxes, rows, rule, chosen))
        if detect.verify == "on":
            target = (proposal_targets or PROPOSAL_TARGETS)[name]
            proposal = threshold_for_blurred(rows, target)
            rule = f"proposals blurred >= {target}"
            results.append(
                ClassCalibration(name, len(picked), boxes, rows, rule, proposal, "proposal_thresholds")
            )
    if detect.verify == "on":
        proposal_thresholds = detect.proposal_thresholds | {
            r.name: r.chosen for r in results if r.option == "proposal_thresholds" and r.chosen is not None
        }
        zoom = zoom_pass(images, config, unmerged, proposal_thresholds, "calibrate", progress)
        for name, chosen_images in labelled.items():
            picked = [images[i] for i in chosen_images]

            def verified_at(
                verify_thresholds: dict[str, float], chosen_images=chosen_images
            ) -> list[Detections]:
                return [
                    at_thresholds(
                        unmerged[i],
                        detect.thresholds,
                        detect.merge_overlap,
                        zoom[i],
                        proposal_thresholds,
                        verify_thresholds,
                    )
                    for i in chosen_images
                ]

            rows = privacy_sweep(picked, verified_at, detect.verify_thresholds, name, config.blur)
            chosen = threshold_within_budget(rows, max_false_blurs, max_false_area)
            boxes = sum(int((im.boxes.class_id == CLASS_NAMES.index(name)).sum()) for im in picked)
            results.append(
                ClassCalibration(name, len(picked), boxes, rows, budget, chosen, "verify_thresholds")
            )
    return results


def _at_thresholds(
    unmerged: list[Detections], merge_overlap: float, thresholds: dict[str, float]
) -> list[Detections]:
    """Per image, what the detector returns at `thresholds` (see `eval.evaluate.at_thresholds`)."""
    return [at_thresholds(dets, thresholds, merge_overlap) for dets in unmerged]


def markdown(results: list[ClassCalibration]) -> str:
    """The sweep as a Markdown table per class, the chosen threshold marked."""
    lines = []
    for result in results:
        lines += [
            f"## {result.name}, detect.{result.option}: {result.images} images, {result.boxes} boxes; "
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
