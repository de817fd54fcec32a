"""INT8: `streetblur quantize` builds an OpenVINO INT8 model beside a .pt, and the detector runs it on
CPU only when it was quantised from exactly those weights."""

import json
import shutil

import cv2
import numpy as np
import pytest

from detection.detector import DEFAULT_MODEL, Detector, DetectorConfig
from detection.runtime import INT8_SOURCE_FILE, int8_weights, weights_digest
from jobs.cli.main import main
from tests.conftest import DATASETS, SAMPLES, requires_datasets


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(bottom_right - top_left, 0, None).prod(-1)
    area_a, area_b = (a[:, 2:] - a[:, :2]).prod(-1), (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


@pytest.fixture(scope="module")
def fp32_detector() -> Detector:
    return Detector(DetectorConfig(runtime="openvino", precision="fp32"))


@requires_datasets
def test_quantize_writes_an_int8_model_beside_the_weights_that_finds_what_fp32_finds(tmp_path, fp32_detector):
    weights = tmp_path / "mine.pt"
    shutil.copyfile(DEFAULT_MODEL, weights)
    args = ["quantize", "--model", str(weights), "--data", str(DATASETS), "--images", "40"]
    assert main([*args, "--workdir", str(tmp_path / "runs")]) == 0
    folder = int8_weights(weights)
    assert folder == tmp_path / "mine_int8_openvino_model"
    record = json.loads((folder / INT8_SOURCE_FILE).read_text())
    assert record["source_sha256_12"] == weights_digest(weights)
    assert 30 <= record["calibration_images"] <= 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.pt", folder.name, "runs"]  # nothing staged

    int8 = Detector(DetectorConfig(models=(str(weights),)))  # auto: INT8, since it is there
    assert int8.precision == "int8" and int8.model_id.startswith(f"{folder.name}@")
    for name in ("dashcam_0.jpg", "crowd_0.jpg"):
        image = cv2.imread(str(SAMPLES / name))
        found, expected = int8.detect(image), fp32_detector.detect(image)
        assert len(expected) > 0
        # Every FP32 box has an INT8 box on it, of the same class.
        overlap = iou_matrix(expected.xyxy, found.xyxy)
        assert (overlap.max(1) >= 0.7).all(), (name, expected, found)
        assert (found.class_id[overlap.argmax(1)] == expected.class_id).all()


def test_int8_runs_only_when_quantised_from_these_very_weights(tmp_path, caplog):
    weights = tmp_path / "model.pt"
    shutil.copyfile(DEFAULT_MODEL, weights)
    shutil.copytree(int8_weights(DEFAULT_MODEL), int8_weights(weights))
    assert Detector(DetectorConfig(models=(str(weights),))).precision == "int8"

    record = int8_weights(weights) / INT8_SOURCE_FILE
    record.write_text(json.dumps({**json.loads(record.read_text()), "source_sha256_12": "0" * 12}))
    stale = Detector(DetectorConfig(models=(str(weights),)))  # auto falls back to FP32, with a warning
    assert stale.precision == "fp32" and stale.model_id.startswith("model.pt@")
    assert "quantised from other weights" in caplog.text
    with pytest.raises(FileNotFoundError, match=r"no INT8 model of .*streetblur quantize"):
        Detector(DetectorConfig(models=(str(weights),), precision="int8"))
    with pytest.raises(ValueError, match="INT8 runs on the openvino runtime only"):
        Detector(DetectorConfig(precision="int8", runtime="torch"))
    with pytest.raises(ValueError, match="FP16 runs on the torch runtime on a GPU only"):
        Detector(DetectorConfig(precision="fp16", device="cpu"))
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, fp16, int8"):
        DetectorConfig(precision="int4")


def test_the_shipped_weights_come_with_their_own_int8_model(detector):
    """The default on CPU. Retraining without `streetblur quantize` fails here, not silently in FP32."""
    assert detector.runtime == "openvino" and detector.precision == "int8"
    assert detector.model_id.startswith("streetblur-n_int8_openvino_model@")


def test_the_compiled_model_is_kept_for_the_next_process(tmp_path, monkeypatch):
    """OpenVINO compiles the model for this CPU on load; the next process loads that from the cache."""
    monkeypatch.setenv("STREETBLUR_CACHE", str(tmp_path))

    def compiled(detector: Detector):
        return detector.loaded_models[0][0].predictor.model.backend.ov_compiled_model

    first = Detector()
    assert not compiled(first).get_property("LOADED_FROM_CACHE")
    assert list((tmp_path / "openvino").glob("*.blob"))
    second = Detector()  # as in a new process: a new OpenVINO core
    assert second.precision == "int8" and compiled(second).get_property("LOADED_FROM_CACHE")
    image = cv2.imread(str(SAMPLES / "dashcam_0.jpg"))
    found, expected = second.detect(image), first.detect(image)
    np.testing.assert_array_equal(found.xyxy, expected.xyxy)
    np.testing.assert_array_equal(found.class_id, expected.class_id)
