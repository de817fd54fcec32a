"""The job's inputs, streamed: list in key order, skip what is done, hand the rest to Ray Data in blocks.

One Ray task (`ListInputsToDo`, a Ray Data datasource) pages through the input listing (or the sorted
keys of a keys file), walks the manifest state beside it (`StateCursor`: one state part in memory),
writes the skipped inputs' rows itself, and yields the inputs to do in blocks of `block_rows`. The
driver holds no list of keys: its memory does not grow with the bucket, and the first images start
while the listing goes on. A `ListingCounts` actor tells the driver how many inputs were listed,
skipped and queued, and when the listing is complete.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import ray
from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from jobs.batch.manifest import AUDIT_DIR, StateCursor, read_index, run_part_key, skipped_row, write_rows
from storage.objects import Storage, StoredObject, printable_key
from video.config import is_video_key

log = logging.getLogger("streetblur.listing")

SKIPPED_PART_ROWS = 10_000
STAT_THREADS = 16  # keys of a keys file stat'ed at once


@dataclass(frozen=True)
class ResumeRule:
    """When an input with a row in the manifest is done again. The settings digests are this run's
    (`blurring.config.settings_digest`), of its photos and of its videos (whose `video.*` options count
    too): a row made with other settings is redone."""

    settings_digest: str
    video_settings_digest: str
    overwrite: bool = False  # redo everything
    retry_failed: bool = False  # redo inputs that failed

    def redo(self, previous: dict | None, item: StoredObject) -> bool:
        """True unless `previous` (the input's latest row) has its ETag and this run's settings digest
        (of videos for a video), and did not fail when failures are retried."""
        digest = self.video_settings_digest if is_video_key(item.key) else self.settings_digest
        return (
            self.overwrite
            or previous is None
            or previous["etag"] != item.etag
            or previous["settings_digest"] != digest
            or (self.retry_failed and previous["status"] == "failed")
        )


class ListingCounts:
    """Counts from the listing task, for the driver's progress line and summary (a Ray actor)."""

    def __init__(self) -> None:
        self.counts = {"inputs": 0, "queued": 0, "skipped": 0, "skipped_failed": 0, "complete": False}

    def add(self, inputs: int, queued: int, skipped: int, skipped_failed: int) -> None:
        for name, value in (("inputs", inputs), ("queued", queued), ("skipped", skipped)):
            self.counts[name] += value
        self.counts["skipped_failed"] += skipped_failed

    def finish(self) -> None:
        self.counts["complete"] = True

    def get(self) -> dict:
        return self.counts


def list_inputs(source: Storage, suffixes: tuple[str, ...], keys: bytes | None) -> Iterator[StoredObject]:
    """The input objects in key order: listed by suffix (the audit folder left out), or the keys of a
    keys file's text (`keys`: one a line; sorted, duplicates dropped, any extension).

    A key of a keys file that cannot be stat'ed (missing, unsafe, unreadable, not UTF-8) gets size -1
    and no ETag: the read stage turns it into a failed row with the reason, so every key is accounted
    for. Undecodable bytes in a file name or a keys file (`printable_key`) fail that input alone.
    """
    if keys is None:
        for item in source.list(suffixes):
            if not item.key.startswith(f"{AUDIT_DIR}/"):
                yield item
        return
    lines = keys.decode("utf-8", "surrogateescape").splitlines()
    wanted = sorted({printable_key(line.strip()) for line in lines if line.strip()})

    def stat(key_and_error: tuple[str, str]) -> StoredObject:
        key, error = key_and_error
        if error:
            return StoredObject(key, -1, "", error)
        try:
            return source.stat(key)
        except Exception as error:  # noqa: BLE001 -- the read stage reports the reason in the manifest
            log.debug("cannot stat %r: %s", key, error)
            return StoredObject(key, -1, "")

    with ThreadPoolExecutor(STAT_THREADS) as pool:
        for start in range(0, len(wanted), 1000):
            yield from pool.map(stat, wanted[start : start + 1000])


class ListInputsToDo(Datasource):
    """A Ray Data datasource: one read task that streams the inputs to do (see the module docstring).

    Its rows: key, etag, size, error (why it cannot be read, when the listing knows), and `block`,
    `block_todo` (the number of the listing block and how many inputs it holds), by which the driver
    writes the run's manifest parts. `keys`: a Ray object ref to a keys file's bytes, or None to list;
    `counts`: a `ListingCounts` actor handle.
    """

    def __init__(
        self,
        source: Storage,
        target: Storage,
        suffixes: tuple[str, ...],
        keys: object,
        rule: ResumeRule,
        run_id: str,
        block_rows: int,
        counts: object,
    ) -> None:
        super().__init__()
        self.source, self.target, self.suffixes, self.keys = source, target, suffixes, keys
        self.rule, self.run_id, self.block_rows, self.counts = rule, run_id, block_rows, counts

    def estimate_inmemory_data_size(self) -> None:
        return None

    def get_read_tasks(self, parallelism: int, per_task_row_limit=None, data_context=None) -> list[ReadTask]:
        metadata = BlockMetadata(num_rows=None, size_bytes=None, exec_stats=None, input_files=None)
        return [ReadTask(self._blocks, metadata)]

    def get_name(self) -> str:
        return "ListInputsToDo"

    def _blocks(self) -> Iterator[pa.Table]:
        keys = None if self.keys is None else ray.get(self.keys)
        state = StateCursor(self.target, read_index(self.target))
        todo: list[StoredObject] = []
        skipped: list[dict] = []
        blocks = skipped_parts = listed = skipped_failed = 0
        for item in list_inputs(self.source, self.suffixes, keys):
            listed += 1
            previous = state.seek(item.key)
            if self.rule.redo(previous, item):
                todo.append(item)
            else:
                skipped.append(skipped_row(previous, item, self.run_id))
                skipped_failed += previous["status"] == "failed"
            if len(skipped) == SKIPPED_PART_ROWS:
                write_rows(self.target, run_part_key(self.run_id, "skipped", skipped_parts), skipped)
                self.counts.add.remote(listed, 0, len(skipped), skipped_failed)
                skipped, skipped_parts, listed, skipped_failed = [], skipped_parts + 1, 0, 0
            if len(todo) == self.block_rows:
                self.counts.add.remote(listed, len(todo), 0, 0)
                yield _block(todo, blocks)
                todo, blocks, listed = [], blocks + 1, 0
        if skipped:
            write_rows(self.target, run_part_key(self.run_id, "skipped", skipped_parts), skipped)
        self.counts.add.remote(listed, len(todo), len(skipped), skipped_failed)
        if todo:
            yield _block(todo, blocks)
        self.counts.finish.remote()


def _block(items: list[StoredObject], number: int) -> pa.Table:
    return pa.table(
        {
            "key": [o.key for o in items],
            "etag": [o.etag for o in items],
            "size": pa.array([o.size for o in items], pa.int64()),
            "error": [o.error for o in items],
            "block": pa.array([number] * len(items), pa.int64()),
            "block_todo": pa.array([len(items)] * len(items), pa.int64()),
        }
    )
