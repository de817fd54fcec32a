"""Ray batch job: blur every image under an input URI into an output URI, with an audit manifest.

    python -m jobs.blur_job --input s3://bucket/raw --output s3://bucket/blurred   # ray job submit
    streetblur run --input DIR_OR_URI --output DIR_OR_URI [--address ADDR]        # local Ray if none

Stages (Ray Data, streaming, so memory stays bounded whatever the bucket size):
  listing (driver)  ->  read bytes (tasks, fractional CPU)  ->  decode, detect (tiled, batched),
  blur, encode (a pool of detector actors, models loaded once each)  ->  write output (tasks)
  ->  manifest rows, flushed by the driver as Parquet parts every few dozen images.

Under the output root, `_streetblur/` holds the audit trail:
  runs/RUN_ID/part-NNNNN.parquet  every input of that run, once: blurred, failed (with the reason) or
                                  skipped (done by an earlier run with the same ETag and model);
  runs/RUN_ID/summary.json        counts, images/s and wall time of the run; `skipped_failed` counts
                                  the skipped inputs whose earlier run failed them;
  manifest.parquet                the current state: the latest blurred/failed row of every input
                                  (latest by run id, which starts with the run's UTC start time).
A re-run skips an input only when its manifest row has the same ETag and the same model id (the
detector weights' hashes): other weights redo everything. Blur and other config changes are NOT
tracked: use `--overwrite` after changing them. `--retry-failed` redoes the inputs that failed.
A run killed midway keeps the parts it flushed; the next run does the rest. A run whose pipeline
raises flushes the rows it finished, then raises.

One bad input never stops the job: an unsafe key (empty, absolute, with `..`), an unsupported
extension, a missing or unreadable object, an undecodable image all become failed rows with the
reason. Fail closed: an output is written only for an image whose decoding, detection and blur
succeeded. The output may not be the input nor inside it (it would be read back as input).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq

from detection.detector import model_id
from jobs.image_io import FORMAT_BY_SUFFIX, BadImageError, output_format
from jobs.pipeline import Config, Outcome, blur_images, load_config, parse_overrides
from jobs.storage import InvalidKey, NotFound, Storage, StoredObject, check_key

log = logging.getLogger("streetblur.job")

AUDIT_DIR = "_streetblur"
INPUT_SUFFIXES = tuple(FORMAT_BY_SUFFIX)  # outputs keep the input's format, so only writable ones
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


@dataclass(frozen=True)
class JobOptions:
    """What to blur, where to, and how to spread it over the cluster."""

    input_uri: str
    output_uri: str
    endpoint_url: str | None = None  # S3-compatible server (MinIO, moto); None: AWS
    keys_file: str | None = None  # a text file of input keys, one a line, instead of listing
    suffixes: tuple[str, ...] = INPUT_SUFFIXES
    overwrite: bool = False  # redo inputs already done
    retry_failed: bool = False  # redo inputs that failed before
    actors: int | None = None  # detector actors; None: as many as the cluster's CPUs allow
    actor_cpus: float = 0.75  # below 1 on purpose: leaves room for the read/write tasks
    actor_gpus: float = 0.0
    io_cpus: float = 0.25  # CPUs per read/write task: small, so actors do not starve them
    batch_size: int = 4  # images per actor call; their tiles share model batches
    flush_rows: int = 32  # manifest part size
    log_every_s: float = 10.0
    config: Config = field(default_factory=Config)


def run_job(options: JobOptions, address: str | None = None) -> dict:
    """Run the job on the Ray cluster at `address` (None: `RAY_ADDRESS`, else a new local Ray).

    A new local Ray, not "whatever cluster this machine last started": that one may be gone.
    Raises `ValueError`, before anything runs, for a missing local input folder or an output that is
    the input or inside it.
    """
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or "local"
    started = time.perf_counter()
    source = Storage(options.input_uri, options.endpoint_url)
    target = Storage(options.output_uri, options.endpoint_url)
    check_locations(source, target)
    model = model_id(options.config.detect.models)  # hashes the weight files, loads nothing
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
    inputs = list_inputs(source, options)
    done = {row["key"]: row for row in read_manifest_rows(target)}
    todo, skipped = plan_inputs(inputs, done, options, model)
    skipped_failed = sum(done[item.key]["status"] == "failed" for item in skipped)
    log.info(
        "run %s: %d inputs, %d to do, %d done before (%d of them failed), model %s",
        run_id,
        len(inputs),
        len(todo),
        len(skipped),
        skipped_failed,
        model,
    )
    writer = _ManifestWriter(target, run_id, options.flush_rows)
    writer.add([_skipped_row(done[item.key], item, run_id) for item in skipped])
    actors = 0
    try:
        if todo:
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
            actors = options.actors or pool_size(ray.cluster_resources(), options)
            _run_pipeline(todo, source, target, replace(options, actors=actors), writer, run_id)
    finally:
        writer.flush()  # even if the pipeline raised: the rows it finished are kept, the next run skips them
    counts = writer.counts
    wall = time.perf_counter() - started
    processed = counts["blurred"] + counts["failed"]
    summary = {
        "run_id": run_id,
        "input": options.input_uri,
        "output": options.output_uri,
        "inputs": len(inputs),
        **counts,
        "skipped_failed": skipped_failed,
        "wall_s": round(wall, 2),
        "images_per_s": round(processed / wall, 3) if processed else 0.0,
        "actors": actors,
    }
    consolidate_manifest(target, done, run_id)
    target.write(f"{AUDIT_DIR}/runs/{run_id}/summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    log.info("summary: %s", json.dumps(summary))
    if skipped_failed:
        log.warning(
            "%d inputs skipped that failed in an earlier run (see the manifest); --retry-failed redoes them",
            skipped_failed,
        )
    return summary


def check_locations(source: Storage, target: Storage) -> None:
    """`ValueError` for a missing local input folder, or an output that is the input or inside it.

    Outputs under the input would be listed as inputs by the next run (and blurred again), and an
    output that is the input would overwrite the originals.
    """
    if not source.is_s3 and not source.root.is_dir():
        raise ValueError(f"--input {source.uri}: no such folder")
    if source.is_s3 != target.is_s3:
        return
    if source.is_s3:
        overlap = source.bucket == target.bucket and target.prefix.startswith(source.prefix)
    else:
        input_dir, output_dir = source.root.resolve(), target.root.resolve()
        overlap = output_dir == input_dir or input_dir in output_dir.parents
    if overlap:
        raise ValueError(
            f"--output {target.uri} is the input {source.uri} or inside it: outputs would be read back "
            "as inputs; write them to a separate folder or prefix"
        )


def plan_inputs(
    inputs: list[StoredObject], done: dict[str, dict], options: JobOptions, model: str
) -> tuple[list[StoredObject], list[StoredObject]]:
    """`(todo, skipped)`: an input is skipped only if its latest row has its ETag and was made by `model`
    (and did not fail, with `retry_failed`); `overwrite` redoes all."""
    todo, skipped = [], []
    for item in inputs:
        previous = done.get(item.key)
        redo = (
            options.overwrite
            or previous is None
            or previous["etag"] != item.etag
            or previous["model_id"] != model
            or (options.retry_failed and previous["status"] == "failed")
        )
        (todo if redo else skipped).append(item)
    return todo, skipped


def pool_size(resources: dict, options: JobOptions) -> int:
    """Detector actors that fit the cluster, leaving each one room for a read or write task beside it."""
    if options.actor_gpus > 0:
        return max(1, int(resources.get("GPU", 0) / options.actor_gpus))
    return max(1, int(resources.get("CPU", 1) / (options.actor_cpus + options.io_cpus)))


def list_inputs(source: Storage, options: JobOptions) -> list[StoredObject]:
    """The input objects: listed by suffix, or the keys of `keys_file` as given.

    A key that cannot be stat'ed (missing, unsafe, unreadable) gets size -1 and no ETag: the read
    stage turns it into a failed row with the reason. Keys of any extension are kept: an unsupported
    one is a failed row too, so that every key of the file is accounted for in the manifest.
    """
    if options.keys_file is None:
        return [o for o in source.list(options.suffixes) if not o.key.startswith(f"{AUDIT_DIR}/")]
    with open(options.keys_file, encoding="utf-8") as lines:
        keys = list(dict.fromkeys(line.strip() for line in lines if line.strip()))
    objects = []
    for key in keys:
        try:
            objects.append(source.stat(key))
        except Exception as error:  # noqa: BLE001 -- the read stage reports the reason in the manifest
            log.debug("cannot stat %r: %s", key, error)
            objects.append(StoredObject(key, -1, ""))
    return objects


def _run_pipeline(
    todo: list[StoredObject],
    source: Storage,
    target: Storage,
    options: JobOptions,
    writer: _ManifestWriter,
    run_id: str,
) -> None:
    import ray

    items = [{"key": o.key, "etag": o.etag, "size": o.size} for o in todo]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), 200)))
    dataset = dataset.map(_ReadStage(source), num_cpus=options.io_cpus)
    dataset = dataset.map_batches(
        _BlurActor,
        fn_constructor_kwargs={"config": options.config},
        compute=ray.data.ActorPoolStrategy(size=options.actors),
        batch_size=options.batch_size,
        num_cpus=options.actor_cpus,
        num_gpus=options.actor_gpus,
    )  # Ray Data restarts a dead actor and retries its batch (max_restarts=-1 by default)
    dataset = dataset.map(_WriteStage(target, run_id), num_cpus=options.io_cpus)
    last_log = time.perf_counter()
    started = last_log
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        writer.add(batch.to_pylist())
        if time.perf_counter() - last_log >= options.log_every_s:
            last_log = time.perf_counter()
            done = writer.counts["blurred"] + writer.counts["failed"]
            log.info(
                "progress: %d/%d done, %d failed, %.2f images/s",
                done,
                len(todo),
                writer.counts["failed"],
                done / (last_log - started),
            )


class _ReadStage:
    """Adds the input's output format and bytes to a row, or the reason it cannot be read.

    Never raises (Ray Data does not retry user-code errors, and one would end the whole job): an
    unsafe key, an unsupported extension or any read error is recorded in `error`, and the row goes
    on with no data, to become a failed manifest row.
    """

    def __init__(self, source: Storage) -> None:
        self.source = source

    def __call__(self, row: dict) -> dict:
        start = time.perf_counter()
        row["data"], row["format"], row["error"] = b"", "", ""
        try:
            row["format"] = output_format(check_key(row["key"]))
            row["data"] = self.source.read(row["key"])
        except InvalidKey as error:
            row["error"] = str(error)
        except BadImageError as error:
            row["error"] = f"unsupported format: {error}"
        except NotFound:
            row["error"] = "input not found"
        except Exception as error:  # noqa: BLE001 -- recorded in the manifest, job goes on
            row["error"] = f"read failed: {type(error).__name__}: {error}"
        row["read_ms"] = (time.perf_counter() - start) * 1000
        return row


class _BlurActor:
    """A detector actor: loads the models once, then decodes, detects, blurs and encodes batches."""

    def __init__(self, config: Config) -> None:
        from detection.detector import Detector

        self.config = config
        self.detector = Detector(config.detect)

    def __call__(self, batch: dict) -> dict:
        keys = list(batch["key"])
        readable = [i for i, error in enumerate(batch["error"]) if not error]
        outcomes = self._blur({i: (bytes(batch["data"][i]), str(batch["format"][i])) for i in readable})
        columns: dict[str, list] = {name: [] for name in ("output", "status", "error", "width", "height")}
        columns |= {"boxes": [], "model_id": [], **{c: [] for c in TIMING_COLUMNS if c != "write_ms"}}
        for i in range(len(keys)):
            outcome = outcomes.get(i) or Outcome("failed", error=batch["error"][i])  # unreadable input
            columns["output"].append(outcome.output or b"")
            columns["status"].append(outcome.status)
            columns["error"].append(outcome.error)
            columns["width"].append(outcome.width)
            columns["height"].append(outcome.height)
            columns["boxes"].append(json.dumps(outcome.detections.to_records()))
            columns["model_id"].append(self.detector.model_id)
            columns["read_ms"].append(float(batch["read_ms"][i]))
            for stage in ("decode", "detect", "blur", "encode"):
                columns[f"{stage}_ms"].append(float(outcome.timings_ms.get(stage, 0.0)))
        return {"key": keys, "etag": list(batch["etag"]), "size": list(batch["size"]), **columns}

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


class _WriteStage:
    """Writes a blurred output (only a blurred one) and turns the row into a manifest row."""

    def __init__(self, target: Storage, run_id: str) -> None:
        self.target = target
        self.run_id = run_id

    def __call__(self, row: dict) -> dict:
        start = time.perf_counter()
        status, error = row["status"], row["error"]
        if status == "blurred":
            try:
                self.target.write(row["key"], bytes(row["output"]))
            except Exception as failure:  # noqa: BLE001 -- recorded in the manifest, job goes on
                status, error = "failed", f"write failed: {type(failure).__name__}: {failure}"
        boxes = json.loads(row["boxes"]) if status == "blurred" else []
        return {
            "key": row["key"],
            "output_key": row["key"] if status == "blurred" else None,
            "status": status,
            "error": error,
            "width": row["width"],
            "height": row["height"],
            "faces": sum(b["class"] == "face" for b in boxes),
            "plates": sum(b["class"] == "plate" for b in boxes),
            "boxes": boxes,
            "model_id": row["model_id"],
            **{c: float(row[c]) for c in TIMING_COLUMNS if c != "write_ms"},
            "write_ms": (time.perf_counter() - start) * 1000,
            "etag": row["etag"],
            "size": row["size"],
            "run_id": self.run_id,
            "finished_at": datetime.now(timezone.utc),
        }


def _skipped_row(previous: dict, item: StoredObject, run_id: str) -> dict:
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


class _ManifestWriter:
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


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """The job's command-line options (shared by `streetblur run` and `python -m jobs.blur_job`)."""
    parser.add_argument("--input", required=True, help="s3://bucket/prefix or a local folder")
    parser.add_argument("--output", required=True, help="s3://bucket/prefix or a local folder")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, moto); default: AWS")
    parser.add_argument("--keys-file", help="text file of input keys to process, one a line")
    parser.add_argument(
        "--extensions", default=",".join(INPUT_SUFFIXES), help="input suffixes, comma-separated"
    )
    parser.add_argument("--overwrite", action="store_true", help="redo inputs already done")
    parser.add_argument("--retry-failed", action="store_true", help="redo inputs that failed before")
    parser.add_argument("--actors", type=int, help="detector actors (default: as many as the CPUs allow)")
    parser.add_argument(
        "--actor-cpus", type=float, default=JobOptions.actor_cpus, help="CPUs reserved per detector actor"
    )
    parser.add_argument(
        "--actor-gpus", type=float, default=JobOptions.actor_gpus, help="GPUs per detector actor"
    )
    parser.add_argument(
        "--batch-size", type=int, default=JobOptions.batch_size, help="images per detector call"
    )
    parser.add_argument(
        "--flush-rows", type=int, default=JobOptions.flush_rows, help="manifest rows per Parquet part"
    )
    parser.add_argument("--config", help="options file (YAML), as for `streetblur blur`")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any option")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")


