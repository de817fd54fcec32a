"""`streetblur train` end to end: one-epoch, 64 px runs on the shared sets (about 20 s each on CPU);
its defaults and how it publishes a checkpoint, without them."""

import json
import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from detection.detections import CLASS_NAMES
from detection.detector import DEFAULT_MODEL, Detector, DetectorConfig
from detection.runtime import weights_digest
from detection.tiling import View, plan_views
from eval.datasets import SHARED_DATASETS, load_dataset, split_dataset
from jobs.cli.main import build_parser, main
from jobs.training.dataset import TILE_MIN_VISIBLE, write_tile_example
from jobs.training.labels import SHIPPED_PSEUDO_LABELS, load_pseudo_labels
from tests.conftest import DATASETS, SAMPLES, requires_datasets, skip_without_datasets


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch run with the default `--out`, from a working folder of its own."""
    skip_without_datasets()
    work = tmp_path_factory.mktemp("train")
    shipped = weights_digest(DEFAULT_MODEL)
    args = ["--init", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--batch", "32"]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(work)
        code = main(["train", "--data", str(DATASETS), *args, "--workdir", str(work / "runs")])
    assert code == 0
    assert weights_digest(DEFAULT_MODEL) == shipped  # the shipped weights are never the default output
    return work / "runs" / "train" / "streetblur-n.pt", work / "runs" / "data"


def test_training_data_is_the_splits_with_pseudo_labels_on_train_only(trained):
    _, data = trained
    pseudo = load_pseudo_labels(SHIPPED_PSEUDO_LABELS)
    for name, spec in SHARED_DATASETS.items():
        labelled = {str(CLASS_NAMES.index(c)) for c in set(spec.class_map.values())}  # class ids
        parts = split_dataset(load_dataset(DATASETS / name), spec.split)
        assert not list((data / "val" / "labels").glob(f"{name}-*.txt"))  # never seen in training
        for part, images in parts.items():
            if part == "val":
                continue
            labels = sorted((data / part / "labels").glob(f"{name}-*.txt"))
            assert len(labels) == len(images)
            rows = [line.split() for path in labels for line in path.read_text().splitlines()]
            added = (
                [len(pseudo.get(name, {}).get(im.path.name, ())) for im in images] if part == "train" else [0]
            )
            assert len(rows) == sum(len(im.boxes) for im in images) + sum(added)
            values = np.array([[float(v) for v in row[1:]] for row in rows])
            assert ((values >= 0) & (values <= 1)).all()
            every_class = {str(i) for i in range(len(CLASS_NAMES))}
            assert {row[0] for row in rows} == (every_class if sum(added) else labelled)
    assert sum(len(files) for files in pseudo.values()) > 0


def test_the_trained_model_and_its_record(trained):
    out, _ = trained
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["epochs_completed"] == 1
    counts = record["datasets"]["counts"]
    assert counts["faces-crowd/val"] == 104 and counts["plates-dashcam/train"] == 327
    assert set(record["dev"]) == {"face", "plate"}
    assert "MotionBlur" in record["augmentations"] and "ImageCompression" in record["augmentations"]
    detector = Detector(DetectorConfig(models=(str(out),)))
    assert sorted(detector.loaded_models[0][1].values()) == [0, 1]  # face and plate, by name


def test_a_written_dataset_travels_and_trains_with_ultralytics_overrides(trained, tmp_path):
    _, linked = trained
    assert (
        main(["train", "--data", str(DATASETS), "--write-dataset", str(tmp_path / "ds"), "--max-side", "320"])
        == 0
    )
    moved = shutil.move(tmp_path / "ds", tmp_path / "elsewhere")  # as to another machine
    for part in ("train", "dev"):
        images = sorted((moved / part / "images").iterdir())
        assert len(images) == len(list((linked / part / "images").iterdir()))
        assert not any(path.is_symlink() for path in images)
        assert max(max(Image.open(path).size) for path in images) <= 320
        for labels in (moved / part / "labels").iterdir():  # boxes are relative: shrinking keeps them
            assert labels.read_text() == (linked / part / "labels" / labels.name).read_text()
    frame = next((moved / "train" / "images").glob("plates-dashcam-*"))
    assert Image.open(frame).size == (320, 180)  # a 1280x720 frame, its aspect ratio kept
    out = tmp_path / "model.pt"
    args = ["--init", "yolov8n.yaml", "--epochs", "1", "--imgsz", "64", "--batch", "32", "--out", str(out)]
    assert (
        main(
            [
                "train",
                "--dataset",
                str(moved / "data.yaml"),
                *args,
                "--workdir",
                str(tmp_path / "runs"),
                "fraction=0.25",
            ]
        )
        == 0
    )
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["args"]["fraction"] == 0.25 and record["datasets"]["max_side"] == 320
    assert record["datasets"]["counts"] == json.loads((linked / "sources.json").read_text())["counts"]


@requires_datasets
def test_self_labels_add_the_models_unmatched_boxes_of_the_labelled_classes(tmp_path):
    """Self-labels on street-faces-plates (both classes) and dashcam (plates only) training images:
    the model's boxes at the threshold that overlap no label, added beside the teachers' labels."""
    from blurring.config import Config
    from eval.metrics import overlaps_nothing
    from jobs.training.labels import add_self_labels

    images = {
        name: split_dataset(load_dataset(DATASETS / name), SHARED_DATASETS[name].split)["train"][:12]
        for name in ("street-faces-plates", "plates-dashcam")
    }
    out = tmp_path / "self.json"
    record = add_self_labels(SHIPPED_PSEUDO_LABELS, out, images, Config(), threshold=0.5)
    assert sum(record["self_labels"]["counts"].values()) > 0
    teachers = json.loads(SHIPPED_PSEUDO_LABELS.read_text())["labels"]
    assert record["labels"]["plates-roboflow"] == teachers["plates-roboflow"]  # kept as they were
    labels = load_pseudo_labels(out)
    for name, files in images.items():
        for image in files:
            added = labels.get(name, {}).get(image.path.name)
            if added is None:
                continue
            assert (added.scores >= 0.5).all()
            assert overlaps_nothing(added, image.boxes).all()
            if name == "plates-dashcam":
                assert set(added.class_id) == {CLASS_NAMES.index("plate")}  # the set labels no faces
    with pytest.raises(ValueError, match="already holds self-labels"):
        add_self_labels(out, tmp_path / "again.json", images, Config())
    refused = ["train", "--make-self-labels", "m.pt", "--write-dataset", str(tmp_path / "ds")]  # no file
    assert main(refused) == 2 and not (tmp_path / "ds").exists()


@requires_datasets
@pytest.mark.parametrize("name", ["faces-crowd", "plates-dashcam", "street-faces-plates"])
def test_a_training_tile_holds_the_labels_inside_it_at_the_detectors_scale(tmp_path, name):
    images = split_dataset(load_dataset(DATASETS / name), SHARED_DATASETS[name].split)["train"][:6]
    for i, image in enumerate(images):
        assert write_tile_example(image, tmp_path, f"tile-{i}", f"{name}/{image.path.name}")
    (tmp_path / "data.yaml").write_text(json.dumps({"names": list(CLASS_NAMES)}))
    tiles = load_dataset(tmp_path, "yolo", {"face": "face", "plate": "plate"})
    config = DetectorConfig()
    for image, tile in zip(images, tiles, strict=True):
        scale = max(config.upscale_to / max(image.width, image.height), 1.0)  # as the detector upscales
        seen = cv2.imread(str(image.path))
        seen = cv2.resize(seen, (round(image.width * scale), round(image.height * scale)))
        assert (tile.width, tile.height) == tuple(min(config.tile_size, s) for s in seen.shape[1::-1])
        assert (tile.width, tile.height) != seen.shape[1::-1]  # a tile, not the whole image
        # Where the tile lies in the upscaled photo, found from its pixels alone: one of the detector's.
        match = cv2.matchTemplate(seen, cv2.imread(str(tile.path)), cv2.TM_SQDIFF_NORMED)
        _, _, (x, y), _ = cv2.minMaxLoc(match)
        views = plan_views(*seen.shape[1::-1], config.tile_size, config.tile_overlap, whole_image=False)
        assert View(x, y, tile.width, tile.height) in views
        lines = (tmp_path / "labels" / f"{tile.path.stem}.txt").read_text().splitlines()
        values = [float(v) for line in lines for v in line.split()[1:]]
        assert all(0 <= v <= 1 for v in values)  # clipped by the writer, not just by the reader
        boxes = image.boxes.xyxy * np.array([seen.shape[1] / image.width, seen.shape[0] / image.height] * 2)
        inside = (boxes - [x, y, x, y]).clip(0, [tile.width, tile.height] * 2)
        visible = np.prod((inside[:, 2:] - inside[:, :2]).clip(0), axis=1)
        keep = visible >= TILE_MIN_VISIBLE * np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
        assert len(tile.boxes) == keep.sum()
        np.testing.assert_allclose(tile.boxes.xyxy, inside[keep], atol=0.5)
        np.testing.assert_array_equal(tile.boxes.class_id, image.boxes.class_id[keep])
    assert sum(len(tile.boxes) for tile in tiles) > 0


# ---------------------------------------------------------------- defaults, and the checkpoint's publication


def test_train_and_quantize_default_to_the_working_folder_and_to_no_data(monkeypatch, tmp_path):
    """Nothing outside the project by default: the model goes to runs/train/ (never over the shipped
    weights), and the labelled sets come from --data or STREETBLUR_DATASETS."""
    monkeypatch.delenv("STREETBLUR_DATASETS", raising=False)
    train = build_parser().parse_args(["train"])
    assert train.out == Path("runs/train/streetblur-n.pt")  # relative: in the working folder
    quantize = build_parser().parse_args(["quantize"])
    assert quantize.model == train.out  # `streetblur train`, then `streetblur quantize`
    assert train.data is None and quantize.data is None
    monkeypatch.setenv("STREETBLUR_DATASETS", str(tmp_path))
    assert build_parser().parse_args(["train"]).data == tmp_path
    assert build_parser().parse_args(["quantize"]).data == tmp_path

    monkeypatch.delenv("STREETBLUR_DATASETS")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--epochs", "1"]) == 2  # a usage error, before anything is written
    assert main(["train", "--make-pseudo-labels"]) == 2  # would write the shipped file: name one
    assert main(["quantize", "--model", str(DEFAULT_MODEL)]) == 2
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_is_published_whole_or_not_at_all(monkeypatch, tmp_path, caplog):
    from jobs.training.train import publish_checkpoint

    best, out = tmp_path / "best.pt", tmp_path / "model.pt"
    best.write_bytes(b"new weights")
    out.write_bytes(b"old weights")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", disk_full)
        with pytest.raises(OSError, match="No space left"):
            publish_checkpoint(best, out)
    assert out.read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "model.pt"]  # no partial file

    (tmp_path / "model_int8_openvino_model").mkdir()  # quantised from the old weights
    with caplog.at_level(logging.WARNING):
        publish_checkpoint(best, out)
    assert out.read_bytes() == b"new weights"
    assert "streetblur quantize --model" in caplog.text


def test_training_refuses_a_folder_that_only_bears_a_shared_sets_name(tmp_path, capsys):
    """`--data DIR` must hold the shared sets themselves: a folder of other photos named like one would
    be trained on without its split rule (its dev and val photos among the training ones) and overlay."""
    impostor = tmp_path / "faces-crowd" / "images"
    impostor.mkdir(parents=True)
    for photo in sorted(SAMPLES.glob("crowd_*.jpg")):
        shutil.copy(photo, impostor / photo.name)

    code = main(["train", "--data", str(tmp_path), "--write-dataset", str(tmp_path / "ds")])

    assert code == 2
    assert "does not hold the shared set faces-crowd" in capsys.readouterr().err
    assert not (tmp_path / "ds").exists()
