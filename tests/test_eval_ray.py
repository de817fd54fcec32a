"""`streetblur eval --ray`: the inference pass on local Ray's detector actors gives the in-process figures."""

import argparse
import json
from dataclasses import replace

import numpy as np
import pytest

from blurring.config import Config
from eval.datasets import load_split
from eval.evaluate import run_evaluation
from jobs.cli.main import build_parser
from jobs.eval_on_ray import RayInference, ray_detection_pass
from tests.conftest import DATASETS, requires_datasets

PER_SET = 6


@pytest.fixture(scope="module")
def subset():
    """6 dashcam frames (plates, tiled) and 6 crowd photos (faces), renumbered: ids are per set."""
    images = [
        im
        for name in ("plates-dashcam", "faces-crowd")
        for im in load_split(DATASETS / name, "val")[:PER_SET]
    ]
    return [replace(image, image_id=i) for i, image in enumerate(images)]


@pytest.fixture(scope="module")
def local_ray():
    """A new local Ray for this module, shut down after it."""
    import ray

    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(subset):
    return run_evaluation(subset, [Config()], progress=False)


@pytest.fixture(scope="module")
def on_ray(subset, local_ray):
    detection_pass, inference = ray_detection_pass(RayInference(address="local", actors=2), len(subset))
    return run_evaluation(
        subset, [Config()], progress=False, detection_pass=detection_pass, inference=inference
    )


def assert_same_boxes(found, expected):
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        np.testing.assert_allclose(got.xyxy, want.xyxy, rtol=0, atol=1e-3)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.class_id, want.class_id)


@requires_datasets
def test_ray_gives_the_in_process_predictions_in_image_order(in_process, on_ray):
    expected, found = in_process.models[0], on_ray.models[0]
    assert sum(len(dets) for dets in expected.predictions) > 0
    assert_same_boxes(found.predictions, expected.predictions)
    for point in ("deployed", "target"):
        assert_same_boxes(found.detections[point], expected.detections[point])


@requires_datasets
def test_ray_gives_the_in_process_figures(in_process, on_ray):
    expected, found = in_process.models[0], on_ray.models[0]
    assert found.model_id == expected.model_id
    assert found.thresholds == expected.thresholds
    assert found.coco == expected.coco
    assert found.privacy == expected.privacy
    assert expected.coco["face"]["AP50"] is not None and expected.coco["plate"]["AP50"] is not None
    for name, curve in expected.curves.items():
        for column in ("threshold", "recall", "precision"):
            np.testing.assert_array_equal(getattr(found.curves[name], column), getattr(curve, column))
    assert (in_process.inference, on_ray.inference) == ("in-process", "ray, 2 actors")
    assert on_ray.dataset == in_process.dataset


def eval_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["eval", *argv])


@requires_datasets
def test_cli_with_ray_writes_the_report(tmp_path, local_ray, capsys):
    out = tmp_path / "out"
    args = eval_args(
        "--data", str(DATASETS / "faces-crowd"), "--split", "val", "--limit", "3",
        "--ray", "--actors", "1", "--out", str(out),
    )  # fmt: skip
    assert args.run(args) == 0
    names = {p.name for p in out.iterdir()}
    assert names == {"report.md", "report.html", "report.json", "predictions.json", "ground_truth.json"}
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["inference"] == "ray, 1 actor"
    assert report["dataset"]["images"] == 3
    assert report["models"][0]["coco"]["face"]["AP50"] is not None
    assert "inference ray, 1 actor" in (out / "report.md").read_text()
    assert "streetblur-n.pt face: AP50" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--actors", "2"], "only with --ray"),
        (["--address", "auto"], "only with --ray"),
        (["--ray", "--actors", "0"], "--actors must be at least 1"),
        (["--ray", "--actor-gpus", "-1"], "--actor-gpus must be at least 0"),
    ],
)
def test_cli_refuses_bad_ray_options_before_starting_anything(tmp_path, argv, message):
    args = eval_args("--data", str(tmp_path / "missing"), "--out", str(tmp_path / "out"), *argv)
    with pytest.raises(ValueError, match=message):
        args.run(args)
