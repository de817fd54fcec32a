"""The batch job's detector actor: loads the models once, then decodes, detects, blurs and encodes
batches of images (`blurring.pipeline.blur_images`), failing closed image by image, and blurs each
video of a batch whole (`jobs.batch.videos`)."""

from __future__ import annotations

import json

from blurring.config import Config, output_settings, settings_digest
from blurring.pipeline import Outcome, blur_images
from detection.detector import Detector
from jobs.batch.manifest import TIMING_COLUMNS
from jobs.batch.videos import blur_stored_video, detections_key
from storage.objects import Storage
from video.pipeline import VideoOutcome


class ImagePipelineActor:
    """A detector actor: loads the models once, then decodes, detects, blurs and encodes batches.

    `detector`: one already loaded from `config.detect` (default: load it). `source` and `target`: the
    job's input and output, where a video row's file is read and its output written by the actor
    itself (without them, a video row fails).
    """

    def __init__(
        self,
        config: Config,
        detector: Detector | None = None,
        source: Storage | None = None,
        target: Storage | None = None,
    ) -> None:
        self.config = config
        self.source, self.target = source, target
        self.detector = detector or Detector(config.detect)
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
        outcomes = self._blur({i: (bytes(batch["data"][i]), str(batch["format"][i])) for i in images})
        columns: dict[str, list] = {name: [] for name in ("output", "status", "error", "width", "height")}
        columns |= {"boxes": [], "proposals": [], "model_id": [], "settings_digest": []}
        columns |= {"faces": [], "plates": []}
        columns |= {"video": [], "frames": [], "streams_dropped": [], "detections_key": []}
        columns |= {c: [] for c in TIMING_COLUMNS if c != "write_ms"}
        for i in range(len(keys)):
            if i in videos:
                self._add_video(columns, keys[i], float(batch["read_ms"][i]))
                continue
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
            columns["streams_dropped"].append(None)
            columns["detections_key"].append(None)
            columns["model_id"].append(self.detector.model_id)
            columns["settings_digest"].append(self.settings_digest)
            columns["read_ms"].append(float(batch["read_ms"][i]))
            for stage in ("decode", "detect", "blur", "encode"):
                columns[f"{stage}_ms"].append(float(outcome.timings_ms.get(stage, 0.0)))
        passed_on = {name: list(batch[name]) for name in ("key", "etag", "size", "block", "block_todo")}
        return {**passed_on, **columns}

    def _add_video(self, columns: dict[str, list], key: str, read_ms: float) -> None:
        """Blur the video `key` whole, written to the output by this actor, and add its row."""
        if self.source is None or self.target is None:
            outcome = VideoOutcome("failed", error="this actor was given no storage to read videos from")
        else:
            try:
                outcome = blur_stored_video(key, self.source, self.target, self.detector, self.config)
            except Exception as error:  # noqa: BLE001 -- fails closed, with its reason
                outcome = VideoOutcome("failed", error=f"processing failed: {type(error).__name__}: {error}")
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
            "streams_dropped": outcome.streams_dropped if blurred else None,
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

    def _blur(self, inputs: dict[int, tuple[bytes, str]]) -> dict[int, Outcome]:
        """`blur_images` of the batch. Should it raise, image by image: an image that raises fails alone
        (closed: no output, the reason recorded) instead of failing the batch and so the job."""
        try:
            results = blur_images(list(inputs.values()), self.detector, self.config)
            return dict(zip(inputs, results, strict=True))
        except Exception as error:  # noqa: BLE001 -- retried image by image below
            if len(inputs) == 1:
                return {i: _crashed(error) for i in inputs}
        outcomes = {}
        for i, item in inputs.items():
            try:
                outcomes[i] = blur_images([item], self.detector, self.config)[0]
            except Exception as error:  # noqa: BLE001 -- fails closed, with its reason
                outcomes[i] = _crashed(error)
        return outcomes


def _crashed(error: Exception) -> Outcome:
    return Outcome("failed", error=f"processing failed: {type(error).__name__}: {error}")
