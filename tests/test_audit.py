"""The label audit: unlabelled detections of a real set, listed and drawn on numbered contact sheets."""

from __future__ import annotations

import json

import cv2

from detection.detections import Detections
from eval.audit import SHEET_COLUMNS, SHEET_ROWS, TILE
from eval.datasets import load_split
from eval.metrics import overlaps_nothing
from jobs.cli import main
from tests.conftest import DATASETS


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
