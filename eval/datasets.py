"""Labelled image sets in COCO json, YOLO txt or Pascal VOC xml, read into one type.

Ground-truth boxes are a `Detections` (score 1.0), the same type the detector returns. Dataset
class names become `face`/`plate` through a class map; classes that map to neither are dropped.
COCO annotations marked `iscrowd` are regions of many objects, kept apart as `LabelledImage.crowd`:
as in COCO's evaluation, they are neither objects to find nor places where a detection is false.

The shared sets (`SHARED_DATASETS`) are recognised by what they hold, their `fingerprint`, wherever
they are and whatever their folder is called; any other folder is a plain labelled folder: format
detected, class names through the built-in aliases or a class map, no split rule, no label overlay.

`write_yolo_example` writes the YOLO format that `load_dataset` reads (for training).

Held-out splits are fixed by rule, never by chance at run time, so training and evaluation agree.
Each set has three parts: `val` (15%, for reported figures only), `dev` (another 15%, held out from
training for choosing checkpoints, thresholds and inference settings) and `train` (the rest):
- `random`: stable fractions of images, chosen by a hash of the file name;
- `time`: the last 15% of each video's time range is `val`, the 15% before it `dev`, for frames
  named `VIDEO#t=SECONDS.jpg` (consecutive frames are near duplicates, so a random split would leak);
- `group`: stable fractions of *source* images, for Roboflow exports where one photo appears up to
  three times as `NAME_jpg.rf.HASH.jpg`; a NAME shared by more files than that is a generic upload
  name (`i.jpg`), not one photo, and its files are split one by one;
- `folder`: for exports that come split (`train/` and `valid/`): `train/` trains, and the other
  folder's images are halved into `dev` and `val` by a hash of the file name.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml
from PIL import Image

from detection.detections import CLASS_NAMES, Detections, canonical_class

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
LABEL_SUFFIXES = (".json", ".xml", ".txt", ".yaml", ".yml")
# The shipped label overlays of the shared sets (SET.json): the default; a user's are passed by path
LABEL_FIXES_DIR = Path(__file__).with_name("label_fixes")
VAL_FRACTION = 0.15


@dataclass(frozen=True)
class LabelledImage:
    """One image of a labelled set and its ground-truth boxes."""

    path: Path
    width: int
    height: int
    boxes: Detections
    image_id: int
    crowd: Detections = field(default_factory=Detections)  # COCO `iscrowd` regions: ignored, not objects


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one of the shared sets: format, class map, held-out split rule, and the
    `fingerprint` of its files by which it is recognised."""

    format: str
    class_map: dict[str, str]
    split: str
    fingerprint: str


SHARED_DATASETS: dict[str, DatasetSpec] = {
    "faces-crowd": DatasetSpec(
        "coco",
        {"with_mask": "face", "without_mask": "face", "mask_weared_incorrect": "face"},
        "random",
        "a43cad9f242c118bd7d0e6f85e7146a573e6aeb3d4c057f3fb75ea3f532ca583",
    ),
    "plates-dashcam": DatasetSpec(
        "voc",
        {"license-plate": "plate"},
        "time",
        "bb4ec923eaa5e90260648d165efbb7628acb83d0ed50481906ea16ec73302319",
    ),
    "plates-roboflow": DatasetSpec(
        "yolo",
        {"license_plate": "plate"},
        "group",
        "b8702869d4bd5b17fa233375d7cc55f64637bcdef5330faa6be4d7464d88eebf",
    ),
    # Frames of the same videos are in train/ and valid/: its dev and val figures are in-distribution.
    "street-faces-plates": DatasetSpec(
        "yolo",
        {"face": "face", "plate": "plate"},
        "folder",
        "82380f00e6f12815fc1c58d49d663eb43b1ed67642b3a8f793ae6cf9d7a5d902",
    ),
}
"""The sets of `../shared/datasets` (see its README), by name; recognised by `shared_set`."""


