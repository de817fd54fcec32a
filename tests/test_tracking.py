"""Linking detections into tracks and filling the frames the detector missed."""

from __future__ import annotations

import numpy as np

from detection.detections import CLASS_NAMES, Detections
from detection.tracking import filled_boxes, link_tracks, tracked_boxes

FACE, PLATE = CLASS_NAMES.index("face"), CLASS_NAMES.index("plate")


def _frames(boxes_per_frame: list[list[tuple[list[float], int]]]) -> list[Detections]:
    return [
        Detections([b for b, _ in boxes], np.full(len(boxes), 0.9), [c for _, c in boxes])
        for boxes in boxes_per_frame
    ]


def _added_at(added, frame: int) -> np.ndarray:
    return np.array([d.xyxy[0] for f, _, d in added if f == frame]).reshape(-1, 4)


def test_a_gap_is_filled_by_interpolation_in_time_at_a_variable_rate():
    # A face moving right 10 px per 40 ms; missed in frames 2 and 3, whose times are uneven.
    times = np.array([0.0, 0.04, 0.05, 0.12, 0.16])
    frames = [[([100 + 250 * t, 50, 140 + 250 * t, 90], FACE)] for t in times]
    frames[2] = frames[3] = []
    tracks = link_tracks(_frames(frames), times, max_gap_s=0.5)
    assert len(tracks) == 1 and tracks[0].frames == [0, 1, 4]
    added = filled_boxes(tracks, times, max_gap_s=0.5, pad_frames=0)
    assert sorted(f for f, _, _ in added) == [2, 3]
    for frame in (2, 3):
        x = 100 + 250 * times[frame]
        np.testing.assert_allclose(_added_at(added, frame), [[x, 50, x + 40, 90]], atol=1e-3)


def test_a_gap_longer_than_the_limit_is_not_filled():
    times = np.arange(12) * 0.1
    frames = [[([100, 50, 140, 90], FACE)] if i in (0, 1, 10, 11) else [] for i in range(12)]
    tracks = link_tracks(_frames(frames), times, max_gap_s=0.5)
    assert len(tracks) == 2
    added = filled_boxes(tracks, times, max_gap_s=0.5, pad_frames=0)
    assert added == []


def test_a_small_fast_plate_is_linked_although_its_boxes_never_overlap():
    # A 20 px plate moving 30 px per frame: no overlap between consecutive boxes.
    times = np.arange(8) / 25
    frames = [[([30 * i, 200, 30 * i + 20, 210], PLATE)] if i not in (3, 4) else [] for i in range(8)]
    tracks = link_tracks(_frames(frames), times, max_gap_s=0.5)
    assert [t.frames for t in tracks] == [[0, 1, 2, 5, 6, 7]]
    added = filled_boxes(tracks, times, max_gap_s=0.5, pad_frames=0)
    np.testing.assert_allclose(_added_at(added, 3), [[90, 200, 110, 210]], atol=1e-3)


def test_classes_and_distant_objects_stay_apart_and_every_detection_is_in_one_track():
    times = np.arange(6) / 25
    frames = [
        [([100, 100, 140, 140], FACE), ([100, 100, 140, 120], PLATE), ([500, 300, 540, 340], FACE)]
        for _ in times
    ]
    dets = _frames(frames)
    tracks = link_tracks(dets, times, max_gap_s=0.5)
    assert len(tracks) == 3
    held = sorted((f, i) for t in tracks for f, i in zip(t.frames, t.det_index, strict=True))
    assert held == [(f, i) for f in range(6) for i in range(3)]
    assert {t.class_id for t in tracks} == {FACE, PLATE}


def test_padding_covers_frames_before_and_after_a_track_moving_on():
    times = np.arange(10) / 25
    frames = [[([10 * i, 50, 10 * i + 40, 90], FACE)] if 3 <= i <= 6 else [] for i in range(10)]
    tracks = link_tracks(_frames(frames), times, max_gap_s=0.5)
    added = filled_boxes(tracks, times, max_gap_s=0.5, pad_frames=2)
    assert sorted(f for f, _, _ in added) == [1, 2, 7, 8]
    # After the end: the last box joined with where the face has moved on to.
    np.testing.assert_allclose(_added_at(added, 8), [[60, 50, 120, 90]], atol=1e-3)
    np.testing.assert_allclose(_added_at(added, 1), [[10, 50, 70, 90]], atol=1e-3)


