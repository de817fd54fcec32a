"""Per-frame detections on disk: pass 1's Parquet parts (a killed run resumes after the last whole
part) and the audit file of every box blurred: detected, blurred by its track's verdict, or added by
a track."""

from __future__ import annotations

import io
import json
import shutil
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from detection.detections import CLASS_NAMES, Detections
from detection.tracking import TrackedBoxes
from storage.files import write_file_atomically

PART_FRAMES = 200  # frames per Parquet part: what a killed run loses at most

PART_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("pts", pa.int64()),
        ("time_s", pa.float64()),
        ("xyxy", pa.list_(pa.float32())),  # 4 numbers per box
        ("scores", pa.list_(pa.float32())),
        ("class_id", pa.list_(pa.int8())),
        ("blurs", pa.list_(pa.bool_())),  # per box: blurs on its own (else a proposal that does not)
        ("checksum", pa.int64()),  # CRC-32 of the decoded frame's luma: pass 2 checks it decodes the same
    ]
)

AUDIT_SCHEMA = pa.schema(
    [
        ("frame", pa.int64()),
        ("time_s", pa.float64()),
        ("class", pa.string()),
        ("score", pa.float32()),
        ("x1", pa.float32()),
        ("y1", pa.float32()),
        ("x2", pa.float32()),
        ("y2", pa.float32()),
        ("track", pa.int64()),  # null: a detection no track holds (tracking off)
        # "detector": blurs on its own; "track-verdict": a proposal blurred because its track holds a
        # box that blurs on its own; "track": a box a track added (gap fill or padding)
        ("source", pa.string()),
    ]
)


@dataclass
class DetectedFrames:
    """Pass 1's record of a video, or of a chunk of one, frame by frame in presentation order: every box
    above the proposal thresholds (`frames`), whether each blurs on its own (`blurs`), the frame's `pts`
    and time in seconds, and the `checksums` of its decoded pixels (`frame_checksum`)."""

    frames: list[Detections] = field(default_factory=list)
    blurs: list[np.ndarray] = field(default_factory=list)
    pts: list[int | None] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    checksums: list[int] = field(default_factory=list)

    def append(
        self, pts: int | None, time_s: float, detections: Detections, blurs: np.ndarray, checksum: int
    ) -> None:
        """The next frame."""
        if len(blurs) != len(detections):
            raise ValueError(f"{len(detections)} boxes but {len(blurs)} blur flags")
        self.frames.append(detections)
        self.blurs.append(np.asarray(blurs, bool))
        self.pts.append(pts)
        self.times.append(time_s)
        self.checksums.append(checksum)

    def extend(self, later: DetectedFrames) -> None:
        """The frames of `later` (the next chunk) after these."""
        for name in ("frames", "blurs", "pts", "times", "checksums"):
            getattr(self, name).extend(getattr(later, name))


def frame_checksum(luma: np.ndarray) -> int:
    """CRC-32 of a frame's decoded luma plane (8-bit, rows without padding)."""
    return zlib.crc32(np.ascontiguousarray(luma))


class DetectionParts(DetectedFrames):
    """Pass 1's `DetectedFrames` kept in `folder`, one Parquet part per `PART_FRAMES` frames, each
    written whole.

    `key` names the input and the settings the detections depend on; parts written under another key
    or another `PART_SCHEMA` are removed on opening, so a resumed run never reuses another input's or
    model's boxes, nor parts of an older layout.
    """

    def __init__(self, folder: Path, key: str) -> None:
        super().__init__()
        self.folder = folder
        key_file = folder / "key.json"
        stored = [key, PART_SCHEMA.names]
        if folder.exists() and (not key_file.exists() or json.loads(key_file.read_text()) != stored):
            shutil.rmtree(folder)
        if not folder.exists():
            folder.mkdir(parents=True)
            write_file_atomically(key_file, json.dumps(stored).encode())
        for part in sorted(folder.glob("part-*.parquet")):
            table = pq.read_table(part, schema=PART_SCHEMA)
            if table["frame"][0].as_py() != len(self.frames):  # a gap: keep what is contiguous
                break
            for row in table.to_pylist():
                blurs = np.array(row["blurs"], bool)
                super().append(row["pts"], row["time_s"], _detections(row), blurs, row["checksum"])
        self._written = len(self.frames)

    def append(
        self, pts: int | None, time_s: float, detections: Detections, blurs: np.ndarray, checksum: int
    ) -> None:
        """The next frame; a part is written every `PART_FRAMES` frames."""
        super().append(pts, time_s, detections, blurs, checksum)
        if len(self.frames) - self._written >= PART_FRAMES:
            self.flush()

    def flush(self) -> None:
        """Write the frames added since the last part."""
        start = self._written
        if start == len(self.frames):
            return
        table = pa.table(
            {
                "frame": list(range(start, len(self.frames))),
                "pts": self.pts[start:],
                "time_s": self.times[start:],
                "xyxy": [d.xyxy.reshape(-1).tolist() for d in self.frames[start:]],
                "scores": [d.scores.tolist() for d in self.frames[start:]],
                "class_id": [d.class_id.tolist() for d in self.frames[start:]],
                "blurs": [b.tolist() for b in self.blurs[start:]],
                "checksum": self.checksums[start:],
            },
            schema=PART_SCHEMA,
        )
        write_file_atomically(self.folder / f"part-{start:09d}.parquet", _parquet_bytes(table))
        self._written = len(self.frames)

    def remove(self) -> None:
        """Delete the parts (once the video is published and its audit file written)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def write_audit(
    path: Path,
    frames: Sequence[Detections],
    times: Sequence[float],
    blurs: Sequence[np.ndarray],
    tracked: TrackedBoxes,
    metadata: dict[str, str],
) -> None:
    """One row per box blurred, with `metadata` in the file: each frame's stored boxes that `tracked`
    blurs (source "detector" where `blurs` says it blurs on its own, else "track-verdict"), with their
    track numbers, and the boxes tracks added (source "track")."""
    rows = []
    for frame, (dets, own, blurred, tracks) in enumerate(
        zip(frames, blurs, tracked.blurred, tracked.track_of, strict=True)
    ):
        for i in np.flatnonzero(blurred):
            rows.append((frame, dets[i : i + 1], int(tracks[i]), "detector" if own[i] else "track-verdict"))
    rows += [(frame, dets, track, "track") for frame, track, dets in tracked.added]
    rows.sort(key=lambda row: (row[0], row[3]))
    columns: dict[str, list] = {name: [] for name in AUDIT_SCHEMA.names}
    for frame, dets, track, source in rows:
        x1, y1, x2, y2 = (float(v) for v in dets.xyxy[0])
        values = (frame, times[frame], CLASS_NAMES[int(dets.class_id[0])], float(dets.scores[0]))
        values += (x1, y1, x2, y2, track if track >= 0 else None, source)
        for name, value in zip(AUDIT_SCHEMA.names, values, strict=True):
            columns[name].append(value)
    table = pa.table(columns, schema=AUDIT_SCHEMA).replace_schema_metadata(metadata)
    write_file_atomically(path, _parquet_bytes(table))


def _detections(row: dict) -> Detections:
    return Detections(np.array(row["xyxy"], np.float32).reshape(-1, 4), row["scores"], row["class_id"])


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()
