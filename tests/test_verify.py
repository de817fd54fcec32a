"""The two detection stages: proposals, zoom-in verification, and the unblurred proposals reported."""

from dataclasses import replace

import cv2
import numpy as np
import pytest

from blurring.config import load_config, output_settings, settings_digest
from blurring.pipeline import blur_image_bytes
from detection.detections import CLASS_NAMES, Detections
from detection.detector import Detector, DetectorConfig
from detection.verify import blurred_by_cascade, cascade_score
from eval.datasets import load_split
from eval.evaluate import read_pixels, run_evaluation
from tests.conftest import DATASETS, SAMPLES, requires_datasets, sample_labels

FACE, PLATE = CLASS_NAMES.index("face"), CLASS_NAMES.index("plate")
SURE = {"face": 0.35, "plate": 0.25}
PROPOSAL = {"face": 0.05, "plate": 0.03}


@pytest.fixture(scope="module")
def crowd() -> np.ndarray:
    return cv2.imread(str(SAMPLES / "crowd_0.jpg"))


@pytest.fixture(scope="module")
def verifying() -> Detector:
    return Detector(DetectorConfig(verify="on", proposal_thresholds=PROPOSAL))


def test_with_verification_off_sure_boxes_blur_and_the_other_proposals_are_reported(crowd):
    screened = Detector(DetectorConfig(verify="off", proposal_thresholds=PROPOSAL)).screen_batch([crowd])[0]
    plain = Detector(DetectorConfig(verify="off", proposal_thresholds=SURE))  # no proposals: one stage
    assert np.array_equal(screened.blurred.xyxy, plain.detect(crowd).xyxy)  # proposals change no sure box
    unblurred = screened.unblurred
    assert len(unblurred) > 0
    assert set(screened.stages) == {"detector"}
    floor = np.array([PROPOSAL[c] for c in CLASS_NAMES])[unblurred.class_id]
    sure = np.array([SURE[c] for c in CLASS_NAMES])[unblurred.class_id]
    assert ((unblurred.scores >= floor) & (unblurred.scores < sure)).all()


def test_verified_proposals_blur_and_rejected_ones_are_reported_by_the_verifier(verifying, crowd):
    plain = Detector(DetectorConfig(verify="off", proposal_thresholds=PROPOSAL)).screen_batch([crowd])[0]
    original = verifying.config
    try:
        verifying.config = replace(original, verify_thresholds=dict.fromkeys(CLASS_NAMES, 0.0))
        passed = verifying.screen_batch([crowd])[0]  # every proposal passes
        verifying.config = replace(original, verify_thresholds=dict.fromkeys(CLASS_NAMES, 1.0))
        rejected = verifying.screen_batch([crowd])[0]  # none passes: the plain detector's blur
    finally:
        verifying.config = original
    assert len(passed.unblurred) == 0 and len(passed.blurred) > len(plain.blurred)
    assert np.array_equal(rejected.blurred.xyxy, plain.blurred.xyxy)
    assert np.array_equal(rejected.unblurred.xyxy, plain.unblurred.xyxy)
    assert set(rejected.stages) == {"verifier"}


def test_zoom_scores_a_labelled_face_above_a_patch_of_background(verifying, crowd):
    faces = sample_labels()["crowd_0.jpg"].of_class("face")
    height, width = crowd.shape[:2]
    background = Detections(
        [[0, 0, 24, 24], [width - 24, height - 24, width, height]], [0.1, 0.1], [FACE] * 2
    )
    boxes = Detections.concat([Detections(faces.xyxy, np.full(len(faces), 0.1), faces.class_id), background])
    scores = verifying.zoom_scores(crowd, boxes)
    assert np.median(scores[: len(faces)]) > 0.5
    assert (scores[len(faces) :] < 0.1).all()


def test_a_verifier_failure_fails_the_image_closed(verifying, monkeypatch):
    config = load_config(overrides={"detect.verify": "on", "detect.proposal_thresholds.face": 0.05})

    def broken(*args, **kwargs):
        raise RuntimeError("verifier out of memory")

    monkeypatch.setattr(verifying, "zoom_scores", broken)
    outcome = blur_image_bytes((SAMPLES / "crowd_0.jpg").read_bytes(), "JPEG", verifying, config)
    assert outcome.status == "failed" and outcome.output is None
    assert "detection failed: RuntimeError: verifier out of memory" in outcome.error


def test_the_pipeline_records_the_unblurred_proposals_with_their_stage(verifying):
    config = load_config(overrides={"detect.verify": "on"})
    outcome = blur_image_bytes((SAMPLES / "crowd_0.jpg").read_bytes(), "JPEG", verifying, config)
    records = outcome.proposal_records()
    assert outcome.status == "blurred" and records
    assert {r["stage"] for r in records} == {"verifier"}
    assert set(records[0]) == {"class", "score", "box", "stage"}
    assert len(records) == len(outcome.proposals)


@requires_datasets
def test_eval_with_verification_scores_what_the_verifying_detector_blurs(verifying):
    """Eval's scan and zoom passes, thresholded afterwards, give the deployed two-stage detector's boxes."""
    images = load_split(DATASETS / "street-faces-plates", "dev")[:4]
    config = load_config(overrides={"detect.verify": "on", "detect.proposal_thresholds": PROPOSAL})
    model = run_evaluation(images, [config], progress=False).models[0]
    for image, evaluated in zip(images, model.detections["deployed"], strict=True):
        expected = verifying.detect(read_pixels(image, 10**9))
        np.testing.assert_array_equal(evaluated.xyxy, expected.xyxy)
        np.testing.assert_array_equal(evaluated.scores, expected.scores)
    assert model.stages["verify_thresholds"] == config.detect.verify_thresholds


def test_second_stage_options_enter_the_settings_digest_only_with_verification_on():
    def digest(**overrides) -> str:
        return settings_digest(output_settings(load_config(overrides=overrides), "m@1", "openvino", "int8"))

    plain = digest()
    assert digest(**{"detect.proposal_thresholds.face": 0.1, "detect.verify_imgsz": 256}) == plain
    assert "verify" not in output_settings(load_config(), "m@1", "openvino", "int8")["detect"]
    verifying = digest(**{"detect.verify": "on"})
    assert verifying != plain
    assert digest(**{"detect.verify": "on", "detect.verify_thresholds.face": 0.5}) != verifying


def test_the_cascade_rule_on_hand_made_scores():
    boxes = Detections([[0, 0, 10, 10]] * 4, [0.5, 0.2, 0.2, 0.01], [FACE] * 4)
    zoom = np.array([np.nan, 0.9, 0.1, np.nan])  # sure / verified / rejected / not a proposal
    verify = {"face": 0.5, "plate": 0.5}
    assert cascade_score(np.array([0.2]), np.array([0.9]))[0] == pytest.approx(0.55)
    assert blurred_by_cascade(boxes, zoom, SURE, PROPOSAL, verify).tolist() == [True, True, False, False]
    assert blurred_by_cascade(boxes, None, SURE, PROPOSAL, verify).tolist() == [True, False, False, False]
    with pytest.raises(ValueError, match="not verified"):  # an unverified proposal is an error, not a pass
        blurred_by_cascade(boxes, np.full(4, np.nan), SURE, PROPOSAL, verify)
