"""The reviewers' verdicts: an append-only JSON Lines log, `OUTPUT/_streetblur/review/verdicts.jsonl`, and
the state of each image as a fold over it.

Each line is one entry: `at` (UTC, ISO 8601), `who`, `key` (the input key), `etag` (the input's version
the job read), `job_run` (for `reviewed`: the job run whose detections were reviewed), `output_key`,
`image_sha256` (of the published output the reviewer saw), `model_id`, `kind`, `class` and `box` (for
box verdicts), `reason` (the image's queue reasons) and `random_slice`. Kinds:

  add       a face or plate the reviewer drew (a miss)
  accept    a proposal the detector did not blur, accepted as real (a miss)
  false     a blurred box marked false (no face or plate there)
  reviewed  the image is fully reviewed: every face and plate in it is now blurred, and only those
  look      the reviewer looked at the original inside one box (logged, changes nothing)
  reblur    the image was re-rendered from its original (`review.reblur`): `old_sha256`, `new_sha256`,
            `old_boxes`, `new_boxes`, `run_id`, and the job's run and boxes it corrects (`job_run`,
            `job_boxes`)

An image's state (`fold`) holds only the entries of the input's version that its manifest row is of:
verdicts on a photo that has since been replaced at the same key do not carry over to the new one.

Appends are compare-and-swap writes of the whole log (`Storage.write_if`), so two reviewers never lose
each other's lines, on S3 as in a folder; lines are only ever added.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from jobs.batch.manifest import AUDIT_DIR, row_order
from storage.objects import ConditionFailed, NotFound, Storage

VERDICTS_KEY = f"{AUDIT_DIR}/review/verdicts.jsonl"
BOX_KINDS = ("add", "accept", "false")
KINDS = (*BOX_KINDS, "reviewed", "look", "reblur")
APPEND_RACES = 20  # lost compare-and-swap races before an append gives up
RANDOM_SLICE_FRACTION = 0.1


def box_id(record: dict) -> str:
    """The identity of a box record (`class`, `box`): its class and corners as float32 (as the manifest
    stores them) to 0.1 px, so a box read back from the manifest is the same box as the one written or
    sent by the browser."""
    return f"{record['class']}:" + ",".join(f"{float(np.float32(v)):.1f}" for v in record["box"])


def in_random_slice(key: str, seed: str, fraction: float = RANDOM_SLICE_FRACTION) -> bool:
    """Whether `key` is in the seeded random slice: a stable hash of seed and key, whatever the model
    found in the image, so the slice's figures estimate the whole output's."""
    digest = hashlib.sha256(f"{seed}\n{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def now_iso() -> str:
    """The current UTC time, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def append_verdicts(target: Storage, entries: list[dict]) -> None:
    """Append `entries` to the log, as one compare-and-swap write (retried when another reviewer's
    append came between)."""
    lines = b"".join(json.dumps(entry, sort_keys=True).encode() + b"\n" for entry in entries)
    for _ in range(APPEND_RACES):
        try:
            data, version = target.read_versioned(VERDICTS_KEY)
        except NotFound:
            data, version = b"", None
        try:
            target.write_if(VERDICTS_KEY, data + lines, version)
            return
        except ConditionFailed:
            continue
    raise RuntimeError(f"{target.uri}: could not append to {VERDICTS_KEY}: {APPEND_RACES} writers came first")


