"""INT8 (`streetblur quantize`): the trained `.pt` quantised to an INT8 OpenVINO model beside it, which
the detector runs by default on CPU (`detection.runtime.int8_weights`). NNCF calibrates it, through
ultralytics' export, on the training images of the shared sets (never dev or val).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from detection.runtime import INT8_SOURCE_FILE, int8_weights, prepare_ultralytics, weights_digest
from eval.datasets import LabelledImage
from jobs.training.dataset import write_yolo_dataset


def quantize(
    weights: Path,
    sets: dict[str, dict[str, list[LabelledImage]]],
    images: int | None = None,
    imgsz: int = 640,
    workdir: Path = Path("runs/quantize"),
) -> dict:
    """Quantise `weights` (a `.pt`) to INT8 OpenVINO, calibrated on the training images of `sets` (per
    set name, its parts: `eval.datasets.shared_sets`; all, or about `images` of them), and publish the
    model beside `weights` (`int8_weights`), replacing an older one in one rename. Returns the record
    written into it (`INT8_SOURCE_FILE`)."""
    prepare_ultralytics()
    import importlib.metadata

    import ultralytics
    from ultralytics import YOLO

    data_yaml, counts = write_yolo_dataset(sets, workdir / "data")
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
