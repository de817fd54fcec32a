"""The two-class YOLO dataset (0 face, 1 plate) that `streetblur train` trains on, written from the
shared sets' fixed parts (see `eval.datasets`): `train` trains, `dev` chooses the checkpoint, `val` is
never written. Each set's unlabelled class is filled on its training images with pseudo-labels
(`jobs.training.labels`); with `tiles`, one of the detector's tiles of each training image is an
example too, at the scale the model sees it in use.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from detection.detections import CLASS_NAMES, Detections
from detection.detector import DetectorConfig, model_id, upscale_small
from detection.tiling import plan_views
from eval.datasets import LabelledImage, write_yolo_example, write_yolo_labels
from eval.evaluate import read_pixels
from jobs.training.labels import load_pseudo_labels

SOURCES_FILE = "sources.json"  # beside a written dataset's data.yaml: its image counts and pseudo-labels
# `streetblur review export` writes this `kind` in the provenance.json of its datasets
REVIEW_EXPORT_KIND = "streetblur-review-export"
TILE_MIN_VISIBLE = 0.4  # a box is labelled in a training tile when this fraction of its area is inside


def write_yolo_dataset(
    sets: dict[str, dict[str, list[LabelledImage]]],
    out_dir: Path,
    pseudo_labels: Path | None = None,
    max_side: int | None = None,
    tiles: bool = False,
    review_exports: tuple[Path, ...] = (),
) -> tuple[Path, dict]:
    """Write a two-class YOLO dataset of symlinked images and label files from `sets` (per set name, its
    `train`, `dev` and `val` parts: `eval.datasets.shared_sets`); return data.yaml, counts.

    Only the `train` and `dev` parts are written: training never reads `val`. Pseudo-labels (a file
    from `make_pseudo_labels`) are added to the `train` part only. With `max_side` the images are
    copies instead of symlinks (shrunk where larger, see `write_yolo_example`), so the folder can be
    moved to another machine (a GPU one) and trained on there (`train`); what it holds is recorded
    in `SOURCES_FILE` beside data.yaml. The `train/` part of each of `review_exports` (datasets of
    `streetblur review export`; their held-out part is never written) is added to `train`. With `tiles`,
    each training image also gives one of the default detector's tiles of it as an example of its own
    (`write_tile_example`, a JPEG copy whatever `max_side`): objects at the scale the model sees them in
    use.
    """
    if out_dir.exists():
        shutil.rmtree(out_dir)
    extra = load_pseudo_labels(pseudo_labels) if pseudo_labels else {}
    counts: dict[str, int] = {}
    for name, parts in sets.items():
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
    for export in review_exports:
        counts.update(add_review_export(export, out_dir / "train", copy=max_side is not None))
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


def add_review_export(export: Path, part_dir: Path, copy: bool) -> dict[str, int]:
    """Add the `train/` examples of a review export to a YOLO dataset part (images symlinked, or copied
    with `copy`); `ValueError` for a folder that is not one. Returns its count, under its dataset id."""
    try:
        provenance = json.loads((export / "provenance.json").read_text())
    except (OSError, ValueError):
        provenance = {}
    if provenance.get("kind") != REVIEW_EXPORT_KIND:
        raise ValueError(f"--review-data {export}: not a dataset written by `streetblur review export`")
    name = f"review-{provenance['dataset_id'][:12]}"
    for folder in ("images", "labels"):
        (part_dir / folder).mkdir(parents=True, exist_ok=True)
    labels = sorted((export / "train" / "labels").glob("*.txt"))
    for label in labels:
        image = export / "train" / "images" / f"{label.stem}.jpg"
        target = part_dir / "images" / f"{name}-{label.stem}.jpg"
        if copy:
            shutil.copyfile(image, target)
        else:
            target.symlink_to(image.resolve())
        shutil.copyfile(label, part_dir / "labels" / f"{name}-{label.stem}.txt")
    return {f"{name}/train": len(labels)}


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