def fingerprint(root: str | Path) -> str:
    """A digest of the labelled set in `root`: the path and size of each image file and the path and
    contents of each label file (json, xml, txt, yaml) under it. Reads the label files only."""
    root = Path(root)
    entries = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder, name)
            if path.suffix.lower() in LABEL_SUFFIXES:
                content = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.suffix.lower() in IMAGE_SUFFIXES:
                content = str(path.stat().st_size)
            else:
                continue
            entries.append(f"{path.relative_to(root).as_posix()}\0{content}\n")
    return hashlib.sha256("".join(sorted(entries)).encode("utf-8", "surrogateescape")).hexdigest()


def shared_set(root: str | Path) -> str | None:
    """The name of the shared set that `root` holds, by its `fingerprint` (not by the folder's name), or
    None: a folder with an image or label file more or less, or any label changed, is not that set."""
    digest = fingerprint(root)
    return next((name for name, spec in SHARED_DATASETS.items() if spec.fingerprint == digest), None)


def parse_class_map(text: str) -> dict[str, str]:
    """`with_mask,without_mask=face;license-plate=plate` -> {"with_mask": "face", ...}."""
    mapping: dict[str, str] = {}
    for clause in filter(None, (c.strip() for c in text.split(";"))):
        names, _, target = clause.rpartition("=")
        if not names or target not in CLASS_NAMES:
            raise ValueError(f"bad class map clause {clause!r}: expected NAME[,NAME...]=face|plate")
        mapping.update({n.strip(): target for n in names.split(",") if n.strip()})
    return mapping


def detect_format(root: Path) -> str:
    """`coco`, `yolo` or `voc`, from the files in `root`."""
    if (root / "annotations.json").exists() or list(root.glob("*.json")):
        return "coco"
    if (root / "data.yaml").exists() or (root / "labels").is_dir():
        return "yolo"
    if (root / "annotations").is_dir() or list(root.glob("*.xml")):
        return "voc"
    raise ValueError(f"{root}: cannot tell the label format (no COCO json, YOLO labels/ or VOC xml)")


def dataset_settings(
    root: str | Path, format: str | None = None, class_map: dict[str, str] | None = None
) -> tuple[str, dict[str, str] | None]:
    """`(format, class_map)` for `root`: those given, else the shared set's if `root` holds one, else
    detected / None (None: class names go through the default aliases)."""
    spec = SHARED_DATASETS.get(shared_set(root) or "")
    format = format or (spec.format if spec else detect_format(Path(root)))
    return format, class_map if class_map is not None else (spec.class_map if spec else None)


def load_dataset(
    root: str | Path,
    format: str | None = None,
    class_map: dict[str, str] | None = None,
    raw_labels: bool = False,
    fixes_dir: Path = LABEL_FIXES_DIR,
) -> list[LabelledImage]:
    """Every labelled image under `root`, sorted by file name, with the boxes of its label overlay in
    `fixes_dir` (`with_label_fixes`) unless `raw_labels`.

    `format` and `class_map` default to the shared set's spec when `root` holds one of them, else
    the format is detected and class names go through the default aliases. Boxes and crowd regions
    are clipped to the image, as the detector clips its own boxes (faces-crowd draws some a pixel
    past the border); a box left without area inside the image is dropped.
    """
    root = Path(root)
    format, class_map = dataset_settings(root, format, class_map)
    loader = {"coco": _load_coco, "yolo": _load_yolo, "voc": _load_voc}[format]
    images = loader(root, lambda name: canonical_class(name, class_map))
    if not raw_labels:
        images = with_label_fixes(images, root, fixes_dir)
    images = [
        replace(im, boxes=im.boxes.clipped(im.width, im.height), crowd=im.crowd.clipped(im.width, im.height))
        for im in images
    ]
    return sorted(images, key=lambda im: im.path.name)


