"""The batch job's videos, cut into chunks that several detector actors detect at once.

The read stage turns a video into `chunk_count` rows, one per `video.pipeline.Chunk` (equal stretches of
its duration, decoded from the keyframe before each). An actor given a chunk row runs pass 1 on it and
stores the chunk's boxes under the output's audit folder (`chunks_prefix`), then reports it to the
job's `ChunkTally` (every chunk reports, detected or failed with its reason). The actor whose report
completes the video gathers every chunk's boxes, links them into tracks and blurs, encodes and writes
the whole video (`video.pipeline.finish_video`, which checks every frame's pixels against pass 1's):
one encoder for the whole file, so chunks never show as seams. Only that actor returns the video's
manifest row. A chunk whose boxes are stored already (a run killed midway, with the same input and
detection settings) is not detected again; the driver removes a video's stored chunks once its row
is in (`remove_chunks`), so a retried batch still finds them and a failed video starts afresh.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path, PurePosixPath

from blurring.config import Config, settings_digest
from detection.detector import Detector
from jobs.batch.manifest import AUDIT_DIR
from storage.objects import NotFound, Storage
from video.pipeline import Chunk, VideoOutcome, detect_frames, detection_digest, finish_video, new_timings
from video.store import DetectedFrames, DetectionParts

DONE_FILE = "done.json"  # written last in a chunk's folder: its boxes are stored whole


def detections_key(key: str) -> str:
    """Where the boxes of the video `key` are kept: under the audit folder, beside the manifest."""
    return f"{AUDIT_DIR}/videos/{key}.detections.parquet"


def chunk_count(size: int, chunk_bytes: int, batch_size: int) -> int:
    """How many chunks a video of `size` bytes is cut into: `batch_size` (the rows an actor is handed
    at once, so that whole batches of chunks go to different actors) per started `chunk_bytes` of it;
    1 when `chunk_bytes` is 0 (one actor per video)."""
    if chunk_bytes <= 0:
        return 1
    return batch_size * max(1, math.ceil(size / chunk_bytes))


def chunks_folder(key: str) -> str:
    """Where the stored chunks of the video `key` are kept, whatever its version and settings."""
    return f"{AUDIT_DIR}/video-chunks/{key}/"


def remove_chunks(target: Storage, key: str) -> None:
    """Delete every stored chunk of the video `key` (its row is in: blurred, or failed)."""
    for item in target.list(under=chunks_folder(key)):
        target.delete(item.key)


def chunks_prefix(key: str, etag: str, detector: Detector, config: Config) -> str:
    """The folder of the video `key`'s stored chunks: by input version and detection settings, so a
    chunk is reused only for the same input detected the same way."""
    digest = settings_digest({"etag": etag, "detection": detection_digest(detector, config)})
    return f"{chunks_folder(key)}{digest}/"


class ChunkTally:
    """The chunks of each video reported done (one Ray actor per job). The report that completes a
    video names its reporter the one to finish it."""

    def __init__(self) -> None:
        self.reports: dict[str, dict[int, str]] = {}
        self.finisher: dict[str, int] = {}

    def report(self, video: str, chunk: Chunk, error: str) -> list[str] | None:
        """Record `chunk` of `video` as detected (`error` empty) or failed. The errors of every chunk
        when this report completes the video, or repeats the one that did (a batch Ray retried); else
        None."""
        reports = self.reports.setdefault(video, {})
        reports[chunk.index] = error
        if len(reports) < chunk.count or self.finisher.setdefault(video, chunk.index) != chunk.index:
            return None
        return [reports[i] for i in sorted(reports) if reports[i]]


class VideoChunks:
    """An actor's side of the job's videos: detects chunks, and finishes the videos it completes.

    Keeps the last video it fetched from S3 on its own disk, as the next chunk it gets is likely of the
    same video; a local input is read in place.
    """

    def __init__(self, source: Storage, target: Storage, detector: Detector, config: Config, tally) -> None:
        self.source, self.target = source, target
        self.detector, self.config, self.tally = detector, config, tally
        self._scratch = tempfile.TemporaryDirectory(prefix="streetblur-video-")
        self._fetched: tuple[str, str] | None = None  # (key, etag) of the copy in scratch

    def blur_chunk(self, key: str, etag: str, chunk: Chunk) -> VideoOutcome | None:
        """Detect `chunk` of the video `key` (unless stored already) and report it. When this report
        completes the video: blur and write it whole, and return its outcome; else None."""
        prefix = chunks_prefix(key, etag, self.detector, self.config)
        folder = _chunk_folder(prefix, chunk)
        try:
            self.target.stat(folder + DONE_FILE)
            error = ""
        except NotFound:
            error = self._detect(key, etag, chunk, folder)
        except Exception as failure:  # noqa: BLE001 -- reported: the video fails closed, with its reason
            error = f"reading its stored chunk failed: {type(failure).__name__}: {failure}"
        errors = self._report(f"{key}@{prefix}", chunk, error)
        if errors is None:
            return None
        if errors:
            return VideoOutcome("failed", error="; ".join(dict.fromkeys(errors)))
        return self._finish(key, etag, chunk.count, prefix)

    def _report(self, video: str, chunk: Chunk, error: str) -> list[str] | None:
        if chunk.count == 1:
            return [error] if error else []
        import ray

        return ray.get(self.tally.report.remote(video, chunk, error))

    def _detect(self, key: str, etag: str, chunk: Chunk, folder: str) -> str:
        """Pass 1 on `chunk`, its boxes stored under `folder`; the reason it failed, or ''."""
        try:
            with tempfile.TemporaryDirectory(dir=self._scratch.name) as work:
                timings = new_timings()
                parts = DetectionParts(Path(work) / "parts", folder)
                detect_frames(self._local(key, etag), parts, self.detector, chunk, timings)
                for path in sorted(parts.folder.iterdir()):
                    self.target.upload(path, folder + path.name)
                done = {"frames": len(parts.frames), "timings_s": timings}
                self.target.write(folder + DONE_FILE, json.dumps(done).encode())
        except Exception as error:  # noqa: BLE001 -- the video fails closed, with its reason
            return f"detection failed: {type(error).__name__}: {error}"
        return ""

    def _finish(self, key: str, etag: str, count: int, prefix: str) -> VideoOutcome:
        """Join the stored chunks of the video, blur and write it whole."""
        start = time.perf_counter()
        detected = DetectedFrames()
        timings = new_timings()
        suffix = PurePosixPath(key).suffix.lower()
        with tempfile.TemporaryDirectory(dir=self._scratch.name) as work:
            folder = Path(work)
            try:
                stored = sorted(item.key for item in self.target.list(under=prefix))
                for index in range(count):
                    name = _chunk_folder(prefix, Chunk(index, count))
                    local = folder / f"chunk-{index:05d}"
                    local.mkdir()
                    for item in (k for k in stored if k.startswith(name)):
                        self.target.download(item, local / PurePosixPath(item).name)
                    done = json.loads((local / DONE_FILE).read_text())
                    for stage, seconds in done["timings_s"].items():
                        timings[stage] += seconds
                    parts = DetectionParts(local, name)
                    if len(parts.frames) != done["frames"]:  # parts of another layout, or not all there
                        raise ValueError(
                            f"chunk {index} holds {len(parts.frames)} of its {done['frames']} frames"
                        )
                    detected.extend(parts)
                source = self._local(key, etag)
            except Exception as error:  # noqa: BLE001 -- the video fails closed, with its reason
                return VideoOutcome(
                    "failed", error=f"reading its chunks failed: {type(error).__name__}: {error}"
                )
            timings["decode"] += time.perf_counter() - start  # reading the chunks back
            output, audit = folder / f"output{suffix}", folder / "detections.parquet"
            model = self.detector.model_id
            outcome = finish_video(source, output, detected, model, self.config, audit, None, timings)
            if outcome.status != "blurred":
                return outcome
            try:
                self.target.upload(audit, detections_key(key))
                self.target.upload(output, key)
            except Exception as error:  # noqa: BLE001 -- recorded in the manifest, job goes on
                outcome.status, outcome.output = "failed", None
                outcome.error = f"write failed: {type(error).__name__}: {error}"
        return outcome

    def _local(self, key: str, etag: str) -> Path:
        """The video `key` on this machine: the input itself when local, else a copy fetched from S3."""
        if not self.source.is_s3:
            return self.source.root / key
        local = Path(self._scratch.name) / f"input{PurePosixPath(key).suffix.lower()}"
        if self._fetched != (key, etag):
            self._fetched = None
            self.source.download(key, local)
            self._fetched = (key, etag)
        return local


def _chunk_folder(prefix: str, chunk: Chunk) -> str:
    """Where `chunk`'s boxes are stored, under its video's `chunks_prefix`."""
    return f"{prefix}{chunk.index:05d}-of-{chunk.count:05d}/"
