"""The job's audit manifest under `OUTPUT/_streetblur/`, built to stay cheap at hundreds of millions of keys.

  runs/RUN_ID/part-BBBBBBBBB.parquet     the blurred and failed rows of block B of the run's listing,
                                         sorted by key. A listing streams in key order and its blocks
                                         follow one another, so a run's parts, in order, are sorted too
  runs/RUN_ID/skipped-NNNNNNNNN.parquet  the inputs the run skipped (done before, same ETag and settings)
  runs/RUN_ID/summary.json               the run's settings, written as it starts ("finished": false),
                                         then with its counts, images/s and wall time as it ends
                                         (`jobs.batch.job`)
  manifest.json                          the index of the current state: its parts with their first and
                                         last keys, and the runs compacted into it
  manifest/GEN/part-NNNNNNNNN.parquet    the current state: the latest blurred/failed row of every input
                                         ever seen (latest by run id, which starts with the run's UTC
                                         start time), sorted by key, in parts of at most
                                         `STATE_PART_ROWS` rows

A run checks what it can skip by walking its sorted listing and the sorted state side by side
(`StateCursor`), holding one state part at a time, and writes its done rows one part per listing block
(`ManifestPartWriter`). At its end, `compact` merges the run's parts into a
new generation of the state (a streaming merge of sorted parts), switches `manifest.json` to it, then
deletes the old generation. Parts of a run that was killed before compacting are compacted by the
next run before it starts (`uncompacted_runs`). One run at a time writes an output (`jobs.batch.lease`):
`compact` renews the run's lease with a conditional write before it merges, before the switch and
before it deletes, and the switch is itself a conditional write on the version of `manifest.json` the
run read (S3: `If-Match`; a folder: under the lock `.manifest.json.lock`), so a run that lost its lease
(or raced another) switches and deletes nothing.

Columns: `MANIFEST_SCHEMA`. The state is a Parquet dataset: `pq.read_table` reads a generation's
folder, and `read_manifest_rows` gives every latest row, including those of uncompacted runs.
"""

from __future__ import annotations

import heapq
import io
import json
import uuid
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from itertools import groupby
from operator import itemgetter

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.batch.lease import Lease
from storage.objects import ConditionFailed, NotFound, Storage, StoredObject

AUDIT_DIR = "_streetblur"
INDEX_KEY = f"{AUDIT_DIR}/manifest.json"
STATE_PART_ROWS = 20_000
READ_AHEAD = 4  # parts read in parallel while merging (each source)
BOX_TYPE = pa.struct([("class", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.float32(), 4))])
# stage: "detector" (under its class's blur threshold, not verified) or "verifier" (rejected by it)
PROPOSAL_TYPE = pa.struct([*BOX_TYPE, ("stage", pa.string())])
MANIFEST_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("output_key", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("faces", pa.int32()),
        ("plates", pa.int32()),
        ("boxes", pa.list_(BOX_TYPE)),
        ("model_id", pa.string()),
        ("settings_digest", pa.string()),  # blurring.config.settings_digest: what decides the pixels
        ("read_ms", pa.float32()),
        ("decode_ms", pa.float32()),
        ("detect_ms", pa.float32()),
        ("blur_ms", pa.float32()),
        ("encode_ms", pa.float32()),
        ("write_ms", pa.float32()),
        ("etag", pa.string()),
        ("size", pa.int64()),
        ("run_id", pa.string()),
        ("finished_at", pa.timestamp("ms", tz="UTC")),
        # Proposals that were not blurred (blurring.pipeline.Outcome.proposals); [] in rows written before
        # this column existed
        ("proposals", pa.list_(PROPOSAL_TYPE)),
        # Videos only (null for photos, and in manifests written before videos):
        ("frames", pa.int64()),
        ("streams_dropped", pa.list_(pa.string())),  # streams the output does not carry, with why
        ("detections_key", pa.string()),  # the boxes of every frame (jobs.batch.videos.detections_key)
    ]
)
TIMING_COLUMNS = ("read_ms", "decode_ms", "detect_ms", "blur_ms", "encode_ms", "write_ms")


def skipped_row(previous: dict, item: StoredObject, run_id: str) -> dict:
    """The row of an input skipped by run `run_id`: its `previous` row, marked skipped, with the reason."""
    return {
        **previous,
        "status": "skipped",
        "error": f"done by run {previous['run_id']} ({previous['status']}); same ETag and settings",
        "run_id": run_id,
        "finished_at": datetime.now(timezone.utc),
        **dict.fromkeys(TIMING_COLUMNS, 0.0),
        "etag": item.etag,
        "size": item.size,
    }


def run_part_key(run_id: str, kind: str, number: int) -> str:
    """Where part `number` of a run's `kind` ("part": done rows; "skipped") is stored."""
    return f"{AUDIT_DIR}/runs/{run_id}/{kind}-{number:09d}.parquet"