def with_label_fixes(
    images: list[LabelledImage], root: Path, fixes_dir: Path = LABEL_FIXES_DIR
) -> list[LabelledImage]:
    """`images` of the set at `root` with the boxes its overlay `fixes_dir/NAME.json` adds, if any:
    NAME is the shared set `root` holds (`shared_set`); other folders have no overlay.

    The overlay, written after a label audit (`eval.audit`): `{"added": [{"image": PATH relative to
    root, "class": "face" or "plate", "box": [x1, y1, x2, y2], "reason": "..."}]}`, beside the audits'
    counts and the candidates judged not to be a face or plate (`rejected`, which only later audits
    read). Original labels are never removed. `ValueError` for an entry whose image is not in the set
    (a stale overlay).
    """
    name = shared_set(root)
    path = fixes_dir / f"{name}.json"
    if name is None or not path.exists():
        return images
    added: dict[str, list] = defaultdict(list)
    for entry in json.loads(path.read_text())["added"]:
        added[entry["image"]].append((canonical_class(entry["class"]), entry["box"]))
    keys = {im.path.relative_to(root).as_posix() for im in images}
    stale = sorted(set(added) - keys)
    if stale:
        raise ValueError(f"{path}: {len(stale)} added boxes name images not in {root}, e.g. {stale[0]}")
    return [
        replace(im, boxes=Detections.concat([im.boxes, _boxes(added[key])])) if key in added else im
        for im, key in ((im, im.path.relative_to(root).as_posix()) for im in images)
    ]


def _boxes(rows: list[tuple[str | None, list[float]]]) -> Detections:
    rows = [(c, b) for c, b in rows if c is not None]
    return Detections([b for _, b in rows], [1.0] * len(rows), [CLASS_NAMES.index(c) for c, _ in rows])


def _load_coco(root: Path, to_class) -> list[LabelledImage]:
    """`annotations.json` in `root`, else its first `*.json`; `iscrowd` annotations as crowd regions."""
    json_path = root / "annotations.json"
    if not json_path.exists():
        found = sorted(root.glob("*.json"))
        if not found:
            raise FileNotFoundError(
                f"{root}: no COCO json (annotations.json or another *.json) in the folder"
            )
        json_path = found[0]
    coco = json.loads(json_path.read_text())
    category = {c["id"]: to_class(c["name"]) for c in coco["categories"]}
    rows, crowds = defaultdict(list), defaultdict(list)
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        (crowds if a.get("iscrowd") else rows)[a["image_id"]].append(
            (category[a["category_id"]], [x, y, x + w, y + h])
        )
    image_dir = root / "images" if (root / "images").is_dir() else root
    return [
        LabelledImage(
            image_dir / im["file_name"],
            im["width"],
            im["height"],
            _boxes(rows[im["id"]]),
            im["id"],
            _boxes(crowds[im["id"]]),
        )
        for im in coco["images"]
    ]


def _load_voc(root: Path, to_class) -> list[LabelledImage]:
    xml_dir = root / "annotations" if (root / "annotations").is_dir() else root
    image_dir = root / "images" if (root / "images").is_dir() else root
    images = []
    for image_id, xml_path in enumerate(sorted(xml_dir.glob("*.xml"))):
        tree = ET.parse(xml_path).getroot()
        rows = []
        for obj in tree.iter("object"):
            bb = obj.find("bndbox")
            box = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            rows.append((to_class(obj.findtext("name")), box))
        size = tree.find("size")
        images.append(
            LabelledImage(
                image_dir / tree.findtext("filename"),
                int(float(size.findtext("width"))),
                int(float(size.findtext("height"))),
                _boxes(rows),
                image_id,
            )
        )
    return images


def _load_yolo(root: Path, to_class) -> list[LabelledImage]:
    """`images/` and `labels/` under `root`, or else the image folders `data.yaml` names (`train`,
    `val`, `test`), each with its `labels/` beside it."""
    spec = yaml.safe_load((root / "data.yaml").read_text()) if (root / "data.yaml").exists() else {}
    declared = spec.get("names", {})
    names = dict(enumerate(declared)) if isinstance(declared, list) else declared
    folders = [root / "images"]
    if not folders[0].is_dir():
        folders = list(dict.fromkeys(root / spec[k] for k in ("train", "val", "test") if spec.get(k)))
    images = []
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            with Image.open(path) as im:  # reads the header only; trusts content, not the extension
                width, height = im.size
            label_path = folder.parent / "labels" / path.relative_to(folder).with_suffix(".txt")
            rows = []
            lines = label_path.read_text().splitlines() if label_path.exists() else []
            for line in filter(None, (ln.split() for ln in lines)):
                cls, cx, cy, w, h = int(line[0]), *map(float, line[1:5])
                box = [
                    (cx - w / 2) * width,
                    (cy - h / 2) * height,
                    (cx + w / 2) * width,
                    (cy + h / 2) * height,
                ]
                rows.append((to_class(names.get(cls, str(cls))), box))
            images.append(LabelledImage(path, width, height, _boxes(rows), len(images)))
    return images