def read_verdicts(target: Storage) -> list[dict]:
    """Every entry of the log, oldest first (none if there is no log yet)."""
    try:
        data = target.read(VERDICTS_KEY)
    except NotFound:
        return []
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@dataclass
class ImageState:
    """What the log says of one image: its box verdicts in order, whether it is fully reviewed (as the
    job run its latest row holds left it: a job that redoes it needs a new look), how often its
    original was looked at, and its re-renders."""

    box_verdicts: list[dict] = field(default_factory=list)
    reviewed: bool = False
    looks: int = 0
    reblurs: list[dict] = field(default_factory=list)
    reviewed_runs: list[str | None] = field(default_factory=list)  # job runs marked fully reviewed

    def corrected(self, blurred: list[dict]) -> list[dict]:
        """The boxes to blur: `blurred` (the boxes blurred now) with this image's box verdicts applied in
        order (add and accept put a box in, false takes it out). Applying them again to their own
        result changes nothing, so `blurred` may be the job's boxes or those of an earlier re-render."""
        boxes = {box_id(b): _box_record(b) for b in blurred}
        for verdict in self.box_verdicts:
            if verdict["kind"] == "false":
                boxes.pop(box_id(verdict), None)
            else:
                boxes[box_id(verdict)] = _box_record(verdict)
        return list(boxes.values())

    def marked_false(self) -> set[str]:
        """The ids of the boxes whose latest box verdict is `false`."""
        latest = {box_id(v): v["kind"] for v in self.box_verdicts}
        return {box for box, kind in latest.items() if kind == "false"}

    def rerender(self, row: dict) -> dict | None:
        """The `reblur` entry of the re-render that wrote `row` (a manifest row of this image); None when
        a job wrote it."""
        return next((entry for entry in reversed(self.reblurs) if entry["run_id"] == row["run_id"]), None)

    def job_run(self, row: dict) -> str | None:
        """The job run whose detections `row` holds, corrected by re-renders or not (None for a
        re-render logged before `job_run` was)."""
        entry = self.rerender(row)
        return row["run_id"] if entry is None else entry.get("job_run")

    def job_boxes(self, row: dict) -> list[dict]:
        """The boxes the detector blurred in the image of `row`: the row's own when a job wrote it, but
        for those reviewers had put in (a job that redoes an image blurs them too, `reviewer_boxes`),
        else those its re-render carried over from the job's row."""
        entry = self.rerender(row)
        if entry is not None:
            return entry.get("job_boxes", self.reblurs[0]["old_boxes"])  # logs before job_boxes
        reviewers = {box_id(v) for v in self.box_verdicts if v["kind"] != "false"}
        return [b for b in row["boxes"] or [] if box_id(b) not in reviewers]

    def same_job(self, row: dict, shown: dict) -> bool:
        """Whether `row`, the image's latest manifest row, holds the detections of the same job run as
        `shown` (the row a page showed): the same row, or re-renders of the same job's row."""
        if row_order(row) == row_order(shown):
            return True
        run = self.job_run(row)
        return run is not None and run == self.job_run(shown)


def fold(entries: list[dict], rows: dict[str, dict]) -> dict[str, ImageState]:
    """The state of every image of `rows` (latest manifest rows by input key) that the log names, from
    the entries of the input version the row is of (entries without an `etag` predate it: they count)."""
    states: dict[str, ImageState] = {}
    for entry in entries:
        row = rows.get(entry["key"])
        if row is None or entry.get("etag", row["etag"]) != row["etag"]:
            continue
        state = states.setdefault(entry["key"], ImageState())
        kind = entry["kind"]
        if kind in BOX_KINDS:
            state.box_verdicts.append(entry)
        elif kind == "reviewed":
            state.reviewed_runs.append(entry.get("job_run"))  # None: logged before `job_run` was
        elif kind == "look":
            state.looks += 1
        elif kind == "reblur":
            state.reblurs.append(entry)
    for key, state in states.items():
        run = state.job_run(rows[key])
        state.reviewed = any(marked is None or marked == run for marked in state.reviewed_runs)
    return states


def reviewer_boxes(target: Storage) -> dict[str, list[dict]]:
    """The boxes reviewers put in each image of the output `target` (drawn, or proposals accepted) that
    no later verdict marked false, by input key: a job that redoes the image blurs them too, whichever
    version of the input they were given on (privacy first: a photo replaced at the same key is
    blurred there too, rather than a touched or re-copied one losing them)."""
    states: dict[str, ImageState] = {}
    for entry in read_verdicts(target):
        if entry["kind"] in BOX_KINDS:
            states.setdefault(entry["key"], ImageState()).box_verdicts.append(entry)
    return {key: boxes for key, state in states.items() if (boxes := state.corrected([]))}


def _box_record(record: dict) -> dict:
    """`class`, `score` (1.0 for a drawn box) and `box` of a manifest box or a verdict."""
    score = record.get("score")
    return {
        "class": record["class"],
        "score": 1.0 if score is None else round(float(score), 4),
        "box": [round(float(v), 2) for v in record["box"]],
    }
