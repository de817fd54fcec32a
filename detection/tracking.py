"""Tracks: one object's boxes across the frames of a video, linked from per-frame detections, and the
boxes that cover the frames where the detector missed it.

Linking runs offline, on every frame's detections at once. A forward pass joins each frame's boxes to
the open tracks of their class (Hungarian assignment on overlap with each track's box moved on by its
velocity, or on centre distance for small, fast objects whose boxes no longer overlap from one frame
to the next). A backward pass then joins fragments that the forward pass left apart: a track's start,
moved back in time by its own velocity, against an earlier track's end moved forward. Gaps are filled
by interpolating between the boxes on both sides (in time, from the frames' timestamps, so variable
frame rates fill correctly), and each track is padded by a few frames at both ends. Linking only adds
boxes: every detection is still blurred.

`tracked_boxes` decides what a video blurs. The detector's proposals that do not blur on their own
(below the sure threshold, or rejected by the verifier) are linked too, and the verdict is per track
(`track_verdict`): a track blurs whole (every box, its gap fills and padding) when at least one of its
boxes blurs on its own; a track of proposals alone blurs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment

from detection.detections import Detections, box_areas, pairwise_iou

_NO_LINK = 1e6  # assignment cost of a pair outside the gates


@dataclass
class Track:
    """One object's detections: `frames` (increasing frame indices), and per frame its box `xyxy`,
    `scores` and `det_index` (the box's position in that frame's `Detections`)."""

    class_id: int
    frames: list[int] = field(default_factory=list)
    xyxy: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    det_index: list[int] = field(default_factory=list)

    def velocity(self, times: np.ndarray, at_end: bool = True) -> np.ndarray:
        """Box corner velocity (pixels per second) over its last (or first) two detections; zero for one."""
        if len(self.frames) < 2:
            return np.zeros(4, np.float32)
        a, b = (-2, -1) if at_end else (0, 1)
        dt = float(times[self.frames[b]] - times[self.frames[a]])
        return (self.xyxy[b] - self.xyxy[a]) / dt if dt > 0 else np.zeros(4, np.float32)

    def box_at(self, time: float, times: np.ndarray, from_end: bool = True) -> np.ndarray:
        """Its end (or start) box moved at its velocity to `time` (before its start, for the start)."""
        end = -1 if from_end else 0
        return self.xyxy[end] + self.velocity(times, from_end) * (time - float(times[self.frames[end]]))


def link_tracks(
    per_frame: Sequence[Detections],
    times: np.ndarray,
    max_gap_s: float,
    min_iou: float = 0.1,
    max_distance: float = 2.0,
) -> list[Track]:
    """Every detection of `per_frame` (frame by frame, timestamps `times` in seconds) in exactly one
    track. Tracks are closed once `max_gap_s` passes without a detection of them."""
    open_tracks: list[Track] = []
    closed: list[Track] = []
    for frame, dets in enumerate(per_frame):
        now = float(times[frame])
        still_open = []
        for track in open_tracks:
            (still_open if now - float(times[track.frames[-1]]) <= max_gap_s else closed).append(track)
        open_tracks = still_open
        for class_id in np.unique(dets.class_id):
            indices = np.flatnonzero(dets.class_id == class_id)
            candidates = [t for t in open_tracks if t.class_id == class_id and t.frames[-1] < frame]
            predicted = np.array([t.box_at(now, times) for t in candidates], np.float32).reshape(-1, 4)
            cost = _link_cost(predicted, dets.xyxy[indices], min_iou, max_distance)
            joined = set()
            for row, col in zip(*linear_sum_assignment(cost), strict=True):
                if cost[row, col] < _NO_LINK:
                    _extend(candidates[row], frame, dets, int(indices[col]))
                    joined.add(col)
            for col in set(range(len(indices))) - joined:
                track = Track(int(class_id))
                _extend(track, frame, dets, int(indices[col]))
                open_tracks.append(track)
    return _join_fragments(closed + open_tracks, times, max_gap_s, min_iou, max_distance)


@dataclass
class TrackedBoxes:
    """What a video blurs of its stored boxes. Per frame and stored box: `blurred` (on its own, or by
    its track's verdict) and `track_of` (the number of the track that blurs it, -1 for none); `added`,
    the boxes those tracks add (`filled_boxes`); `tracks`, how many tracks blur; `by_verdict`, how
    many proposals blur only because of their track."""

    blurred: list[np.ndarray]
    track_of: list[np.ndarray]
    added: list[tuple[int, int, Detections]]
    tracks: int
    by_verdict: int


def tracked_boxes(
    per_frame: Sequence[Detections],
    blurs: Sequence[np.ndarray],
    times: np.ndarray,
    *,
    tracking: bool,
    track_verdict: bool,
    max_gap_s: float,
    pad_frames: int,
    min_iou: float = 0.1,
    max_distance: float = 2.0,
) -> TrackedBoxes:
    """Which of `per_frame`'s boxes blur (`blurs`: per box, whether it blurs on its own) and what tracks
    add. Tracking off: the boxes that blur on their own, nothing added. Tracking on: with
    `track_verdict`, every box is linked (`link_tracks`) and the tracks holding at least one box that
    blurs on its own blur whole, the others nothing; without it, only the boxes that blur on their own
    are linked. Either way, every box that blurs on its own blurs: linking only adds."""
    track_of = [np.full(len(d), -1) for d in per_frame]
    if not tracking:
        return TrackedBoxes([np.asarray(b, bool).copy() for b in blurs], track_of, [], 0, 0)
    linked = [
        np.arange(len(d)) if track_verdict else np.flatnonzero(b)
        for d, b in zip(per_frame, blurs, strict=True)
    ]
    kept = []
    for track in link_tracks(
        [d[i] for d, i in zip(per_frame, linked, strict=True)], times, max_gap_s, min_iou, max_distance
    ):
        track.det_index = [int(linked[f][i]) for f, i in zip(track.frames, track.det_index, strict=True)]
        if any(blurs[f][i] for f, i in zip(track.frames, track.det_index, strict=True)):
            kept.append(track)
    for number, track in enumerate(kept):
        for frame, index in zip(track.frames, track.det_index, strict=True):
            track_of[frame][index] = number
    blurred = [np.asarray(b, bool) | (t >= 0) for b, t in zip(blurs, track_of, strict=True)]
    by_verdict = sum(
        int((now & ~np.asarray(own, bool)).sum()) for now, own in zip(blurred, blurs, strict=True)
    )
    return TrackedBoxes(
        blurred, track_of, filled_boxes(kept, times, max_gap_s, pad_frames), len(kept), by_verdict
    )


def _extend(track: Track, frame: int, dets: Detections, index: int) -> None:
    track.frames.append(frame)
    track.xyxy.append(dets.xyxy[index].copy())
    track.scores.append(float(dets.scores[index]))
    track.det_index.append(index)


def _join_fragments(
    tracks: list[Track], times: np.ndarray, max_gap_s: float, min_iou: float, max_distance: float
) -> list[Track]:
    """Tracks with fragments of one object joined: the later one's start moved back (its own velocity)
    must meet the earlier one's end moved forward, within `max_gap_s`. Closest gaps first. Each later
    track is weighed against every earlier end at once (tracks of proposals make thousands of tracks)."""
    classes = np.array([t.class_id for t in tracks], np.int64)
    last = np.array([t.frames[-1] for t in tracks], np.int64)
    t_last = np.asarray(times, np.float64)[last]
    end_box = np.array([t.xyxy[-1] for t in tracks], np.float32).reshape(-1, 4)
    end_velocity = np.array([t.velocity(times) for t in tracks], np.float32).reshape(-1, 4)
    pairs = []
    for j, late in enumerate(tracks):
        t_start = float(times[late.frames[0]])
        early = np.flatnonzero(
            (classes == late.class_id) & (last < late.frames[0]) & (t_start - t_last <= max_gap_s)
        )
        if not len(early):
            continue
        gaps = t_start - t_last[early]
        # As `Track.box_at`: the end moved on to the later start, the start moved back to each end
        forward = end_box[early] + end_velocity[early] * gaps.astype(np.float32)[:, None]
        backward = late.xyxy[0] + late.velocity(times, False) * (-gaps).astype(np.float32)[:, None]
        cost = np.minimum(
            _link_cost(forward, late.xyxy[0][None], min_iou, max_distance)[:, 0],
            np.diagonal(_link_cost(backward, end_box[early], min_iou, max_distance)),
        )
        pairs += [(gaps[k], cost[k], int(i), j) for k, i in enumerate(early) if cost[k] < _NO_LINK]
    merged_into = list(range(len(tracks)))  # each track's head, after joins
    has_next, has_prev = set(), set()
    for _, _, i, j in sorted(pairs):
        if i in has_next or j in has_prev:
            continue
        has_next.add(i)
        has_prev.add(j)
        merged_into[j] = i

    def head(k: int) -> int:
        while merged_into[k] != k:
            k = merged_into[k]
        return k

    joined: dict[int, Track] = {}
    for k in sorted(range(len(tracks)), key=lambda k: tracks[k].frames[0]):
        target = joined.setdefault(head(k), Track(tracks[k].class_id))
        for name in ("frames", "xyxy", "scores", "det_index"):
            getattr(target, name).extend(getattr(tracks[k], name))
    return sorted(joined.values(), key=lambda t: t.frames[0])


def _link_cost(predicted: np.ndarray, boxes: np.ndarray, min_iou: float, max_distance: float) -> np.ndarray:
    """(P, B) costs: 1 - IoU where the IoU reaches `min_iou`; else 1 + the centre distance in units of
    `max_distance` times the larger box's larger side, for boxes of similar size (within 2x) that close;
    `_NO_LINK` otherwise."""
    cost = np.full((len(predicted), len(boxes)), _NO_LINK)
    if not len(predicted) or not len(boxes):
        return cost
    p, b = predicted[:, None, :], boxes[None, :, :]
    area_p, area_b = box_areas(predicted)[:, None], box_areas(boxes)[None, :]
    iou = pairwise_iou(predicted, boxes)
    size = np.maximum((p[..., 2:] - p[..., :2]).max(-1), (b[..., 2:] - b[..., :2]).max(-1))
    distance = np.linalg.norm((p[..., :2] + p[..., 2:]) / 2 - (b[..., :2] + b[..., 2:]) / 2, axis=-1)
    ratio = np.maximum(area_p, 1e-9) / np.maximum(area_b, 1e-9)
    near = (distance <= max_distance * size) & (ratio >= 0.25) & (ratio <= 4)
    cost[near] = 1 + distance[near] / np.maximum(max_distance * size[near], 1e-9)
    cost[iou >= min_iou] = 1 - iou[iou >= min_iou]
    return cost


def filled_boxes(
    tracks: Sequence[Track], times: np.ndarray, max_gap_s: float, pad_frames: int
) -> list[tuple[int, int, Detections]]:
    """Boxes the tracks add: `(frame, track number, boxes)` for each frame inside a gap of at most
    `max_gap_s` (interpolated in time between the detections on both sides) and each of the
    `pad_frames` frames before a track's start and after its end (its end box, joined with that box
    moved on at the track's velocity). Scores are the lower of the two boxes they come from."""
    added: list[tuple[int, int, Detections]] = []
    n_frames = len(times)
    for number, track in enumerate(tracks):
        cls = [track.class_id]
        for (fa, ba, sa), (fb, bb, sb) in zip(
            zip(track.frames, track.xyxy, track.scores, strict=True),
            zip(track.frames[1:], track.xyxy[1:], track.scores[1:], strict=True),
            strict=False,
        ):
            ta, tb = float(times[fa]), float(times[fb])
            if fb - fa < 2 or tb - ta > max_gap_s:
                continue
            for frame in range(fa + 1, fb):
                w = (float(times[frame]) - ta) / (tb - ta) if tb > ta else 0.5
                added.append((frame, number, Detections([(1 - w) * ba + w * bb], [min(sa, sb)], cls)))
        for step in range(1, pad_frames + 1):
            for frame, from_end in ((track.frames[0] - step, False), (track.frames[-1] + step, True)):
                if 0 <= frame < n_frames:
                    end = -1 if from_end else 0
                    moved = track.box_at(float(times[frame]), times, from_end)
                    box = np.concatenate(
                        [
                            np.minimum(track.xyxy[end][:2], moved[:2]),
                            np.maximum(track.xyxy[end][2:], moved[2:]),
                        ]
                    )
                    added.append((frame, number, Detections([box], [track.scores[end]], cls)))
    return added
