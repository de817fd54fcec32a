"""Dataset loaders on the shared sets and on small hand-made sets with the quirks found in the wild."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from faster_coco_eval import COCO, COCOeval_faster
from PIL import Image

from blurring import BlurConfig
from detection.detections import Detections
from eval.datasets import (
    SHARED_DATASETS,
    load_dataset,
    load_split,
    parse_class_map,
    select_images,
    shared_set,
    with_label_fixes,
    write_yolo_example,
)
from eval.metrics import coco_metrics, privacy_metrics
from tests.conftest import DATASETS, requires_datasets

# Images and boxes per set, from its README (street-faces-plates: 2572 + 1531 + 665 + 267 boxes)
SHARED_COUNTS = {
    "faces-crowd": (703, 3153),
    "plates-dashcam": (468, 569),
    "plates-roboflow": (138, 208),
    "street-faces-plates": (1229, 5035),
}


@requires_datasets
@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_shared_sets_load_whole_and_inside_their_images(name):
    images = load_dataset(DATASETS / name, raw_labels=True)  # as published
    n_images, n_boxes = SHARED_COUNTS[name]
    assert len(images) == n_images
    assert sum(len(im.boxes) for im in images) == n_boxes
    assert len({im.image_id for im in images}) == n_images
    labelled = set(SHARED_DATASETS[name].class_map.values())
    for im in images:
        assert im.path.is_file(), im.path
        xyxy = im.boxes.xyxy
        assert (xyxy[:, :2] >= 0).all() and (xyxy[:, 2] <= im.width).all() and (xyxy[:, 3] <= im.height).all()
        assert (xyxy[:, 2:] > xyxy[:, :2]).all(), im.path
        assert set(im.boxes.class_names) <= labelled
    with Image.open(images[0].path) as first:
        assert first.size == (images[0].width, images[0].height)


@requires_datasets
@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_held_out_splits_are_disjoint_parts(name):
    parts = {part: {im.path for im in load_split(DATASETS / name, part)} for part in ("train", "dev", "val")}
    assert sum(map(len, parts.values())) == SHARED_COUNTS[name][0]
    for held_out in ("dev", "val"):
        assert 0.05 < len(parts[held_out]) / SHARED_COUNTS[name][0] < 0.3
    assert (
        not parts["train"] & parts["dev"]
        and not parts["train"] & parts["val"]
        and not parts["dev"] & parts["val"]
    )


@requires_datasets
def test_time_split_holds_out_the_end_of_each_drive_for_val_and_the_stretch_before_for_dev():
    def times(part):
        by_video = {}
        for im in load_split(DATASETS / "plates-dashcam", part):
            video, _, t = im.path.stem.partition("#t=")
            by_video.setdefault(video, []).append(float(t))
        return by_video

    train, dev, val = times("train"), times("dev"), times("val")
    assert len(val) == 2  # two drives
    for video in val:
        assert max(train[video]) < min(dev[video]) <= max(dev[video]) < min(val[video])


def save_image(path, width: int, height: int, format: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), (90, 120, 150)).save(path, format=format)


def test_yolo_quirks_hash_names_empty_labels_and_lying_extensions(tmp_path):
    (tmp_path / "data.yaml").write_text("names: [license_plate, car]\n")
    save_image(tmp_path / "images" / "clip#t=1.5.jpg", 200, 100, "PNG")  # a PNG named .jpg
    save_image(tmp_path / "images" / "empty.png", 64, 32, "JPEG")  # a JPEG named .png
    save_image(tmp_path / "images" / "unlabelled.jpg", 30, 20, "JPEG")  # no label file at all
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "clip#t=1.5.txt").write_text("0 0.5 0.5 0.25 0.5\n\n1 0.1 0.1 0.1 0.1\n0 0.95 0.5 0.2 0.2\n")
    (labels / "empty.txt").write_text("")
    images = {im.path.name: im for im in load_dataset(tmp_path)}
    assert sorted(images) == ["clip#t=1.5.jpg", "empty.png", "unlabelled.jpg"]
    clip = images["clip#t=1.5.jpg"]
    assert (clip.width, clip.height) == (200, 100)  # from the content, not the extension
    assert clip.boxes.class_names == ["plate", "plate"]  # `car` maps to nothing and is dropped
    # Float centres and sizes become pixels; the box past the right edge is clipped to it.
    np.testing.assert_allclose(clip.boxes.xyxy, [[75, 25, 125, 75], [170, 40, 200, 60]], atol=1e-4)
    assert (images["empty.png"].width, images["empty.png"].height) == (64, 32)
    assert len(images["empty.png"].boxes) == len(images["unlabelled.jpg"].boxes) == 0


def test_voc_quirks_hash_names_and_float_boxes(tmp_path):
    save_image(tmp_path / "images" / "drive.mp4#t=12.5.jpg", 1280, 720, "JPEG")
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "drive.mp4#t=12.5.xml").write_text(
        "<annotation><filename>drive.mp4#t=12.5.jpg</filename>"
        "<size><width>1280</width><height>720</height><depth>3</depth></size>"
        "<object><name>license-plate</name><bndbox><xmin>556.65</xmin><ymin>373.27</ymin>"
        "<xmax>622.05</xmax><ymax>389.5</ymax></bndbox></object>"
        "<object><name>car</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox>"
        "</object></annotation>"
    )
    [image] = load_dataset(tmp_path, class_map={"license-plate": "plate"})
    assert image.path.is_file() and image.path.name == "drive.mp4#t=12.5.jpg"
    assert (image.width, image.height) == (1280, 720)
    np.testing.assert_allclose(image.boxes.xyxy, [[556.65, 373.27, 622.05, 389.5]], atol=1e-3)
    assert image.boxes.class_names == ["plate"]


def test_coco_quirks_float_boxes_unknown_classes_and_boxes_past_the_border(tmp_path):
    save_image(tmp_path / "images" / "a#1.jpg", 400, 300, "JPEG")
    save_image(tmp_path / "images" / "b.jpg", 400, 300, "JPEG")
    coco = {
        "images": [
            {"id": 7, "file_name": "a#1.jpg", "width": 400, "height": 300},
            {"id": 9, "file_name": "b.jpg", "width": 400, "height": 300},
        ],
        "categories": [{"id": 1, "name": "without_mask"}, {"id": 2, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10.5, 20.25, 30.5, 40.0]},
            {"id": 2, "image_id": 7, "category_id": 1, "bbox": [380, 10, 21, 20]},  # one pixel past the edge
            {"id": 3, "image_id": 7, "category_id": 2, "bbox": [0, 0, 100, 200]},
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    a, b = load_dataset(tmp_path)
    assert (a.image_id, b.image_id) == (7, 9)  # the dataset's own ids
    assert a.path.is_file()
    np.testing.assert_allclose(a.boxes.xyxy, [[10.5, 20.25, 41, 60.25], [380, 10, 400, 30]])
    assert a.boxes.class_names == ["face", "face"]
    assert len(b.boxes) == 0


def test_class_map_text_and_its_use(tmp_path):
    assert parse_class_map("a,b=face; c=plate;") == {"a": "face", "b": "face", "c": "plate"}
    for bad in ("a=car", "face", "=plate"):
        with pytest.raises(ValueError, match="bad class map clause"):
            parse_class_map(bad)
    save_image(tmp_path / "images" / "x.jpg", 100, 100, "JPEG")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.5 0.5 0.4 0.4\n")
    (tmp_path / "data.yaml").write_text("names: {0: kennzeichen, 1: gesicht}\n")
    [image] = load_dataset(tmp_path, class_map=parse_class_map("kennzeichen=plate;gesicht=face"))
    assert image.boxes.class_names == ["plate", "face"]
    assert isinstance(image.boxes, Detections) and (image.boxes.scores == 1).all()


@requires_datasets
@pytest.mark.parametrize("name", ["faces-crowd", "plates-dashcam"])
def test_written_yolo_labels_read_back_as_the_same_boxes(tmp_path, name):
    images = load_split(DATASETS / name, "dev")[:5]
    for i, image in enumerate(images):
        write_yolo_example(image, tmp_path, f"{name}-{i:05d}")
    (tmp_path / "data.yaml").write_text(json.dumps({"names": ["face", "plate"]}))
    back = load_dataset(tmp_path, "yolo", {"face": "face", "plate": "plate"})
    assert [im.path.resolve() for im in back] == [im.path.resolve() for im in images]
    for written, read in zip(images, back, strict=True):
        assert (read.width, read.height) == (written.width, written.height)
        np.testing.assert_array_equal(read.boxes.class_id, written.boxes.class_id)
        np.testing.assert_allclose(read.boxes.xyxy, written.boxes.xyxy, atol=0.01)


@requires_datasets
def test_a_label_overlay_adds_its_boxes_and_raw_labels_leave_them_out(tmp_path):
    root = DATASETS / "faces-crowd"  # the overlay names images by their path in the set
    raw = {im.path.name: im for im in load_dataset(root, raw_labels=True)}
    name = sorted(raw)[0]
    fixes = tmp_path / "fixes"
    fixes.mkdir()
    added = [{"image": f"images/{name}", "class": "face", "box": [1, 2, 11, 12], "reason": "unlabelled"}]
    (fixes / "faces-crowd.json").write_text(json.dumps({"added": added}))
    fixed = {im.path.name: im for im in with_label_fixes(list(raw.values()), root, fixes)}
    assert len(fixed[name].boxes) == len(raw[name].boxes) + 1
    np.testing.assert_array_equal(fixed[name].boxes.xyxy[-1], [1, 2, 11, 12])
    assert fixed[name].boxes.class_names[-1] == "face"
    assert all(len(fixed[k].boxes) == len(raw[k].boxes) for k in raw if k != name)
    selected, about = select_images(root, None, None, "all", None, fixes_dir=fixes)  # `--label-fixes DIR`
    assert about["labels"] == f"corrected ({fixes})"
    assert [len(im.boxes) for im in selected] == [len(fixed[im.path.name].boxes) for im in selected]
    assert select_images(root, None, None, "all", None, fixes_dir=tmp_path)[1]["labels"] == "raw"  # none
    added[0]["image"] = "images/not-in-the-set.png"
    (fixes / "faces-crowd.json").write_text(json.dumps({"added": added}))
    with pytest.raises(ValueError, match="not in"):
        with_label_fixes(list(raw.values()), root, fixes)


def other_photos_named(root: Path, count: int = 3) -> Path:
    """A folder `root` holding `count` photos that are not the set its name suggests: plates-roboflow's
    first ones with their labels, in YOLO layout (`data.yaml` names class 0 `license_plate`)."""
    source = DATASETS / "plates-roboflow"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for image in sorted((source / "images").iterdir())[:count]:
        shutil.copyfile(image, root / "images" / image.name)
        shutil.copyfile(source / "labels" / f"{image.stem}.txt", root / "labels" / f"{image.stem}.txt")
    shutil.copyfile(source / "data.yaml", root / "data.yaml")
    return root


@requires_datasets
def test_a_folder_named_like_a_shared_set_is_read_as_a_plain_labelled_folder(tmp_path):
    """Not street-faces-plates: no label overlay, no split rule, and its own class names (the set's map
    knows only `face` and `plate`, the built-in aliases also `license_plate`)."""
    root = other_photos_named(tmp_path / "street-faces-plates")
    published = load_dataset(DATASETS / "plates-roboflow", raw_labels=True)[:3]
    images = load_dataset(root)
    assert [im.path.name for im in images] == [im.path.name for im in published]
    for image, expected in zip(images, published, strict=True):
        assert image.boxes.class_names == expected.boxes.class_names == ["plate"] * len(expected.boxes)
        np.testing.assert_allclose(image.boxes.xyxy, expected.boxes.xyxy)
    selected, dataset = select_images(root, None, None, "all", None)
    assert len(selected) == 3 and sum(len(im.boxes) for im in selected) > 0
    assert (dataset["labels"], dataset["class_map"], dataset["set"]) == ("raw", None, None)
    with pytest.raises(ValueError, match="no split rule"):
        select_images(root, None, None, "dev", None)


@requires_datasets
@pytest.mark.parametrize("name", sorted(SHARED_COUNTS))
def test_shared_sets_are_recognised_by_their_files(name):
    assert shared_set(DATASETS / name) == name


@requires_datasets
def test_a_renamed_copy_of_a_shared_set_is_that_set_and_an_edited_copy_is_not(tmp_path):
    copy = tmp_path / "my-plates"
    shutil.copytree(DATASETS / "plates-roboflow", copy, copy_function=shutil.copyfile)  # writable
    assert shared_set(copy) == "plates-roboflow"
    original, copied = load_split(DATASETS / "plates-roboflow", "val"), load_split(copy, "val")
    assert [im.path.name for im in copied] == [im.path.name for im in original]
    assert [len(im.boxes) for im in copied] == [len(im.boxes) for im in original]  # the overlay too
    label = sorted((copy / "labels").iterdir())[0]
    label.write_text(label.read_text().replace("0 ", "1 ", 1))  # same size, another class
    assert shared_set(copy) is None
    with pytest.raises(ValueError, match="no split rule"):
        load_split(copy, "val")


def test_coco_crowd_annotations_are_regions_to_ignore(tmp_path):
    """`iscrowd` 1 marks a region of many faces, as in COCO: no object to find, and a detection there is
    neither a hit nor a false one. The figures agree with faster-coco-eval reading the same json."""
    save_image(tmp_path / "images" / "a.jpg", 400, 300, "JPEG")
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 400, "height": 300}],
        "categories": [{"id": 1, "name": "face"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {
                "id": 2,
                "image_id": 1,
                "category_id": 1,
                "bbox": [200, 100, 150, 100],
                "area": 1.5e4,
                "iscrowd": 1,
            },
        ],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    [image] = load_dataset(tmp_path)
    np.testing.assert_array_equal(image.boxes.xyxy, [[10, 10, 50, 50]])
    np.testing.assert_array_equal(image.crowd.xyxy, [[200, 100, 350, 200]])
    found = Detections(
        [[10, 10, 50, 50], [220, 120, 260, 160], [300, 20, 340, 60]], [0.9, 0.8, 0.7], [0, 0, 0]
    )
    figures = privacy_metrics([image], [found], BlurConfig())["face"]
    assert figures["boxes"]["all"] == 1 and figures["recall50"] == 1.0 and figures["blurred"]["all"] == 1.0
    assert figures["false_blurs_per_image"] == 1.0  # the box at (300, 20) only: the one in the crowd is not

    reference = COCO(str(tmp_path / "annotations.json"))
    results = [
        {"image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
        for (x1, y1, x2, y2), s in zip(found.xyxy.tolist(), found.scores, strict=True)
    ]
    evaluator = COCOeval_faster(reference, reference.loadRes(results), iouType="bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    ours = coco_metrics([image], [found])["face"]
    assert ours["AP50"] == evaluator.stats[1] == 1.0  # the false one ranks below the hit
    assert ours["AP"] == pytest.approx(evaluator.stats[0])


def test_a_coco_folder_without_json_is_a_clear_error(tmp_path):
    save_image(tmp_path / "images" / "a.jpg", 40, 30, "JPEG")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*no COCO json"):
        load_dataset(tmp_path, "coco")
