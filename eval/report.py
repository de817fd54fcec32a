"""Write an evaluation (`eval.evaluate.run_evaluation`) as Markdown, HTML and JSON (`streetblur eval`).

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
set: the shared set it holds or null, split, class_map, labels, images, boxes per class), `settings`
(target_blurred, scan_threshold, mask_level, blurred_coverage, inference: `in-process` or `ray, N
actors`), `examples` (image files shown in the HTML) and `models`, one entry per model with `label`,
`model_id`, `model_files`, `predictions_file`, `inference_s`, `blur` (options), `thresholds`
{`deployed`, `target`} per class (`target`: the highest swept threshold whose blurred fraction reaches
target_blurred, as `streetblur calibrate --target` chooses; null where not reached), `coco` per class
(AP, AP50, AP75, AP_small, AP_medium, AP_large, AR100, recall50), `privacy` {`deployed`, `target`} per
class and `all` (see `eval.metrics.privacy_metrics`), `blurred_sweep` per class (the sweep the target
thresholds come from: {threshold, blurred, recall50, false_blurs_per_image, false_blur_area,
false_blur_area_pooled} rows, or null),
`stages` (`proposal_thresholds`, `verify_thresholds` or null, `proposals`: privacy figures were every
proposal blurred, `left_unblurred` per class: proposed, left_unblurred, fraction), `raw_labels`
({`coco`, `privacy`} at the deployed thresholds on the labels as published, where the
evaluated labels were corrected by a label audit; else null) and `pr_curve` per class ({threshold,
recall, precision} lists, or null). Figures that cannot be computed (no ground truth) are null.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
from pathlib import Path

import numpy as np

from detection.detections import CLASS_NAMES
from eval.evaluate import SCAN_THRESHOLD, SWEEP, Evaluation, ModelResult
from eval.figures import example_png, pick_examples, pr_curves_png
from eval.metrics import (
    BLURRED_COVERAGE,
    CALIBRATION_SWEEP,
    MASK_LEVEL,
    PRCurve,
    ground_truth_coco,
    predictions_coco,
)
from storage.files import write_file_atomically

EXAMPLES = 4  # example images in report.html
EXAMPLES_NOTE = (
    "Images where the deployed models left most ground truth unblurred, then made most false blurs. "
    "Ground truth: green blurred, red not blurred; detections dashed yellow; blur mask outline cyan."
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
    examples = pick_examples(evaluation, EXAMPLES)
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
    write_file_atomically(path, text.encode("utf-8"))
    return path


def _summary(evaluation: Evaluation, examples: list[int]) -> dict:
    """The contents of report.json."""
    return {
        "created": evaluation.created,
        "wall_time_s": round(evaluation.wall_time_s, 2),
        "dataset": evaluation.dataset,
        "settings": {
            "target_blurred": evaluation.target_blurred,
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
                "raw_labels": model.raw,
                "stages": model.stages,
                "blurred_sweep": model.sweeps,
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


def _area(row: dict) -> str:
    """The falsely blurred share of the image area, per image and (in brackets) pooled."""
    if row["false_blur_area"] is None:
        return "-"
    return f"{row['false_blur_area']:.3%} ({row['false_blur_area_pooled']:.3%})"


def _tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by report.md and report.html."""
    target = summary["settings"]["target_blurred"]
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
    privacy_header += ["false blurs/image", "falsely blurred area (pooled)", "detections/image"]

    def privacy_rows(point: str) -> list[list[str]]:
        rows = []
        for m in models:
            for name, row in m["privacy"][point].items():
                threshold = m["thresholds"][point].get(name)
                if point == "target" and name in CLASS_NAMES and threshold is None:
                    reason = "no ground truth" if m["blurred_sweep"][name] is None else "not reached"
                    cell = f"{reason}: deployed {m['thresholds']['deployed'][name]:.2f}"
                else:
                    cell = _number(threshold)
                blurred = [
                    "-" if share is None else f"{share:.3f} ({row['boxes'][size]})"
                    for size, share in row["blurred"].items()
                ]
                per_image = [
                    _number(row["false_blurs_per_image"]),
                    _area(row),
                    _number(row["detections_per_image"]),
                ]
                rows.append([m["label"], name, cell, _number(row["recall50"]), *blurred, *per_image])
        return rows

    tables = [
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
            f"Privacy at the highest thresholds whose blurred fraction reaches {target} "
            "(the rule of `calibrate --target`)",
            privacy_header,
            privacy_rows("target"),
        ),
    ]

    def label_rows(m: dict, name: str) -> list[list[str]]:
        return [
            [
                m["label"],
                name,
                labels,
                _number(coco["AP50"]),
                _number(row["recall50"]),
                f"{_number(row['blurred']['all'])} ({row['boxes']['all']})",
                _number(row["false_blurs_per_image"]),
                _area(row),
            ]
            for labels, coco, row in (
                ("corrected", m["coco"][name], m["privacy"]["deployed"][name]),
                ("raw", m["raw_labels"]["coco"][name], m["raw_labels"]["privacy"][name]),
            )
        ]

    stage_header = ["model", "class", "proposal threshold", "verify threshold", "proposals: recall@0.5"]
    stage_header += ["blurred", "false blurs/image", "falsely blurred area", "final blurred"]
    stage_header += ["real proposals left unblurred"]

    def stage_rows(m: dict) -> list[list[str]]:
        stages, rows = m["stages"], []
        for name, row in stages["proposals"].items():
            if name not in CLASS_NAMES or row["recall50"] is None:
                continue
            verify, lost = stages["verify_thresholds"], stages["left_unblurred"][name]
            left = "-" if lost["fraction"] is None else f"{lost['fraction']:.3f} ({lost['left_unblurred']})"
            rows.append(
                [
                    m["label"],
                    name,
                    _number(stages["proposal_thresholds"][name], 2),
                    "off" if verify is None else _number(verify[name]),
                    _number(row["recall50"]),
                    f"{_number(row['blurred']['all'])} ({row['boxes']['all']})",
                    _number(row["false_blurs_per_image"]),
                    _area(row),
                    _number(m["privacy"]["deployed"][name]["blurred"]["all"]),
                    left,
                ]
            )
        return rows

    tables.append(
        (
            "Two stages: proposals, then verification (detect.verify), at the deployed thresholds",
            stage_header,
            [row for m in models for row in stage_rows(m)],
        )
    )
    corrected = [m for m in models if m["raw_labels"] is not None]
    if corrected:
        label_header = ["model", "class", "labels", "AP50", "recall@0.5", "blurred", "false blurs/image"]
        tables.append(
            (
                "Corrected and raw labels, at the deployed thresholds",
                [*label_header, "falsely blurred area"],
                [
                    row
                    for m in corrected
                    for name in CLASS_NAMES
                    if m["raw_labels"]["privacy"][name]["recall50"] is not None
                    for row in label_rows(m, name)
                ],
            )
        )
    return tables


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
    "false blurs/image: detections sharing no area with any ground-truth box (of any class) nor with a "
    "crowd region (COCO's iscrowd, which is not a box to find either), per image.",
    "falsely blurred area: the union of an image's false blurs' boxes as a share of its area, averaged "
    "over images; in brackets pooled (summed unions / summed image areas).",
    "all: the classes that have ground truth here, together. A class without ground truth (the shared "
    "sets label one class each) is not scored: its detections cannot be judged.",
    "corrected / raw labels: with the boxes a label audit added (eval/label_fixes), the figures above, "
    "and as the set was published (`--raw-labels` evaluates on those alone).",
    "PR curves: recall@0.5 and precision (matched detections / detections) at score thresholds "
    f"{SWEEP[0]}, {SWEEP[1]}, ... {SWEEP[-1]} (hundredths up to 0.3) and the deployed ones.",
    "Two stages: proposals are the detector's boxes at the proposal thresholds; with detect.verify on, "
    "those below the deployed (sure) thresholds blur only when their zoom-in re-detection confirms them "
    "(detection/verify.py). proposals: the figures were every proposal blurred; final blurred: the "
    "deployed output; real proposals left unblurred: ground-truth boxes the proposals would blur that "
    "the output does not (the verifier's rejected real objects, with verification on).",
    "Target thresholds: per class, the highest of "
    f"{', '.join(map(str, CALIBRATION_SWEEP[:3]))}, ... {CALIBRATION_SWEEP[-1]} whose blurred fraction "
    "reaches the target, the other classes at their deployed thresholds (as `streetblur calibrate "
    "--target` chooses); the figures are then those with every class at its target threshold.",
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
        f"target blurred fraction {summary['settings']['target_blurred']}",
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
    curves = pr_curves_png(evaluation)
    if curves:
        body += ["<h2>Precision-recall at IoU 0.5</h2>", _img(curves, "precision-recall curves")]
        body.append(
            f"<p>One point per score threshold. Dot: deployed threshold; square: highest threshold "
            f"whose blurred fraction reaches the target {evaluation.target_blurred}.</p>"
        )
    body.append(f"<h2>Examples</h2><p>{html.escape(EXAMPLES_NOTE)}</p>")
    for index in examples:
        name = evaluation.images[index].path.name
        body += [f"<h3>{html.escape(name)}</h3>", _img(example_png(evaluation, index), name)]
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