def options_from_args(args: argparse.Namespace) -> JobOptions:
    """`JobOptions` from parsed `add_job_arguments` options."""
    suffixes = tuple(f".{s.strip().lstrip('.').lower()}" for s in args.extensions.split(",") if s.strip())
    unsupported = set(suffixes) - set(FORMAT_BY_SUFFIX)
    if unsupported:
        raise ValueError(f"cannot write {sorted(unsupported)}: outputs keep the input format")
    return JobOptions(
        input_uri=args.input,
        output_uri=args.output,
        endpoint_url=args.endpoint_url,
        keys_file=args.keys_file,
        suffixes=suffixes,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        actors=args.actors,
        actor_cpus=args.actor_cpus,
        actor_gpus=args.actor_gpus,
        batch_size=args.batch_size,
        flush_rows=args.flush_rows,
        config=load_config(args.config, parse_overrides(args.set)),
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the job as `add_job_arguments` options say; print the summary as one JSON line.

    Exit status 0 even when some inputs failed: they are in the manifest, with their reasons.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    summary = run_job(options_from_args(args), address=args.address)
    print(json.dumps(summary))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for `ray job submit -- python -m jobs.blur_job ...` (connects to RAY_ADDRESS)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.blur_job", description=__doc__.split("\n")[0])
    add_job_arguments(parser)
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
