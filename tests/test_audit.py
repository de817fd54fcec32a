"""The label audit: unlabelled detections of a real set, listed and drawn on numbered contact sheets."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from blurring.config import Config
from detection.detections import Detections
from eval.audit import (
    SHEET_COLUMNS,
    SHEET_ROWS,
    TILE,
    find_candidates,
    read_overlay,
    record_verdicts,
    rejected_boxes,
)
from eval.datasets import load_dataset, load_split, split_dataset, with_label_fixes
from eval.metrics import overlaps_nothing
from jobs.cli.main import main
from tests.conftest import DATASETS, requires_datasets
from tests.test_eval_datasets import other_photos_named

pytestmark = requires_datasets


def test_audit_lists_each_detection_that_overlaps_no_label_and_draws_it_numbered(capsys, tmp_path):
    root = DATASETS / "faces-crowd"
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(root), "--limit", "12", "--out", str(out)]) == 0  # corrected labels
    assert "candidates in 12 images" in capsys.readouterr().out
    audit = json.loads((out / "candidates.json").read_text())
    candidates = audit["candidates"]
    assert candidates, "crowd photos at a 0.1 threshold always show some unlabelled boxes"
    assert audit["threshold"] == 0.1 and audit["dataset"]["split"] == "dev" and audit["model_id"]
    assert [c["number"] for c in candidates] == list(range(1, len(candidates) + 1))
    assert [c["score"] for c in candidates] == sorted((c["score"] for c in candidates), reverse=True)
    assert min(c["score"] for c in candidates) >= 0.1
    images = {im.path.relative_to(root).as_posix(): im for im in load_split(root, "dev")[:12]}
    for candidate in candidates:
        labels = images[candidate["image"]].boxes
        assert overlaps_nothing(Detections.from_records([candidate]), labels).all()

    per_sheet = SHEET_COLUMNS * SHEET_ROWS
    sheets = sorted(out.glob("sheet-*.png"))
    assert len(sheets) == -(-len(candidates) // per_sheet)
    first = cv2.imread(str(sheets[0]))
    assert first.shape == (SHEET_ROWS * TILE, SHEET_COLUMNS * TILE, 3)
    shown = min(len(candidates), per_sheet)
    slots = [(r * TILE, c * TILE) for r in range(SHEET_ROWS) for c in range(SHEET_COLUMNS)]
    tiles = [first[top : top + TILE, left : left + TILE] for top, left in slots]
    assert all(tile.std() > 10 for tile in tiles[:shown])  # a photo crop in each used slot
    assert all(tile.min() == 255 for tile in tiles[shown:])  # the rest blank
    red = (tiles[0] == (0, 0, 255)).all(axis=-1)
    assert red.sum() > 40  # the candidate's box is drawn


def test_an_audit_below_an_earlier_threshold_lists_only_the_band_that_audit_left(capsys, tmp_path):
    root = DATASETS / "faces-crowd"
    everything, band = tmp_path / "all", tmp_path / "band"
    assert main(["audit", "--data", str(root), "--limit", "6", "--out", str(everything)]) == 0
    earlier = json.loads((everything / "candidates.json").read_text())["candidates"]
    scores = sorted({c["score"] for c in earlier})  # rounded in the file: cut between two of them
    below = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    args = ["--data", str(root), "--limit", "6", "--below", str(below), "--out", str(band)]
    assert main(["audit", *args]) == 0
    audit = json.loads((band / "candidates.json").read_text())
    assert audit["below"] == below
    kept = [(c["image"], c["class"], c["score"]) for c in audit["candidates"]]
    assert kept and kept == [(c["image"], c["class"], c["score"]) for c in earlier if c["score"] < below]
    assert [c["number"] for c in audit["candidates"]] == list(range(1, len(kept) + 1))


def _judge(out, real: list[int]) -> Path:
    """A person's verdicts on the audit in `out`: the candidates numbered `real` are faces."""
    verdicts = out / "verdicts.json"
    entries = [{"number": n, "reason": "face, unlabelled"} for n in real]
    verdicts.write_text(json.dumps({"real": entries, "left_out": "hands and patterned cloth"}))
    return verdicts


