"""A finished job's output as the review sees it: its manifest rows, the runs' summaries (where the
originals are, and the settings that blurred them) and the original of each image."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from blurring.config import Config, load_config, settings_digest
from jobs.batch.manifest import read_manifest_rows, summary_key
from storage.objects import NotFound, Storage
from video.config import is_video_key


class UnknownImage(KeyError):
    """A key that names no blurred image of the output's manifest."""


@dataclass
class ReviewedOutput:
    """`target`, a job's output (a folder or an S3 prefix); `input_uri` overrides where the originals
    are (by default each row's run's `summary.json` says)."""

    target: Storage
    input_uri: str | None = None
    _rows: dict[str, dict] | None = field(default=None, repr=False)
    _summaries: dict[str, dict] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rows(self) -> dict[str, dict]:
        """The latest manifest row of every input, by key (read once, then after each `refresh`)."""
        with self._lock:
            if self._rows is None:
                self._rows = {row["key"]: row for row in read_manifest_rows(self.target)}
            return self._rows

    def refresh(self, row: dict) -> None:
        """Hold `row` as the latest of its key (written by a re-render)."""
        self.rows()[row["key"]] = row

    def row(self, key: str) -> dict:
        """The manifest row of a blurred image; `UnknownImage` for any other key (videos included: the
        page reviews photos), so a key from a browser can name only an output the job wrote (never
        another object, nor a path)."""
        row = self.rows().get(key) if isinstance(key, str) else None
        if row is None or row["status"] != "blurred" or not row["output_key"] or is_video_key(key):
            raise UnknownImage(key)
        return row

    def summary(self, run_id: str) -> dict:
        """The `summary.json` of run `run_id`."""
        if run_id not in self._summaries:
            try:
                data = self.target.read(summary_key(run_id))
            except NotFound:
                raise ValueError(f"{self.target.uri}: run {run_id} has no summary.json") from None
            self._summaries[run_id] = json.loads(data)
        return self._summaries[run_id]

    def settings(self, row: dict) -> dict:
        """The settings that made `row`'s output (its run's), checked against the row's digest."""
        settings = self.summary(row["run_id"])["settings"]
        if settings_digest(settings) != row["settings_digest"]:
            raise ValueError(f"{row['key']}: the settings of run {row['run_id']} do not match its row")
        return settings

    def config(self, row: dict) -> Config:
        """The blur and output options `row`'s output was made with, as a `Config`."""
        settings = self.settings(row)
        overrides = {f"blur.{name}": value for name, value in settings["blur"].items()}
        overrides |= {name: settings[name] for name in ("max_pixels", "keep_metadata", "quality")}
        return load_config(overrides=overrides)

    def thresholds(self, row: dict) -> dict[str, float]:
        """The per-class score thresholds that decided what `row`'s image had blurred."""
        return self.settings(row)["detect"]["thresholds"]

    def source(self, row: dict) -> Storage:
        """Where `row`'s original is: `input_uri`, else its run's input."""
        return Storage(self.input_uri or self.summary(row["run_id"])["input"], self.target.endpoint_url)

    def original(self, row: dict) -> bytes:
        """The original of `row`'s image, checked to be the one the job read: same size, and same ETag
        where it is read from the job's own input (a copy named by `input_uri` has another)."""
        source = self.source(row)
        listed = source.stat(row["key"])
        if listed.size != row["size"] or (not self.input_uri and listed.etag != row["etag"]):
            raise ValueError(f"{row['key']}: the original changed since the job read it (ETag or size)")
        return source.read(row["key"])
