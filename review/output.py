"""A finished job's output as the review sees it: its manifest rows, the runs' summaries (where the
originals are, and the settings that blurred them) and the original of each image."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field

from blurring.config import Config, load_config, settings_digest
from blurring.image_io import DecodedImage, decode_image
from jobs.batch.manifest import (
    read_index,
    read_manifest_rows,
    read_run_rows,
    row_order,
    summary_key,
    uncompacted_runs,
)
from jobs.batch.verdicts import ImageState, fold, read_verdicts
from storage.objects import NotFound, Storage
from video.config import is_video_key


class UnknownImage(KeyError):
    """A key that names no blurred image of the output's manifest."""


class ImageChanged(RuntimeError):
    """A job wrote an image again since the page showed it: a verdict made on the page is refused."""


@dataclass
class ReviewedOutput:
    """`target`, a job's output (a folder or an S3 prefix); `input_uri` overrides where the originals
    are (by default each row's run's `summary.json` says)."""

    target: Storage
    input_uri: str | None = None
    _rows: dict[str, dict] | None = field(default=None, repr=False)
    _summaries: dict[str, dict] = field(default_factory=dict, repr=False)
    # The settings checked against rows, by (run id, settings digest)
    _settings: dict[tuple[str, str], dict] = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    _index_version: str | None = field(default=None, repr=False)  # of manifest.json when the rows were read
    _runs_read: set[str] = field(default_factory=set, repr=False)  # finished uncompacted runs, rows held

    def rows(self) -> dict[str, dict]:
        """The latest manifest row of every input, by key (read once, then kept up to date by `sync`
        and `refresh`)."""
        with self._lock:
            if self._rows is None:
                index = read_index(self.target)
                finished = {run for run in uncompacted_runs(self.target, index) if self._finished(run)}
                self._rows = {row["key"]: row for row in read_manifest_rows(self.target)}
                self._index_version, self._runs_read = index["version"], finished
            return self._rows

    def sync(self) -> None:
        """Catch up with the manifest as it is now: the rows of runs written since they were read (a
        job's, another reviewer's re-renders; a run that has not finished, running or killed, is read
        again each time), or all of them again if a job compacted the state."""
        index = read_index(self.target)
        runs = uncompacted_runs(self.target, index)
        with self._lock:
            if self._rows is not None and index["version"] != self._index_version:
                self._rows = None
            rows = self.rows()
            for run in (r for r in runs if r not in self._runs_read):
                finished = self._finished(run)  # asked first: all its rows are written by then
                run_rows = read_run_rows(self.target, run)
                for row in run_rows:
                    if row["key"] not in rows or row_order(row) > row_order(rows[row["key"]]):
                        rows[row["key"]] = row
                if finished and run_rows:  # a re-render writes its summary just before its row
                    self._runs_read.add(run)

    def _finished(self, run_id: str) -> bool:
        """Whether run `run_id` has written all its rows: a job's summary says so at its end (one
        written before `finished` was, only at the end); a re-render's is written before its row."""
        try:
            return json.loads(self.target.read(summary_key(run_id))).get("finished", True)
        except NotFound:
            return False

    def current(self, key: str, shown: dict) -> tuple[dict, ImageState]:
        """`key`'s latest manifest row and verdict state, the manifest and the log read again first;
        `ImageChanged` if a job wrote the image again since `shown`, the row a page showed."""
        self.sync()
        row = self.row(key)
        state = fold(read_verdicts(self.target), {key: row}).get(key, ImageState())
        if not state.same_job(row, shown):
            raise ImageChanged(f"{key}: a job wrote this image again since the page showed it: reload it")
        return row, state

    def refresh(self, row: dict) -> None:
        """Hold `row`, which this process wrote as the only row of its run, as the latest of its key."""
        with self._lock:
            self.rows()[row["key"]] = row
            self._runs_read.add(row["run_id"])

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
        """The settings that made `row`'s output (its run's), checked against the row's digest (once per
        run and digest: the queue asks for every row)."""
        checked = (row["run_id"], row["settings_digest"])
        if checked not in self._settings:
            settings = self.summary(row["run_id"])["settings"]
            if settings_digest(settings) != row["settings_digest"]:
                raise ValueError(f"{row['key']}: the settings of run {row['run_id']} do not match its row")
            self._settings[checked] = settings
        return self._settings[checked]

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

    def original(self, row: dict) -> DecodedImage:
        """The original of `row`'s image, decoded upright, checked to be the one the job read: same
        size in bytes, same ETag where it is read from the job's own input (a copy named by `input_uri`
        has another), and the same upright width and height (an edited orientation tag changes no size)."""
        source = self.source(row)
        listed = source.stat(row["key"])
        if listed.size != row["size"] or (not self.input_uri and listed.etag != row["etag"]):
            raise ValueError(f"{row['key']}: the original changed since the job read it (ETag or size)")
        decoded = decode_image(source.read(row["key"]), self.config(row).max_pixels)
        if (decoded.width, decoded.height) != (row["width"], row["height"]):
            raise ValueError(
                f"{row['key']}: the original is {decoded.width}x{decoded.height} upright, the job's output "
                f"{row['width']}x{row['height']}: it changed since the job read it"
            )
        return decoded