def test_recorded_verdicts_add_the_real_boxes_and_a_later_audit_shows_nothing_judged(capsys, tmp_path):
    root = DATASETS / "faces-crowd"
    fixes = tmp_path / "label_fixes"  # a set with no overlay yet: its published labels
    out = tmp_path / "audit"
    assert main(["audit", "--data", str(root), "--raw-labels", "--limit", "6", "--out", str(out)]) == 0
    candidates = json.loads((out / "candidates.json").read_text())["candidates"]
    assert len(candidates) >= 3

    args = ["audit", "--data", str(root), "--out", str(out), "--record", str(_judge(out, [1]))]
    assert main(args) == 2  # the overlays' folder must be named: nothing is written into the package
    assert "--label-fixes" in capsys.readouterr().err
    assert main([*args, "--label-fixes", str(fixes)]) == 0
    assert f"recorded 1 added and {len(candidates) - 1} rejected" in capsys.readouterr().out
    after = read_overlay(root, fixes)
    [audit] = after["audits"]
    assert audit | {"left_out": None} == {
        "split": "dev", "model_id": audit["model_id"], "threshold": 0.1,
        "candidates": len(candidates), "added": 1, "left_out": None,
    }  # fmt: skip
    [added] = after["added"]
    assert (added["image"], added["box"]) == (candidates[0]["image"], candidates[0]["box"])
    assert added["reason"].startswith("face, unlabelled (dev audit #")
    others = [(c["image"], c["box"]) for c in candidates[1:]]
    assert [(r["image"], r["box"]) for r in after["rejected"]] == others
    listing, verdicts = (json.loads(p.read_text()) for p in (out / "candidates.json", _judge(out, [1])))
    with pytest.raises(ValueError, match="were recorded"):  # recording the same audit again
        record_verdicts(root, listing, verdicts, fixes)
    assert read_overlay(root, fixes) == after

    images = with_label_fixes(load_dataset(root, raw_labels=True), root, fixes)
    image = next(im for im in images if im.path == root / added["image"])
    assert np.isclose(image.boxes.xyxy, added["box"], atol=0.01).all(axis=1).any()  # now a label
    dev = split_dataset(images, "random")["dev"][:6]
    assert find_candidates(dev, Config(), rejected=rejected_boxes(root, fixes), progress=False) == []
    again = find_candidates(dev, Config(), progress=False)  # without the judged: all but the added one
    assert [(c["image"].path.relative_to(root).as_posix(), c["box"]) for c in again] == others


def test_verdicts_that_name_no_candidate_change_nothing(tmp_path):
    root = DATASETS / "plates-roboflow"
    candidate = {"number": 1, "image": "x.jpg", "class": "plate", "score": 0.5, "box": [0, 0, 9, 9]}
    listing = {"dataset": {"root": str(root), "split": "val", "set": root.name}, "model_id": "m"}
    listing["threshold"] = 0.1
    listing["candidates"] = [candidate]
    unknown = [{"number": 2, "reason": "plate"}]
    twice = [{"number": 1, "reason": "a"}, {"number": 1, "reason": "b"}]
    for real in (unknown, twice):
        with pytest.raises(ValueError, match="does not list, or one twice"):
            record_verdicts(root, listing, {"real": real, "left_out": ""}, tmp_path)
    with pytest.raises(ValueError, match="other than"):
        record_verdicts(
            root,
            listing,
            {"real": [{"number": 1, "reason": "car", "class": "car"}], "left_out": ""},
            tmp_path,
        )
    with pytest.raises(ValueError, match=r"not .*faces-crowd"):
        record_verdicts(DATASETS / "faces-crowd", listing, {"real": [], "left_out": ""}, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_named_like_a_shared_set_neither_reads_nor_writes_that_sets_overlay(tmp_path):
    root = other_photos_named(tmp_path / "plates-roboflow")
    assert rejected_boxes(DATASETS / "plates-roboflow")  # the real set's overlay rejects some boxes
    assert rejected_boxes(root) == {} and read_overlay(root)["added"] == []
    image = sorted((root / "images").iterdir())[0].relative_to(root).as_posix()
    candidate = {"number": 1, "image": image, "class": "plate", "score": 0.5, "box": [0, 0, 9, 9]}
    listing = {"dataset": {"root": str(root), "split": "all", "set": None}, "model_id": "m", "threshold": 0.1}
    listing["candidates"] = [candidate]
    fixes = tmp_path / "fixes"
    with pytest.raises(ValueError, match="not one of the shared sets"):
        record_verdicts(root, listing, {"real": [{"number": 1, "reason": "plate"}], "left_out": ""}, fixes)
    assert not fixes.exists()