def new_run_id(kind: str = "") -> str:
    """A new run id: the UTC time to the microsecond (so that ids sort as their runs started, see
    `row_order`), then `kind` (e.g. "review-") and random hex."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ-") + kind + uuid.uuid4().hex[:6]


def summary_key(run_id: str) -> str:
    """Where a run's `summary.json` is stored."""
    return f"{AUDIT_DIR}/runs/{run_id}/summary.json"


def write_summary(target: Storage, run_id: str, summary: dict) -> None:
    """Write run `run_id`'s `summary.json` (indented JSON)."""
    target.write(summary_key(run_id), (json.dumps(summary, indent=2) + "\n").encode())


def write_rows(target: Storage, key: str, rows: list[dict]) -> None:
    """Write `rows` (manifest rows) as one Parquet part at `key`, sorted by input key."""
    table = pa.Table.from_pylist(sorted(rows, key=itemgetter("key")), schema=MANIFEST_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    target.write(key, buffer.getvalue())


def read_rows(target: Storage, key: str) -> list[dict]:
    """The rows of one Parquet part; a part written before a list column existed reads it as []."""
    rows = pq.read_table(io.BytesIO(target.read(key)), schema=MANIFEST_SCHEMA).to_pylist()
    for row in rows:
        if row["proposals"] is None:
            row["proposals"] = []
    return rows


class IndexChanged(RuntimeError):
    """`manifest.json` is no longer the version a run read: another run switched it meanwhile."""


def read_index(target: Storage) -> dict:
    """The state's index (`manifest.json`), with its `version` (`Storage.read_versioned`; not stored),
    on which `compact` switches it; an empty state, version None, if there is none yet."""
    try:
        data, version = target.read_versioned(INDEX_KEY)
    except NotFound:
        return {"generation": "", "rows": 0, "parts": [], "runs": [], "version": None}
    return json.loads(data) | {"version": version}


def uncompacted_runs(target: Storage, index: dict) -> list[str]:
    """The runs with parts that are not in the state yet (killed, or running now), oldest first."""
    compacted = set(index["runs"])
    return [run for run in target.folders(f"{AUDIT_DIR}/runs/") if run not in compacted]


class StateCursor:
    """The state's row of each key, for keys asked in increasing order: walks the sorted state parts,
    reading only those whose key range can hold an asked key, one at a time."""

    def __init__(self, target: Storage, index: dict) -> None:
        self.target = target
        self.parts = deque(index["parts"])
        self.rows: list[dict] = []
        self.position = 0

    def seek(self, key: str) -> dict | None:
        """The state's row of `key`, or None; `key` must not be below the last one asked."""
        while not self.rows or self.rows[-1]["key"] < key:
            while self.parts and self.parts[0]["last"] < key:
                self.parts.popleft()
            if not self.parts:
                return None
            self.rows, self.position = read_rows(self.target, self.parts.popleft()["key"]), 0
        self.position = bisect_left(self.rows, key, lo=self.position, key=itemgetter("key"))
        row = self.rows[self.position]
        return row if row["key"] == key else None


def compact(target: Storage, index: dict, run_ids: list[str], lease: Lease | None = None) -> dict:
    """Merge the done rows of `run_ids` into the state of `index`; return the new index, now current.

    A streaming merge: each source (the state, and each run's parts in order) is sorted by key, and
    only a few parts of each are in memory at once. The latest row of a key wins (`row_order`).

    `lease` (the run's; None only where nothing else can write the output, as in a test) is renewed
    before the merge, before the switch and before the old generation is deleted: `LeaseLost` if
    another run took it over. The switch of `manifest.json` is conditional on the version of `index`:
    `IndexChanged` if another run switched it since. Either leaves everything in place: raised before
    the switch, the state as the other run left it; after it (the lease lost since), the old generation
    too. A generation this call wrote and did not switch to stays, unused.
    """
    if not run_ids:
        return index
    if lease:
        lease.verify()
    run_parts = {run_id: _done_parts(target, run_id) for run_id in run_ids}
    if not any(run_parts.values()):  # nothing done (all skipped): the state stays as it is
        return _switch(target, index, {**index, "runs": index["runs"] + run_ids}, lease)
    generation = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    sources = [_rows_of_parts(target, [p["key"] for p in index["parts"]])]
    sources += [_run_rows(target, run_id, parts) for run_id, parts in run_parts.items()]
    merged = heapq.merge(*sources, key=itemgetter("key"))
    parts, batch = [], []
    for _, rows in groupby(merged, key=itemgetter("key")):
        batch.append(max(rows, key=row_order))
        if len(batch) == STATE_PART_ROWS:
            parts.append(_write_state_part(target, generation, len(parts), batch))
            batch = []
    if batch:
        parts.append(_write_state_part(target, generation, len(parts), batch))
    new_index = {
        "generation": generation,
        "rows": sum(p["rows"] for p in parts),
        "parts": parts,
        "runs": index["runs"] + run_ids,
    }
    new_index = _switch(target, index, new_index, lease)
    if lease:
        lease.verify()
    for part in index["parts"]:
        target.delete(part["key"])
    return new_index


def _switch(target: Storage, index: dict, new_index: dict, lease: Lease | None) -> dict:
    """Make `new_index` the current index, if `index` still is and `lease` is still this run's: a
    conditional write of `manifest.json` right after renewing the lease. Returns it with its version."""
    if lease:
        lease.verify()
    stored = {name: value for name, value in new_index.items() if name != "version"}
    try:
        version = target.write_if(INDEX_KEY, (json.dumps(stored, indent=1) + "\n").encode(), index["version"])
    except ConditionFailed:
        raise IndexChanged(
            f"{target.uri}: {INDEX_KEY} changed since this run read it (another run compacted meanwhile); "
            "nothing switched or deleted: the parts being compacted stay for the next run"
        ) from None
    return stored | {"version": version}


def read_manifest_rows(target: Storage) -> list[dict]:
    """The latest blurred/failed row of every input key, sorted by key: the state merged with the parts
    of runs not compacted into it yet. Holds every row in memory: for inspection and tests."""
    index = read_index(target)
    sources = [_rows_of_parts(target, [p["key"] for p in index["parts"]])]
    sources += [_run_rows(target, run, _done_parts(target, run)) for run in uncompacted_runs(target, index)]
    merged = heapq.merge(*sources, key=itemgetter("key"))
    return [max(rows, key=row_order) for _, rows in groupby(merged, key=itemgetter("key"))]


def row_order(row: dict) -> tuple:
    """The sort key of the rows of one input, the latest last: run ids start with the run's UTC start
    time, so a later run wins even if a worker's clock is behind; within a run, the later row."""
    return row["run_id"], row["finished_at"]


def _write_state_part(target: Storage, generation: str, number: int, rows: list[dict]) -> dict:
    key = f"{AUDIT_DIR}/manifest/{generation}/part-{number:09d}.parquet"
    write_rows(target, key, rows)
    return {"key": key, "first": rows[0]["key"], "last": rows[-1]["key"], "rows": len(rows)}


def _done_parts(target: Storage, run_id: str) -> list[str]:
    """The keys of run `run_id`'s parts of done rows, in order."""
    listed = target.list((".parquet",), under=f"{AUDIT_DIR}/runs/{run_id}/")
    return [o.key for o in listed if o.key.rsplit("/", 1)[-1].startswith("part-")]


def read_run_rows(target: Storage, run_id: str) -> list[dict]:
    """The done rows of run `run_id` (blurred and failed), in key order."""
    return list(_run_rows(target, run_id, _done_parts(target, run_id)))


def _run_rows(target: Storage, run_id: str, parts: list[str]) -> Iterator[dict]:
    """The rows of run `run_id`'s `parts`, checked to be in key order: `RuntimeError` if not."""
    last = ""
    for row in _rows_of_parts(target, parts):
        if row["key"] <= last:
            raise RuntimeError(f"the parts of run {run_id} are not in key order at {row['key']!r}")
        last = row["key"]
        yield row


def _rows_of_parts(target: Storage, keys: Iterable[str]) -> Iterator[dict]:
    """The rows of the parts `keys`, part after part, reading up to `READ_AHEAD` parts in parallel."""
    with ThreadPoolExecutor(READ_AHEAD) as pool:
        pending: deque = deque()
        for key in keys:
            pending.append(pool.submit(read_rows, target, key))
            if len(pending) == READ_AHEAD:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


class ManifestPartWriter:
    """The run's done rows, gathered by listing block: a block's part is written once all its rows are
    back, so each part is one stretch of the sorted listing (see the module's docstring). A row of a
    block already written or already held (a batch that Ray ran twice) is dropped: each part is written
    once, and each input counted once."""

    def __init__(self, target: Storage, run_id: str) -> None:
        self.target, self.run_id = target, run_id
        self.pending: dict[int, dict[str, dict]] = {}
        self.written: set[int] = set()
        self.counts = {"blurred": 0, "failed": 0}

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            block, todo = row.pop("block"), row.pop("block_todo")
            if block in self.written:
                continue  # a late copy of a batch that Ray ran twice
            done = self.pending.setdefault(block, {})
            if row["key"] in done:
                continue  # a batch that Ray ran twice
            done[row["key"]] = row
            self.counts[row["status"]] += 1
            if len(done) == todo:
                self._write(block)

    def flush(self) -> None:
        """Write the blocks still missing rows (the run is ending early)."""
        for block in sorted(self.pending):
            self._write(block)

    def _write(self, block: int) -> None:
        rows = list(self.pending.pop(block).values())
        write_rows(self.target, run_part_key(self.run_id, "part", block), rows)
        self.written.add(block)
