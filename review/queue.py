"""The review queue: which blurred images to look at, each with its reasons.

- likely misses: proposals (found, not blurred) whose score is within `margin` under the threshold;
- likely false blurs: blurred boxes whose score is within `margin` over it;
- disagreement: proposals a verification stage rejected (stage other than "detector"), where the
  detector alone would have blurred them;
- the random slice: about `RANDOM_SLICE_FRACTION` of the images by a seeded hash of the key, whatever
  was found in them, so that the miss and false-blur rates measured on it hold for the whole output.
"""

from __future__ import annotations

from jobs.batch.verdicts import ImageState, in_random_slice
from video.config import is_video_key

NEAR_THRESHOLD = 0.15  # score margin around a class's threshold that puts a box in the queue
RANDOM_SLICE = "random slice"


def image_reasons(
    row: dict, thresholds: dict[str, float], seed: str, margin: float = NEAR_THRESHOLD
) -> list[str]:
    """Why `row`'s image is in the queue (empty: it is not)."""
    reasons = [RANDOM_SLICE] if in_random_slice(row["key"], seed) else []
    for proposal in row.get("proposals") or []:
        name, score, threshold = proposal["class"], proposal["score"], thresholds.get(proposal["class"], 1.0)
        if proposal["stage"] != "detector":
            reasons.append(f"disagreement: {proposal['stage']} rejected a {name} ({score:.2f})")
        elif score >= threshold - margin:
            reasons.append(f"likely miss: {name} {score:.2f} < {threshold:.2f}")
    for box in row["boxes"] or []:
        threshold = thresholds.get(box["class"], 0.0)
        if box["score"] < min(threshold + margin, 1.0):
            reasons.append(f"likely false blur: {box['class']} {box['score']:.2f} >= {threshold:.2f}")
    return reasons


def build_queue(
    rows: list[dict], thresholds_of, states: dict[str, ImageState], seed: str, margin: float = NEAR_THRESHOLD
) -> list[dict]:
    """The queue over the blurred photos of `rows`: `{key, reasons, random_slice, reviewed}` for each
    image with a reason, those not fully reviewed first, then the random slice, then by key.
    `thresholds_of(row)` gives a row's thresholds (its run's)."""
    queue = []
    for row in rows:
        if row["status"] != "blurred" or is_video_key(row["key"]):  # the page reviews photos
            continue
        reasons = image_reasons(row, thresholds_of(row), seed, margin)
        if reasons:
            state = states.get(row["key"], ImageState())
            queue.append(
                {
                    "key": row["key"],
                    "reasons": reasons,
                    "random_slice": reasons[0] == RANDOM_SLICE,
                    "reviewed": state.reviewed,
                }
            )
    queue.sort(key=lambda item: (item["reviewed"], not item["random_slice"], item["key"]))
    return queue
