"""The batch job's detector actor: loads the models once, then decodes, detects, blurs and encodes
batches of images (`blurring.pipeline.blur_images`), failing closed image by image."""

from __future__ import annotations

import json

from blurring.config import Config, output_settings, settings_digest
from blurring.pipeline import Outcome, blur_images
from detection.detector import Detector
from jobs.batch.manifest import TIMING_COLUMNS


class ImagePipelineActor:
    """A detector actor: loads the models once, then decodes, detects, blurs and encodes batches.

    `detector`: one already loaded from `config.detect` (default: load it).
    """

    def __init__(self, config: Config, detector: Detector | None = None) -> None:
        self.config = config
        self.detector = detector or Detector(config.detect)
        found = self.detector
        self.settings_digest = settings_digest(
            output_settings(config, found.model_id, found.runtime, found.precision)
        )

    def __call__(self, batch: dict) -> dict:
        keys = list(batch["key"])
        readable = [i for i, error in enumerate(batch["error"]) if not error]
        outcomes = self._blur({i: (bytes(batch["data"][i]), str(batch["format"][i])) for i in readable})
        columns: dict[str, list] = {name: [] for name in ("output", "status", "error", "width", "height")}
        columns |= {"boxes": [], "proposals": [], "model_id": [], "settings_digest": []}
        columns |= {c: [] for c in TIMING_COLUMNS if c != "write_ms"}
        for i in range(len(keys)):
            outcome = outcomes.get(i) or Outcome("failed", error=batch["error"][i])  # unreadable input
            columns["output"].append(outcome.output or b"")
            columns["status"].append(outcome.status)
            columns["error"].append(outcome.error)
            columns["width"].append(outcome.width)
            columns["height"].append(outcome.height)
            columns["boxes"].append(json.dumps(outcome.detections.to_records()))
            columns["proposals"].append(json.dumps(outcome.proposal_records()))
            columns["model_id"].append(self.detector.model_id)
            columns["settings_digest"].append(self.settings_digest)
            columns["read_ms"].append(float(batch["read_ms"][i]))
            for stage in ("decode", "detect", "blur", "encode"):
                columns[f"{stage}_ms"].append(float(outcome.timings_ms.get(stage, 0.0)))
        passed_on = {name: list(batch[name]) for name in ("key", "etag", "size", "block", "block_todo")}
        return {**passed_on, **columns}

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
