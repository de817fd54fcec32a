"""The job's audit manifest: one Parquet row per input and run, under `OUTPUT/_streetblur/`.

  runs/RUN_ID/part-NNNNN.parquet  every input of that run, once: blurred, failed (with the reason) or
                                  skipped (done by an earlier run with the same ETag and model);
  runs/RUN_ID/summary.json        counts, images/s and wall time of the run (`jobs.blur_job`);
  manifest.parquet                the current state: the latest blurred/failed row of every input
                                  (latest by run id, which starts with the run's UTC start time).

Columns: `MANIFEST_SCHEMA`. `ManifestWriter` writes a run's parts as rows come in;
`read_manifest_rows` gives the current state from every run's parts; `consolidate_manifest` rewrites
`manifest.parquet` at the end of a run.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.storage import Storage, StoredObject

AUDIT_DIR = "_streetblur"
BOX_TYPE = pa.struct([("class", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.float32(), 4))])
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
    ]
)
TIMING_COLUMNS = ("read_ms", "decode_ms", "detect_ms", "blur_ms", "encode_ms", "write_ms")


def skipped_row(previous: dict, item: StoredObject, run_id: str) -> dict:
    """The row of an input skipped by run `run_id`: its `previous` row, marked skipped, with the reason."""
    return {
        **previous,
        "status": "skipped",
        "error": f"done by run {previous['run_id']} ({previous['status']}); same ETag and model",
        "run_id": run_id,
        "finished_at": datetime.now(timezone.utc),
        **dict.fromkeys(TIMING_COLUMNS, 0.0),
        "etag": item.etag,
        "size": item.size,
    }


class ManifestWriter:
    """Collects manifest rows and writes them as numbered Parquet parts of one run."""

    def __init__(self, target: Storage, run_id: str, flush_rows: int) -> None:
        self.target, self.run_id, self.flush_rows = target, run_id, flush_rows
        self.pending: list[dict] = []
        self.parts = 0
        self.counts = {"blurred": 0, "failed": 0, "skipped": 0}

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            self.counts[row["status"]] += 1
        self.pending += rows
        if len(self.pending) >= self.flush_rows:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        table = pa.Table.from_pylist(self.pending, schema=MANIFEST_SCHEMA)
        self.target.write(f"{AUDIT_DIR}/runs/{self.run_id}/part-{self.parts:05d}.parquet", _parquet(table))
        self.parts += 1
        self.pending = []


def _parquet(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def read_manifest_rows(target: Storage) -> list[dict]:
    """The latest blurred/failed row of every input key, from every run's parts."""
    latest = _merge_parts(target, f"{AUDIT_DIR}/runs/", {})
    return [latest[key] for key in sorted(latest)]


def _merge_parts(target: Storage, under: str, latest: dict[str, dict]) -> dict[str, dict]:
    """`latest` updated with the blurred/failed rows of the Parquet parts under `under`.

    Latest by (run id, finished at): run ids start with the run's UTC start time, so a later run wins
    even if a worker's clock is behind; within a run, the later row.
    """
    for part in target.list((".parquet",), under=under):
        for row in pq.read_table(io.BytesIO(target.read(part.key)), schema=MANIFEST_SCHEMA).to_pylist():
            if row["status"] == "skipped":
                continue
            current = latest.get(row["key"])
            if current is None or _order(row) >= _order(current):
                latest[row["key"]] = row
    return latest


def _order(row: dict) -> tuple:
    return row["run_id"], row["finished_at"]


def consolidate_manifest(target: Storage, previous: dict[str, dict], run_id: str) -> None:
    """Rewrite `_streetblur/manifest.parquet`: one row per input key, the latest done state.

    `previous` is what `read_manifest_rows` gave at the start of run `run_id`; only that run's parts
    are read again (one run at a time writes to an output).
    """
    latest = _merge_parts(target, f"{AUDIT_DIR}/runs/{run_id}/", dict(previous))
    table = pa.Table.from_pylist([latest[key] for key in sorted(latest)], schema=MANIFEST_SCHEMA)
    target.write(f"{AUDIT_DIR}/manifest.parquet", _parquet(table))