def test_fragments_are_joined_backward_from_the_later_track():
    # A face accelerating: the forward prediction from a slow start misses where it reappears, the
    # later fragment's own velocity, run backward, meets the earlier end.
    times = np.arange(12) / 25
    xs = [100, 101, 102, None, None, None, 190, 215, 240, 265, 290, 315]
    frames = [[([x, 50, x + 20, 70], FACE)] if x is not None else [] for x in xs]
    tracks = link_tracks(_frames(frames), times, max_gap_s=0.5, max_distance=1.5)
    assert len(tracks) == 1
    assert tracks[0].frames == [0, 1, 2, 6, 7, 8, 9, 10, 11]


def _sure_face_among_proposals() -> tuple[np.ndarray, list[Detections], list[np.ndarray]]:
    """A face moving right over 10 frames (missed in frame 5) whose box blurs on its own in frame 3
    only, the rest proposals; and far from it, a face of proposals alone."""
    times = np.arange(10) / 25
    frames = [
        [([100 + 5 * i, 50, 140 + 5 * i, 90], FACE), ([500, 300, 540, 340], FACE)] if i != 5 else []
        for i in range(10)
    ]
    blurs = [np.array([i == 3, False]) if i != 5 else np.zeros(0, bool) for i in range(10)]
    return times, _frames(frames), blurs


def test_a_track_of_proposals_joined_to_a_box_that_blurs_blurs_whole():
    times, dets, blurs = _sure_face_among_proposals()
    tracked = tracked_boxes(
        dets, blurs, times, tracking=True, track_verdict=True, max_gap_s=0.5, pad_frames=0
    )
    assert tracked.tracks == 1 and tracked.by_verdict == 8  # the moving face's 8 proposals
    for frame in range(10):
        if frame != 5:
            assert tracked.blurred[frame].tolist() == [True, False]  # the far face's proposals stay
            assert tracked.track_of[frame].tolist() == [0, -1]
    assert [f for f, _, _ in tracked.added] == [5]  # the gap is filled between two proposals
    np.testing.assert_allclose(_added_at(tracked.added, 5), [[125, 50, 165, 90]], atol=1e-3)


def test_a_track_of_proposals_alone_adds_nothing():
    times, dets, _ = _sure_face_among_proposals()
    blurs = [np.zeros(len(d), bool) for d in dets]
    tracked = tracked_boxes(
        dets, blurs, times, tracking=True, track_verdict=True, max_gap_s=0.5, pad_frames=3
    )
    assert tracked.tracks == 0 and tracked.added == [] and tracked.by_verdict == 0
    assert not any(b.any() for b in tracked.blurred)
    assert all((t == -1).all() for t in tracked.track_of)
    empty = [Detections() for _ in times]  # and a video without a box
    none = tracked_boxes(
        empty, blurs[5:6] * 10, times, tracking=True, track_verdict=True, max_gap_s=0.5, pad_frames=3
    )
    assert none.tracks == 0 and none.added == [] and not any(len(b) for b in none.blurred)


def test_without_verdicts_or_tracking_the_boxes_that_blur_on_their_own_are_todays():
    times, dets, blurs = _sure_face_among_proposals()
    off = tracked_boxes(dets, blurs, times, tracking=False, track_verdict=True, max_gap_s=0.5, pad_frames=3)
    assert [b.tolist() for b in off.blurred] == [b.tolist() for b in blurs]
    assert off.added == [] and off.tracks == 0 and all((t == -1).all() for t in off.track_of)
    plain = tracked_boxes(dets, blurs, times, tracking=True, track_verdict=False, max_gap_s=0.5, pad_frames=2)
    assert [b.tolist() for b in plain.blurred] == [b.tolist() for b in blurs] and plain.by_verdict == 0
    # Linked as if the proposals were not there: the one box, padded by 2 frames on either side
    alone = [d[b] for d, b in zip(dets, blurs, strict=True)]
    expected = filled_boxes(link_tracks(alone, times, 0.5), times, 0.5, 2)
    assert [(f, t) for f, t, _ in plain.added] == [(f, t) for f, t, _ in expected] != []
    assert plain.track_of[3].tolist() == [0, -1]