def write_yolo_example(image: LabelledImage, part_dir: Path, stem: str, max_side: int | None = None) -> None:
    """Write `image` into a YOLO dataset part as `_load_yolo` reads one: its boxes in
    `labels/STEM.txt` (see `write_yolo_labels`), and under `images/` a
    symlink to the photo or, with `max_side`, a copy (a dataset that travels): the file itself if its
    longer side has at most that many pixels, else a JPEG (quality 90) shrunk to that."""
    (part_dir / "images").mkdir(parents=True, exist_ok=True)
    (part_dir / "labels").mkdir(parents=True, exist_ok=True)
    suffix = image.path.suffix.lower()
    if max_side is None:
        (part_dir / "images" / f"{stem}{suffix}").symlink_to(image.path.resolve())
    elif max(image.width, image.height) <= max_side:
        shutil.copyfile(image.path, part_dir / "images" / f"{stem}{suffix}")  # small enough: no re-encoding
    else:
        with Image.open(image.path) as photo:
            photo = photo.convert("RGB")
            photo.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # keeps the aspect ratio
            photo.save(part_dir / "images" / f"{stem}.jpg", quality=90)
    write_yolo_labels(image.boxes, image.width, image.height, part_dir / "labels" / f"{stem}.txt")


def write_yolo_labels(boxes: Detections, width: int, height: int, path: Path) -> None:
    """Write `boxes` of a `width` x `height` image as a YOLO label file: one line per box, its class
    id (of `CLASS_NAMES`) and its centre and size relative to the image."""
    lines = []
    for (x1, y1, x2, y2), cls in zip(boxes.xyxy, boxes.class_id, strict=True):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    path.write_text("\n".join(lines) + ("\n" if lines else ""))


