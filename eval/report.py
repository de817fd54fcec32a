"""Evaluate one or more models on a labelled set and write the report (`streetblur eval`).

One inference pass per model serves every figure. The detector runs with every class threshold
lowered to `SCAN_THRESHOLD` and its tile merge switched off. `at_thresholds` then keeps the boxes
at given thresholds and merges them as the detector does (`detection.tiling.merge_boxes`), which is
exactly what the detector run at those thresholds returns. (Keeping the boxes of the merged output
would not be: the merge widens high-score boxes with the low-score boxes it absorbs, and at a low
threshold so much that few boxes still match at IoU 0.5.) So:
- COCO metrics and the predictions file: every box, as `best_of_groups` (see there);
- PR curves: the detector at each threshold of `SWEEP` and at the deployed thresholds;
- privacy figures: the detector at the deployed thresholds, and again at the highest swept
  thresholds that reach the target recall (the deployed one stands in for a class whose target is
  not reached or that has no ground truth).

`write_report` writes into the output folder:
- `report.md`; `report.html`, the same with PR curves and example images (ground truth green where
  blurred, red where not; detections dashed yellow; the blur mask's outline cyan), self-contained
  with embedded PNGs; `report.json` (keys below);
- `predictions.json`, or with several models one `predictions-<label>.json` per model: the boxes
  scored by the COCO metrics, in COCO results format (the dataset's image ids, bbox x, y, w, h, score,
  category_id 1 face, 2 plate). A model's label is its model file name (several joined by `+`),
  with `-2`, `-3`, ... added to repeats, e.g. `predictions-streetblur-n.pt.json`;
- `ground_truth.json`: the labels in COCO format with the same image ids, for COCO tools.

`report.json`: `created` (UTC), `wall_time_s` (inference and metrics), `dataset` (root, format,
split, class_map, images, boxes per class), `settings` (target_recall, scan_threshold, mask_level,
blurred_coverage, inference: `in-process` or `ray, N actors`), `examples` (image files shown in the
HTML) and `models`, one entry per model with `label`, `model_id`, `model_files`, `predictions_file`,
`inference_s`, `blur` (options), `thresholds` {`deployed`, `target`} per class (`target` null where
not reached), `coco` per class (AP, AP50, AP75, AP_small, AP_medium, AP_large, AR100, recall50),
`privacy` {`deployed`, `target`} per class and `all` (see `eval.metrics.privacy_metrics`) and
`pr_curve` per class ({threshold, recall, precision} lists, or null). Figures that cannot be
computed (no ground truth) are null.

The inference pass runs in this process, or with `RayInference` on a Ray cluster: a pool of detector
actors as in `streetblur run` (`jobs.blur_job`), each loading the models once and decoding and
detecting image by image as this process would; the boxes come back at full float32 precision, in
the images' order, so the figures are the same. There `inference_s` includes starting the actors.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm import tqdm

from blurring import blur_mask
from detection.baselines import is_baseline
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector, DetectorConfig, model_id
from detection.tiling import merge_boxes
from eval.datasets import LabelledImage
from eval.metrics import (
    BLURRED_COVERAGE,
    MASK_LEVEL,
    PRCurve,
    blur_outcome,
    coco_metrics,
    ground_truth_coco,
    precision_recall,
    predictions_coco,
    privacy_metrics,
)
from jobs.blur_job import JobOptions, pool_size
from jobs.image_io import decode_image
from jobs.pipeline import Config

SCAN_THRESHOLD = 0.01  # score threshold of the inference pass (lower where a deployed one is lower)
SWEEP = tuple(np.round(np.r_[np.arange(0.01, 0.3, 0.01), np.arange(0.3, 0.96, 0.05)], 2).tolist())
"""Score thresholds of the PR curves (with the deployed thresholds added): hundredths up to 0.3."""
EXAMPLES = 4  # example images in report.html
EXAMPLES_NOTE = (
    "Images where the deployed models left most ground truth unblurred, then made most false blurs. "
    "Ground truth: green blurred, red not blurred; detections dashed yellow; blur mask outline cyan."
)


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


@dataclass(frozen=True)
class Evaluation:
    """Every model's results on one set of labelled images."""

    images: list[LabelledImage]
    dataset: dict[str, object]
    target_recall: float
    models: list[ModelResult]
    created: str
    wall_time_s: float
    inference: str = "in-process"  # or "ray, N actors"


