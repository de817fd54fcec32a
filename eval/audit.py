"""Label audit: the detections that overlap no label, on contact sheets for a person to judge.

The shared sets leave real faces and plates unlabelled, and each one the detector finds counts as a
false blur. `streetblur audit --data SET --split dev --out DIR` runs the deployed pipeline with every
threshold lowered to `AUDIT_THRESHOLD` over the images and keeps each detection that overlaps no
label: a false blur by `eval.metrics.false_blurs`, or a label the set is missing. It writes

  DIR/candidates.json  the candidates, most confident first: number, image (relative to the set),
                       class, score, box; and the set, split, model and threshold
  DIR/sheet-NNN.png    contact sheets of `SHEET_COLUMNS` x `SHEET_ROWS` numbered crops: each box in
                       red, with its own size again of context on every side

A person then judges every crop and writes `DIR/verdicts.json`: the numbers of the real faces and
plates, each with a one-line reason, and a summary of what the rest are:

  {"real": [{"number": 4, "reason": "plate, unlabelled"}, {"number": 9, "class": "face", ...}],
   "left_out": "tail lights, road signs"}

`streetblur audit --data SET --out DIR --record DIR/verdicts.json --label-fixes FIXES` records them in
the set's label overlay, `FIXES/SET.json` (read by `eval.datasets.with_label_fixes`; only the shared
sets, recognised by `eval.datasets.shared_set`, have one; the project's own are in
`eval/label_fixes/`, the default of every reader, and never written unless named): the audit's counts,
the real ones as added boxes, and every other candidate as `rejected`. An audit with another model
then skips what earlier audits judged (`JUDGED_IOU`), so each audit shows a person only new crops.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou
from tqdm import tqdm

from blurring.config import Config
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector, model_id, resolve_models
from eval.datasets import LABEL_FIXES_DIR, SHARED_DATASETS, LabelledImage, shared_set
from eval.evaluate import read_pixels
from eval.metrics import false_blurs
from storage.files import write_file_atomically

AUDIT_THRESHOLD = 0.1
JUDGED_IOU = 0.3  # a candidate of the same class overlapping a rejected box this much was judged before
SHEET_COLUMNS, SHEET_ROWS = 6, 5
TILE = 200  # pixels per crop on a sheet, caption included
CAPTION = 22
FONT = cv2.FONT_HERSHEY_SIMPLEX  # OpenCV's own: nothing to download


def find_candidates(
    images: list[LabelledImage],
    config: Config,
    threshold: float = AUDIT_THRESHOLD,
    below: float | None = None,
    progress: bool = True,
    rejected: dict[Path, Detections] | None = None,
) -> list[dict]:
    """The detections at `threshold` that overlap no label, most confident first, numbered from 1.

    `below` keeps only those scoring under it: the band an earlier audit at that threshold, with the
    same model, left unjudged. `rejected` (per image path, see `rejected_boxes`) drops those an
    earlier audit judged not to be a face or plate.
    """
    thresholds = dict.fromkeys(CLASS_NAMES, threshold)
    detector = Detector(dataclasses.replace(config.detect, thresholds=thresholds), require_every_class=False)
    candidates = []
    for image in tqdm(images, desc="audit", unit="image", disable=not progress, file=sys.stderr):
        found = detector.detect(read_pixels(image, config.max_pixels))
        unlabelled = found[false_blurs(found, image)]
        if below is not None:
            unlabelled = unlabelled[unlabelled.scores < below]
        if rejected and image.path in rejected:
            unlabelled = unlabelled[~judged_before(unlabelled, rejected[image.path])]
        candidates += [{"image": image, **record} for record in unlabelled.to_records()]
    candidates.sort(key=lambda c: -c["score"])
    return [{"number": n, **c} for n, c in enumerate(candidates, 1)]


def judged_before(found: Detections, rejected: Detections) -> np.ndarray:
    """Per detection: True when a rejected box of its class overlaps it by IoU >= `JUDGED_IOU`."""
    if not len(found) or not len(rejected):
        return np.zeros(len(found), bool)
    iou = box_iou(torch.from_numpy(found.xyxy).double(), torch.from_numpy(rejected.xyxy).double()).numpy()
    same_class = found.class_id[:, None] == rejected.class_id[None, :]
    return ((iou >= JUDGED_IOU) & same_class).any(axis=1)


def overlay_path(root: Path, fixes_dir: Path = LABEL_FIXES_DIR) -> Path | None:
    """Where the label overlay of the shared set at `root` lives in `fixes_dir`; None for a folder that
    holds none of the shared sets."""
    name = shared_set(root)
    return None if name is None else fixes_dir / f"{name}.json"


def read_overlay(root: Path, fixes_dir: Path = LABEL_FIXES_DIR) -> dict:
    """The label overlay of the set at `root`, with empty lists for the parts it lacks."""
    path = overlay_path(root, fixes_dir)
    overlay = json.loads(path.read_text()) if path is not None and path.exists() else {}
    return overlay | {key: overlay.get(key, []) for key in ("audits", "added", "rejected")}


def rejected_boxes(root: Path, fixes_dir: Path = LABEL_FIXES_DIR) -> dict[Path, Detections]:
    """Per image path: the candidates earlier audits of the set at `root` judged not to be a face or
    plate."""
    by_image: dict[Path, list[dict]] = {}
    for entry in read_overlay(root, fixes_dir)["rejected"]:
        by_image.setdefault(root / entry["image"], []).append(entry)
    return {path: Detections.from_records(records) for path, records in by_image.items()}


def record_verdicts(root: Path, listing: dict, verdicts: dict, fixes_dir: Path) -> dict:
    """Add an audit's verdicts to the overlay of the set at `root` in `fixes_dir` (always named: the
    shipped overlays are written only when asked for); the audit's entry in it.

    `listing` is the audit's `candidates.json`; `verdicts` names the real ones (`{"real": [{"number",
    "reason", optional "class"}], "left_out": "..."}`). Real ones become added boxes with their reason,
    the rest `rejected` boxes that point at the audit's entry. `ValueError` for a folder that holds
    none of the shared sets, a listing of another set, a verdict naming no candidate, one twice, or a
    class other than `CLASS_NAMES`, and for an audit whose candidates the overlay already holds
    (recorded before).
    """
    path = overlay_path(root, fixes_dir)
    if path is None:
        raise ValueError(
            f"{root} is not one of the shared sets ({', '.join(SHARED_DATASETS)}), recognised by their "
            "files: only they have a label overlay; add the real boxes to the folder's own labels"
        )
    if listing["dataset"].get("set") != path.stem:
        raise ValueError(f"the audit ran on {listing['dataset']['root']}, not {root}")
    candidates = {c["number"]: c for c in listing["candidates"]}
    numbers = [verdict["number"] for verdict in verdicts["real"]]
    unknown = sorted(set(numbers) - set(candidates))
    if unknown or len(set(numbers)) != len(numbers):
        named = unknown or numbers
        raise ValueError(f"verdicts name candidates the audit does not list, or one twice: {named}")
    if bad := [v["class"] for v in verdicts["real"] if "class" in v and v["class"] not in CLASS_NAMES]:
        raise ValueError(f"verdicts give classes other than {CLASS_NAMES}: {bad}")
    overlay = read_overlay(root, fixes_dir)
    judged = {(e["image"], e["class"], tuple(e["box"])) for e in overlay["added"] + overlay["rejected"]}
    if any((c["image"], c["class"], tuple(c["box"])) in judged for c in candidates.values()):
        raise ValueError("the overlay already holds this audit's candidates: its verdicts were recorded")
    split = listing["dataset"]["split"]
    entry = {
        "split": split,
        "model_id": listing["model_id"],
        "threshold": listing["threshold"],
        **({"below": listing["below"]} if listing.get("below") is not None else {}),
        "candidates": len(candidates),
        "added": len(numbers),
        "left_out": verdicts["left_out"],
    }
    audit = len(overlay["audits"])
    for verdict in verdicts["real"]:
        c = candidates[verdict["number"]]
        where = f"{split} audit #{audit}, candidate {c['number']}, score {c['score']:.2f}"
        overlay["added"].append(
            {
                "image": c["image"],
                "class": verdict.get("class", c["class"]),
                "box": c["box"],
                "reason": f"{verdict['reason']} ({where})",
            }
        )
    real = set(numbers)
    overlay["rejected"] += [
        {"image": c["image"], "class": c["class"], "box": c["box"], "audit": audit}
        for n, c in candidates.items()
        if n not in real
    ]
    overlay["audits"].append(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(path, overlay_text(overlay).encode())
    return entry


def overlay_text(overlay: dict) -> str:
    """The overlay as JSON with one line per audit, added box and rejected box, for readable diffs."""
    fields = []
    for key, value in overlay.items():
        if isinstance(value, list):
            rows = ",\n".join(f"  {json.dumps(item)}" for item in value)
            fields.append(f' "{key}": [\n{rows}\n ]' if value else f' "{key}": []')
        else:
            fields.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(fields) + "\n}\n"


def write_audit(candidates: list[dict], root: Path, out: Path, about: dict) -> list[Path]:
    """`candidates.json` and the contact sheets under `out`; the files written."""
    out.mkdir(parents=True, exist_ok=True)
    records = [c | {"image": c["image"].path.relative_to(root).as_posix()} for c in candidates]
    listing = out / "candidates.json"
    write_file_atomically(listing, (json.dumps({**about, "candidates": records}, indent=1) + "\n").encode())
    per_sheet = SHEET_COLUMNS * SHEET_ROWS
    sheets = []
    for start in range(0, len(candidates), per_sheet):
        sheet = contact_sheet(candidates[start : start + per_sheet])
        path = out / f"sheet-{start // per_sheet + 1:03d}.png"  # lossless: the pixels as the model saw them
        write_file_atomically(path, cv2.imencode(".png", sheet)[1].tobytes())
        sheets.append(path)
    return [listing, *sheets]


def contact_sheet(candidates: list[dict]) -> np.ndarray:
    """One sheet: each candidate's crop with context, its box in red, captioned "number class score"."""
    sheet = np.full((SHEET_ROWS * TILE, SHEET_COLUMNS * TILE, 3), 255, np.uint8)
    pixels: dict[Path, np.ndarray] = {}
    for slot, candidate in enumerate(candidates):
        image = candidate["image"]
        if image.path not in pixels:
            pixels[image.path] = read_pixels(image, image.width * image.height)
        tile = crop_with_context(pixels[image.path], candidate["box"], TILE, TILE - CAPTION)
        top, left = (slot // SHEET_COLUMNS) * TILE, (slot % SHEET_COLUMNS) * TILE
        sheet[top + CAPTION : top + TILE, left : left + TILE] = tile
        caption = f"{candidate['number']} {candidate['class']} {candidate['score']:.2f}"
        cv2.putText(sheet, caption, (left + 4, top + 16), FONT, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return sheet


def crop_with_context(pixels: np.ndarray, box: list[float], width: int, height: int) -> np.ndarray:
    """The box with its own size of context on every side (at least 24 px), scaled to fit
    `width` x `height` on white, the box drawn in red."""
    x1, y1, x2, y2 = box
    pad_x, pad_y = max(x2 - x1, 24), max(y2 - y1, 24)
    left, top = int(max(0, x1 - pad_x)), int(max(0, y1 - pad_y))
    right, bottom = int(min(pixels.shape[1], x2 + pad_x)), int(min(pixels.shape[0], y2 + pad_y))
    crop = pixels[top:bottom, left:right]
    scale = min(width / crop.shape[1], height / crop.shape[0])
    size = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    corner = (round((x1 - left) * scale), round((y1 - top) * scale))
    far = (round((x2 - left) * scale), round((y2 - top) * scale))
    cv2.rectangle(crop, corner, far, (0, 0, 255), 2)
    tile = np.full((height, width, 3), 255, np.uint8)
    tile[: crop.shape[0], : crop.shape[1]] = crop
    return tile


def describe(config: Config, threshold: float, dataset: dict, below: float | None = None) -> dict:
    """What an audit ran on, for `candidates.json`."""
    return {
        "dataset": dataset,
        "model_id": model_id(resolve_models(config.detect, config.detect.device).weights),
        "threshold": threshold,
        "below": below,
    }