def _stable_fraction(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


_VIDEO_FRAME = re.compile(r"^(?P<video>.+)#t=(?P<t>[\d.]+)\.\w+$")


def video_frame_time(name: str) -> tuple[str, float] | None:
    """`(VIDEO, SECONDS)` of a frame file named `VIDEO#t=SECONDS.jpg` (a frame of a video), else None."""
    match = _VIDEO_FRAME.match(name)
    return (match["video"], float(match["t"])) if match else None


_ROBOFLOW_MAX_COPIES = 3
_ROBOFLOW_SOURCE = re.compile(r"^(?P<source>.+?)_(jpe?g|png|webp)(_jpe?g|_png)*\.rf\.[0-9a-f]+\.\w+$", re.I)


def split_dataset(images: list[LabelledImage], rule: str) -> dict[str, list[LabelledImage]]:
    """`{"train": [...], "dev": [...], "val": [...]}` by the held-out rule `random`, `time`, `group` or
    `folder`."""
    if rule == "time":
        times = defaultdict(list)
        for im in images:
            match = _VIDEO_FRAME.match(im.path.name)
            if match is None:
                raise ValueError(f"{im.path.name}: not named VIDEO#t=SECONDS for a time split")
            times[match["video"]].append(float(match["t"]))
        cuts = {}  # video -> (first dev time, first val time)
        for video, stamps in times.items():
            stamps.sort()
            val_start = int(len(stamps) * (1 - VAL_FRACTION))
            cuts[video] = (stamps[val_start - round(len(stamps) * VAL_FRACTION)], stamps[val_start])

        def part_of(im: LabelledImage) -> str:
            match = _VIDEO_FRAME.match(im.path.name)
            dev_start, val_start = cuts[match["video"]]
            t = float(match["t"])
            return "val" if t >= val_start else "dev" if t >= dev_start else "train"
    elif rule in ("random", "group"):
        key = {im.path.name: im.path.name for im in images}
        if rule == "group":
            sources = {n: m["source"] for n in key if (m := _ROBOFLOW_SOURCE.match(n))}
            copies = Counter(sources.values())
            key.update({n: s for n, s in sources.items() if copies[s] <= _ROBOFLOW_MAX_COPIES})

        def part_of(im: LabelledImage) -> str:
            f = _stable_fraction(key[im.path.name])
            return "val" if f < VAL_FRACTION else "dev" if f < 2 * VAL_FRACTION else "train"
    elif rule == "folder":

        def part_of(im: LabelledImage) -> str:
            if im.path.parent.parent.name == "train":  # train/images/NAME
                return "train"
            return "val" if _stable_fraction(im.path.name) < 0.5 else "dev"
    else:
        raise ValueError(f"unknown split rule {rule!r}: use random, time, group or folder")
    split: dict[str, list[LabelledImage]] = {"train": [], "dev": [], "val": []}
    for im in images:
        split[part_of(im)].append(im)
    return split


def load_split(root: str | Path, part: str) -> list[LabelledImage]:
    """The `train`, `dev` or `val` part of the shared set `root` holds, by its spec's split rule."""
    name = shared_set(root)
    if name is None:
        raise ValueError(_no_split_rule(Path(root)))
    return split_dataset(load_dataset(root), SHARED_DATASETS[name].split)[part]


def shared_set_parts(datasets_root: str | Path, name: str) -> dict[str, list[LabelledImage]]:
    """The `train`, `dev` and `val` parts of the shared set `name`, in `datasets_root/name`;
    `ValueError` if that folder does not hold it (training must not take another folder for it)."""
    root = Path(datasets_root) / name
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder (the shared set {name} is expected there)")
    if shared_set(root) != name:
        raise ValueError(
            f"{root} does not hold the shared set {name}: its files differ from the recorded ones, so its "
            "split rule and label overlay do not apply"
        )
    return split_dataset(load_dataset(root), SHARED_DATASETS[name].split)


def shared_sets(datasets_root: str | Path) -> dict[str, dict[str, list[LabelledImage]]]:
    """Every shared set's parts (`shared_set_parts`), by name, from the folder that holds them all."""
    return {name: shared_set_parts(datasets_root, name) for name in SHARED_DATASETS}


def _no_split_rule(root: Path) -> str:
    return (
        f"{root} has no split rule: it does not hold one of the shared sets ({', '.join(SHARED_DATASETS)}),"
        " which are recognised by their files, not by the folder's name"
    )


def select_images(
    data: Path,
    format: str | None,
    class_map: str | None,
    split: str | None,
    limit: int | None,
    raw_labels: bool = False,
    fixes_dir: Path = LABEL_FIXES_DIR,
) -> tuple[list[LabelledImage], dict[str, object]]:
    """The labelled images of `data` that the options select (`split`: all, or a part of a shared set;
    None: `dev` of a shared set, else all; the first `limit` by file name; `raw_labels`: without the
    label overlay in `fixes_dir`), and their description for a report (`set`: the shared set `data`
    holds, or None)."""
    if not data.is_dir():
        raise FileNotFoundError(f"{data}: no such folder")
    name = shared_set(data)
    label_format, class_map_used = dataset_settings(
        data, format, parse_class_map(class_map) if class_map else None
    )
    images = load_dataset(data, label_format, class_map_used, raw_labels, fixes_dir)
    split = split or ("all" if name is None else "dev")
    if split != "all":
        if name is None:
            raise ValueError(f"--split {split}: {_no_split_rule(data)}")
        images = split_dataset(images, SHARED_DATASETS[name].split)[split]
    if limit is not None:
        if limit < 1:
            raise ValueError(f"--limit must be at least 1, got {limit}")
        images = images[:limit]
    corrected = not raw_labels and name is not None and (fixes_dir / f"{name}.json").exists()
    overlays = "eval/label_fixes" if fixes_dir == LABEL_FIXES_DIR else str(fixes_dir)  # shipped, or given
    dataset = {"root": str(data), "set": name, "format": label_format, "split": split}
    dataset |= {"class_map": class_map_used, "labels": f"corrected ({overlays})" if corrected else "raw"}
    return images, dataset