@dataclass(frozen=True)
class RayInference:
    """Run the inference pass on Ray: a pool of detector actors, as `streetblur run` does.

    The actors read the images and model files by their absolute paths: on a cluster of several
    machines, these must be there on every node (a shared file system).
    """

    address: str | None = None  # None: RAY_ADDRESS, else a new local Ray
    actors: int | None = None  # None: as many as the cluster allows (`jobs.blur_job.pool_size`)
    actor_cpus: float = JobOptions.actor_cpus
    actor_gpus: float = JobOptions.actor_gpus
    batch_size: int = JobOptions.batch_size  # images per actor call (each still detected alone)


Scan = Callable[[list[LabelledImage], DetectorConfig, int, str, bool], tuple[list[Detections], float]]
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


def at_thresholds(unmerged: Detections, thresholds: dict[str, float], merge_overlap: float) -> Detections:
    """What a detector with per-class `thresholds` returns, from its boxes before the tile merge."""
    limit = np.array([thresholds[name] for name in CLASS_NAMES], np.float32)
    return merge_boxes(unmerged[unmerged.scores >= limit[unmerged.class_id]], merge_overlap)


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
    target_recall: float = 0.95,
    dataset: dict[str, object] | None = None,
    progress: bool = True,
    ray: RayInference | None = None,
) -> Evaluation:
    """Run each config's models once over `images` and compute every figure.

    `dataset` describes the images for the report (root, format, split, class_map). With `ray`, the
    inference pass runs on a Ray cluster's detector actors instead of in this process.
    """
    if not images:
        raise ValueError("no labelled images to evaluate")
    if not 0 < target_recall <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {target_recall}")
    start = time.perf_counter()
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    labels = _labels(configs)
    scan, inference = (scan_in_process, "in-process") if ray is None else _ray_scan(ray, len(images))
    models = [
        _evaluate_model(images, config, label, target_recall, progress, scan)
        for config, label in zip(configs, labels, strict=True)
    ]
    described = {**(dataset or {}), "images": len(images), "boxes": _box_counts(images)}
    wall = time.perf_counter() - start
    return Evaluation(images, described, target_recall, models, created, wall, inference)


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


def scan_in_process(
    images: list[LabelledImage], config: DetectorConfig, max_pixels: int, label: str, progress: bool
) -> tuple[list[Detections], float]:
    """`Scan` with one detector in this process; the seconds exclude loading the models."""
    detector = Detector(config, require_every_class=False)
    start = time.perf_counter()
    found = [
        detector.detect(read_pixels(image, max_pixels))
        for image in tqdm(images, desc=label, unit="image", disable=not progress, file=sys.stderr)
    ]
    return found, time.perf_counter() - start


