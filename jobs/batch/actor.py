"""The batch job's detector actor: loads the models once, then decodes, detects, blurs and encodes
batches of images (`blurring.pipeline.blur_images`), failing closed image by image, and detects the
chunks of videos, blurring a video whole once its last chunk is in (`jobs.batch.videos`)."""

from __future__ import annotations

import json

from blurring.config import Config, output_settings, settings_digest
from blurring.pipeline import Outcome, blur_images
from detection.detections import Detections
from detection.detector import Detector
from jobs.batch.manifest import TIMING_COLUMNS
from jobs.batch.videos import VideoChunks, detections_key
from storage.objects import Storage
from video.pipeline import Chunk, VideoOutcome


class ImagePipelineActor:
    """A detector actor: loads the models once, then decodes, detects, blurs and encodes batches.

    `detector`: one already loaded from `config.detect` (default: load it). `source` and `target`: the
    job's input and output, where a video's file is read and its output written by the actor itself;
    `tally`: the job's `jobs.batch.videos.ChunkTally` actor (without them, a video row fails). A video
    chunk's row comes back only from the actor that finishes its video: one row per video.
    """

    def __init__(
        self,
        config: Config,
        detector: Detector | None = None,
        source: Storage | None = None,
        target: Storage | None = None,
        tally=None,
    ) -> None:
        self.config = config
        self.detector = detector or Detector(config.detect)
        self.videos = None
        if source is not None and target is not None:
            self.videos = VideoChunks(source, target, self.detector, config, tally)
        found = self.detector
        self.settings_digest, self.video_settings_digest = (
            settings_digest(output_settings(config, found.model_id, found.runtime, found.precision, video))
            for video in (False, True)
        )

    def __call__(self, batch: dict) -> dict:
        keys = list(batch["key"])
        readable = [i for i, error in enumerate(batch["error"]) if not error]
        videos = [i for i in readable if batch["format"][i] == "video"]
        images = [i for i in readable if i not in videos]
        reviewed = {i: Detections.from_records(json.loads(batch["reviewer_boxes"][i])) for i in images}
        outcomes = self._blur(
            {i: (bytes(batch["data"][i]), str(batch["format"][i])) for i in images}, reviewed
        )
        columns: dict[str, list] = {name: [] for name in ("output", "status", "error", "width", "height")}
        columns |= {"boxes": [], "proposals": [], "model_id": [], "settings_digest": []}
        columns |= {"faces": [], "plates": []}
        columns |= {"video": [], "frames": [], "streams_dropped": [], "detections_key": []}
        columns |= {c: [] for c in TIMING_COLUMNS if c != "write_ms"}
        returned = []  # the rows that come back: all but the video chunks that did not finish a video
        for i in range(len(keys)):
            if i in videos:
                chunk = Chunk(int(batch["chunk"][i]), int(batch["chunks"][i]))
                if self._add_video(
                    columns, keys[i], str(batch["etag"][i]), chunk, float(batch["read_ms"][i])
                ):
                    returned.append(i)
                continue
            returned.append(i)
            outcome = outcomes.get(i) or Outcome("failed", error=batch["error"][i])  # unreadable input
            columns["output"].append(outcome.output or b"")
            columns["status"].append(outcome.status)
            columns["error"].append(outcome.error)
            columns["width"].append(outcome.width)
            columns["height"].append(outcome.height)
            columns["boxes"].append(json.dumps(outcome.detections.to_records()))
            columns["proposals"].append(json.dumps(outcome.proposal_records()))
            counts = outcome.detections.counts()
            columns["faces"].append(counts["face"])
            columns["plates"].append(counts["plate"])
            columns["video"].append(False)
            columns["frames"].append(None)
            columns["streams_dropped"].append("null")
            columns["detections_key"].append(None)
            columns["model_id"].append(self.detector.model_id)
            columns["settings_digest"].append(self.settings_digest)
            columns["read_ms"].append(float(batch["read_ms"][i]))
            for stage in ("decode", "detect", "blur", "encode"):
                columns[f"{stage}_ms"].append(float(outcome.timings_ms.get(stage, 0.0)))
        names = ("key", "etag", "size", "block", "block_todo")
        passed_on = {name: [batch[name][i] for i in returned] for name in names}
        return {**passed_on, **columns}

    def _add_video(self, columns: dict[str, list], key: str, etag: str, chunk: Chunk, read_ms: float) -> bool:
        """Detect `chunk` of the video `key`; when that completes the video, blur it whole (written to
        the output by this actor) and add its row. Whether a row was added."""
        if self.videos is None:
            outcome = VideoOutcome("failed", error="this actor was given no storage to read videos from")
        else:
            try:
                outcome = self.videos.blur_chunk(key, etag, chunk)
            except Exception as error:  # noqa: BLE001 -- fails closed, with its reason
                outcome = VideoOutcome("failed", error=f"processing failed: {type(error).__name__}: {error}")
            if outcome is None:
                return False
        blurred = outcome.status == "blurred"
        values = {
            "output": b"",
            "status": outcome.status,
            "error": outcome.error,
            "width": outcome.width,
            "height": outcome.height,
            "boxes": "[]",  # per frame, in the detections file
            "proposals": "[]",
            "faces": outcome.detections.get("face", 0),
            "plates": outcome.detections.get("plate", 0),
            "video": True,
            "frames": outcome.frames if blurred else None,
            # JSON, as the boxes: a batch's column of empty lists alone would become a 0-wide tensor
            "streams_dropped": json.dumps(outcome.streams_dropped if blurred else None),
            "detections_key": detections_key(key) if blurred else None,
            "model_id": self.detector.model_id,
            "settings_digest": self.video_settings_digest,
            "read_ms": read_ms,
            **{f"{stage}_ms": outcome.timings_s.get(stage, 0.0) * 1000 for stage in ("decode", "detect")},
            "blur_ms": (outcome.timings_s.get("link", 0.0) + outcome.timings_s.get("blur", 0.0)) * 1000,
            "encode_ms": outcome.timings_s.get("encode", 0.0) * 1000,
        }
        for name, value in values.items():
            columns[name].append(value)
        return True

    def _blur(
        self, inputs: dict[int, tuple[bytes, str]], reviewed: dict[int, Detections]
    ) -> dict[int, Outcome]:
        """`blur_images` of the batch, with the boxes reviewers added to each image (`reviewed`). Should it
        raise, image by image: an image that raises fails alone (closed: no output, the reason
        recorded) instead of failing the batch and so the job."""
        try:
            extra = [reviewed[i] for i in inputs]
            results = blur_images(list(inputs.values()), self.detector, self.config, extra)
            return dict(zip(inputs, results, strict=True))
        except Exception as error:  # noqa: BLE001 -- retried image by image below
            if len(inputs) == 1:
                return {i: _crashed(error) for i in inputs}
        outcomes = {}
        for i, item in inputs.items():
            try:
                outcomes[i] = blur_images([item], self.detector, self.config, [reviewed[i]])[0]
            except Exception as error:  # noqa: BLE001 -- fails closed, with its reason
                outcomes[i] = _crashed(error)
        return outcomes


def _crashed(error: Exception) -> Outcome:
    return Outcome("failed", error=f"processing failed: {type(error).__name__}: {error}")