def _ray_scan(options: RayInference, n_images: int) -> tuple[Scan, str]:
    """Connect to Ray (as `jobs.blur_job.run_job` does) and size the actor pool; the `Scan` and its note.

    The pool: `options.actors`, else as many as the cluster allows, at most one per batch of images.
    """
    import ray

    if options.actors is not None and options.actors < 1:
        raise ValueError(f"actors must be at least 1, got {options.actors}")
    if options.batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {options.batch_size}")
    address = options.address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    job = JobOptions("", "", actor_cpus=options.actor_cpus, actor_gpus=options.actor_gpus)
    actors = options.actors or pool_size(ray.cluster_resources(), job)
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
    dataset = dataset.map_batches(
        _ScanActor,
        fn_constructor_kwargs={"config": config, "max_pixels": max_pixels},
        compute=ray.data.ActorPoolStrategy(size=actors),
        batch_size=options.batch_size,
        num_cpus=options.actor_cpus,
        num_gpus=options.actor_gpus,
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


def _evaluate_model(
    images: list[LabelledImage],
    config: Config,
    label: str,
    target_recall: float,
    progress: bool,
    scan: Scan = scan_in_process,
) -> ModelResult:
    deployed = config.detect.thresholds  # every class, filled in by DetectorConfig
    unmerged, inference_s = scan(images, scan_config(config.detect), config.max_pixels, label, progress)

    def detections_at(thresholds: dict[str, float]) -> list[Detections]:
        return [at_thresholds(dets, thresholds, config.detect.merge_overlap) for dets in unmerged]

    predictions = [best_of_groups(dets, config.detect.merge_overlap) for dets in unmerged]
    sweep = sorted(set(SWEEP) | set(deployed.values()))
    curves = precision_recall(images, lambda t: detections_at(dict.fromkeys(CLASS_NAMES, t)), sweep)
    target = {name: c.threshold_for_recall(target_recall) if c else None for name, c in curves.items()}
    detections = {
        "deployed": detections_at(deployed),
        "target": detections_at({n: deployed[n] if target[n] is None else target[n] for n in CLASS_NAMES}),
    }
    return ModelResult(
        label=label,
        config=config,
        model_id=model_id(config.detect.models),
        inference_s=inference_s,
        predictions=predictions,
        thresholds={"deployed": deployed, "target": target},
        detections=detections,
        coco=coco_metrics(images, predictions),
        curves=curves,
        privacy={point: privacy_metrics(images, dets, config.blur) for point, dets in detections.items()},
    )


def predictions_file(evaluation: Evaluation, model: ModelResult) -> str:
    """`predictions.json` for a single model, else `predictions-<label>.json`."""
    if len(evaluation.models) == 1:
        return "predictions.json"
    safe = re.sub(r"[^\w.+-]", "_", model.label)
    return f"predictions-{safe}.json"


def write_report(evaluation: Evaluation, out_dir: str | Path) -> dict[str, Path]:
    """Write report.md, report.html, report.json, ground_truth.json and the predictions files.

    Returns their paths, keyed `report.md` ... and by model label for the predictions files.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    examples = _pick_examples(evaluation)
    summary = _summary(evaluation, examples)
    files = {
        "report.json": _write(out / "report.json", json.dumps(summary, indent=1) + "\n"),
        "report.md": _write(out / "report.md", _markdown(summary)),
        "report.html": _write(out / "report.html", _html(evaluation, summary, examples)),
        "ground_truth.json": _write(
            out / "ground_truth.json", json.dumps(ground_truth_coco(evaluation.images))
        ),
    }
    for model in evaluation.models:
        results = predictions_coco(evaluation.images, model.predictions)
        files[model.label] = _write(out / predictions_file(evaluation, model), json.dumps(results))
    return files


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _summary(evaluation: Evaluation, examples: list[int]) -> dict:
    """The contents of report.json."""
    return {
        "created": evaluation.created,
        "wall_time_s": round(evaluation.wall_time_s, 2),
        "dataset": evaluation.dataset,
        "settings": {
            "target_recall": evaluation.target_recall,
            "scan_threshold": SCAN_THRESHOLD,
            "mask_level": MASK_LEVEL,
            "blurred_coverage": BLURRED_COVERAGE,
            "inference": evaluation.inference,
        },
        "examples": [evaluation.images[i].path.name for i in examples],
        "models": [
            {
                "label": model.label,
                "model_id": model.model_id,
                "model_files": list(model.config.detect.models),
                "predictions_file": predictions_file(evaluation, model),
                "inference_s": round(model.inference_s, 2),
                "blur": dataclasses.asdict(model.config.blur),
                "thresholds": model.thresholds,
                "coco": model.coco,
                "privacy": model.privacy,
                "pr_curve": {name: _curve_json(curve) for name, curve in model.curves.items()},
            }
            for model in evaluation.models
        ],
    }


def _curve_json(curve: PRCurve | None) -> dict[str, list] | None:
    """The curve as JSON lists; a precision without detections (NaN) becomes null."""
    if curve is None:
        return None
    columns = {"threshold": curve.threshold, "recall": curve.recall, "precision": curve.precision}
    return {
        key: [None if np.isnan(v) else round(float(v), 4) for v in values] for key, values in columns.items()
    }


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by report.md and report.html."""
    target = summary["settings"]["target_recall"]
    models = summary["models"]
    n_images = summary["dataset"]["images"]
    overview = [
        [
            m["label"],
            m["model_id"],
            ", ".join(f"{c} {t:.2f}" for c, t in m["thresholds"]["deployed"].items()),
            f"{m['inference_s']:.1f} s ({1000 * m['inference_s'] / n_images:.0f} ms/image)",
            "{mode}, margin {margin}, feather {feather}, face ellipse {face_ellipse}".format(**m["blur"]),
            m["predictions_file"],
        ]
        for m in models
    ]
    coco_keys = ["AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large", "AR100"]
    coco = [
        [m["label"], name, *(_number(row[key]) for key in coco_keys)]
        for m in models
        for name, row in m["coco"].items()
    ]
    privacy_header = ["model", "class", "threshold", "recall@0.5", "blurred", "small", "medium", "large"]
    privacy_header += ["false blurs/image", "detections/image"]

    def privacy_rows(point: str) -> list[list[str]]:
        rows = []
        for m in models:
            for name, row in m["privacy"][point].items():
                threshold = m["thresholds"][point].get(name)
                if point == "target" and name in CLASS_NAMES and threshold is None:
                    reason = "no ground truth" if m["pr_curve"][name] is None else "not reached"
                    cell = f"{reason}: deployed {m['thresholds']['deployed'][name]:.2f}"
                else:
                    cell = _number(threshold)
                blurred = [
                    "-" if share is None else f"{share:.3f} ({row['boxes'][size]})"
                    for size, share in row["blurred"].items()
                ]
                per_image = [_number(row["false_blurs_per_image"]), _number(row["detections_per_image"])]
                rows.append([m["label"], name, cell, _number(row["recall50"]), *blurred, *per_image])
        return rows

    return [
        (
            "Models",
            ["model", "model id", "deployed thresholds", "inference", "blur", "predictions"],
            overview,
        ),
        (
            f"COCO metrics (every box scored {SCAN_THRESHOLD} or more, each as first reported)",
            ["model", "class", *coco_keys],
            coco,
        ),
        ("Privacy at the deployed thresholds", privacy_header, privacy_rows("deployed")),
        (
            f"Privacy at the highest thresholds that reach recall {target}",
            privacy_header,
            privacy_rows("target"),
        ),
    ]


DEFINITIONS = [
    f"Each model runs once with every class threshold at {SCAN_THRESHOLD} and its tile merge off; the boxes "
    "are then merged as the detector merges them, so the figures at any threshold are those of the "
    "detector run at that threshold.",
    "COCO metrics and the predictions file rank every box as the detector first reports it, at a "
    "threshold equal to its score: the best box of each tile-merge group, not the union of the group, "
    "which grows as the threshold falls. Cut at any threshold, they are the boxes the detector returns "
    "there, before that growth.",
    "recall@0.5: share of ground-truth boxes matched by a detection of their class at IoU 0.5 (COCO).",
    f"blurred: share of ground-truth boxes with at least {BLURRED_COVERAGE:.0%} of their area under the "
    f"blur mask (`blurring.blur_mask` >= {MASK_LEVEL}: dilation, face ellipse and soft edge included), "
    "from detections of any class; in brackets the number of boxes.",
    "small / medium / large: ground-truth box area below 32², below 96², from 96² square pixels (COCO).",
    "false blurs/image: detections sharing no area with any ground-truth box, per image.",
    "all: the classes that have ground truth here, together. A class without ground truth (the shared "
    "sets label one class each) is not scored: its detections cannot be judged.",
    "PR curves: recall@0.5 and precision (matched detections / detections) at score thresholds "
    f"{SWEEP[0]}, {SWEEP[1]}, ... {SWEEP[-1]} (hundredths up to 0.3) and the deployed ones. The "
    "threshold for the target recall is the highest of these whose recall reaches it.",
]


def _header_lines(summary: dict) -> list[str]:
    data = summary["dataset"]
    boxes = ", ".join(f"{name} {n}" for name, n in data["boxes"].items())
    class_map = _class_map_text(data["class_map"]) if data.get("class_map") else "built-in aliases"
    return [
        f"dataset: {data.get('root', '?')} ({data.get('format', '?')}, split {data.get('split', 'all')}, "
        f"class map {class_map}): {data['images']} images, boxes {boxes}",
        f"created {summary['created']}; wall time {summary['wall_time_s']:.1f} s; "
        f"inference {summary['settings'].get('inference', 'in-process')}; "
        f"target recall {summary['settings']['target_recall']}",
    ]


def _class_map_text(class_map: dict[str, str]) -> str:
    """`a,b=face;c=plate`, the `--class-map` syntax."""
    names = {target: [n for n, t in class_map.items() if t == target] for target in class_map.values()}
    return ";".join(f"{','.join(sources)}={target}" for target, sources in names.items())


def _markdown(summary: dict) -> str:
    lines = ["# streetblur evaluation", "", *(f"- {line}" for line in _header_lines(summary))]
    for title, header, rows in _tables(summary):
        lines += ["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", "## Definitions", "", *(f"- {text}" for text in DEFINITIONS), ""]
    return "\n".join(lines)


def _html(evaluation: Evaluation, summary: dict, examples: list[int]) -> str:
    body = ["<h1>streetblur evaluation</h1>", "<ul>"]
    body += [f"<li>{html.escape(line)}</li>" for line in _header_lines(summary)] + ["</ul>"]
    for title, header, rows in _tables(summary):
        body.append(f"<h2>{html.escape(title)}</h2><table>")
        body.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
        body += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
        body.append("</table>")
    curves = _pr_figure(evaluation)
    if curves:
        body += ["<h2>Precision-recall at IoU 0.5</h2>", _img(curves, "precision-recall curves")]
        body.append(
            f"<p>One point per score threshold. Dot: deployed threshold; square: highest threshold "
            f"reaching the target recall {evaluation.target_recall} (dashed).</p>"
        )
    body.append(f"<h2>Examples</h2><p>{html.escape(EXAMPLES_NOTE)}</p>")
    for index in examples:
        name = evaluation.images[index].path.name
        body += [f"<h3>{html.escape(name)}</h3>", _img(_example_figure(evaluation, index), name)]
    body += ["<h2>Definitions</h2><ul>", *(f"<li>{html.escape(text)}</li>" for text in DEFINITIONS), "</ul>"]
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>streetblur evaluation</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _pr_figure(evaluation: Evaluation) -> bytes | None:
    """One plot per class with ground truth, one curve per model; None when no class has any."""
    classes = [name for name in CLASS_NAMES if evaluation.models[0].curves[name] is not None]
    if not classes:
        return None
    figure = Figure(figsize=(5 * len(classes), 4), dpi=90)
    for ax, name in zip(figure.subplots(1, len(classes), squeeze=False)[0], classes, strict=True):
        for model in evaluation.models:
            curve = model.curves[name]
            (line,) = ax.plot(curve.recall, curve.precision, ".-", markersize=3, label=model.label)
            for point in ("deployed", "target"):
                threshold = model.thresholds[point][name]
                if threshold is not None:
                    i = int(np.searchsorted(curve.threshold, threshold))
                    xy = (curve.recall[i], curve.precision[i])
                    ax.plot(*xy, "o" if point == "deployed" else "s", color=line.get_color())
                    ax.annotate(f"{threshold:.2f}", xy, textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axvline(evaluation.target_recall, color="grey", linestyle="--", linewidth=1)
        ax.set(xlim=(0, 1.01), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=name)
        ax.legend(loc="lower left", fontsize=8)
    return _png(figure)


def _pick_examples(evaluation: Evaluation) -> list[int]:
    """Images with the most ground-truth boxes left unblurred (all models), then most false blurs."""
    missed, false = np.zeros(len(evaluation.images)), np.zeros(len(evaluation.images))
    for model in evaluation.models:
        for i, (image, dets) in enumerate(zip(evaluation.images, model.detections["deployed"], strict=True)):
            blurred, false_blur = blur_outcome(image, dets, model.config.blur)
            missed[i] += (~blurred).sum()
            false[i] += false_blur.sum()
    order = sorted(range(len(evaluation.images)), key=lambda i: (-missed[i], -false[i], i))
    return order[:EXAMPLES]


def _example_figure(evaluation: Evaluation, index: int) -> bytes:
    """The image once per model, with its ground truth, deployed detections and blur mask drawn."""
    image = evaluation.images[index]
    rgb = read_pixels(image, evaluation.models[0].config.max_pixels)[..., ::-1]
    panels = len(evaluation.models)
    figure = Figure(figsize=(5 * panels, 5 * image.height / image.width + 0.4), dpi=90)
    for ax, model in zip(figure.subplots(1, panels, squeeze=False)[0], evaluation.models, strict=True):
        dets = model.detections["deployed"][index]
        blurred, false_blur = blur_outcome(image, dets, model.config.blur)
        mask = blur_mask(image.height, image.width, dets, model.config.blur)
        ax.imshow(rgb)
        if mask.max() >= MASK_LEVEL:
            ax.contour(mask, levels=[MASK_LEVEL], colors="cyan", linewidths=1)
        for (x1, y1, x2, y2), hidden in zip(image.boxes.xyxy, blurred, strict=True):
            colour = "lime" if hidden else "red"
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        for (x1, y1, x2, y2), score, cls in zip(dets.xyxy, dets.scores, dets.class_id, strict=True):
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linestyle="--")
            )
            ax.text(x1, y1, f"{CLASS_NAMES[cls]} {score:.2f}", color="yellow", fontsize=7, va="bottom")
        ax.set_title(
            f"{model.label}: {(~blurred).sum()} not blurred, {false_blur.sum()} false blurs", fontsize=9
        )
        ax.axis("off")
    return _png(figure)
