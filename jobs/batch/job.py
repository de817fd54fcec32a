"""Ray batch job: blur every image and video under an input URI into an output URI, with an audit
manifest. A video is cut into chunks that several detector actors detect at once, and the actor that
detects its last chunk blurs and writes it whole (`jobs.batch.videos`).

    streetblur run --input DIR_OR_URI --output DIR_OR_URI [--address ADDR]   # local Ray if none
    ray job submit --address ADDR -- streetblur run --input s3://bucket/raw --output s3://bucket/blurred

Stages (Ray Data, streaming in small blocks, so memory stays bounded whatever the bucket size and
the first images start while the listing goes on):
  listing (one Ray task, `jobs.batch.listing`: key order, skips what is done)  ->  read bytes (an actor
  pool, fractional CPU)  ->  decode, detect (tiled, batched), blur, encode (a pool of detector actors,
  `jobs.batch.actor`, models loaded once each; without `actors`, it grows with the cluster)  ->  write
  output (an actor pool)  ->  manifest rows, written by the driver as one Parquet part per listing block.

Under the output root, `_streetblur/` holds the audit trail (see `jobs.batch.manifest`): per run, its
manifest rows as Parquet parts and `summary.json`; `manifest.json`, the index of the current state
(the latest row of every input), which each run compacts its parts into at its end. One run at a
time writes an output (`jobs.batch.lease`). A re-run skips an input only when its manifest row has the
same ETag and the same settings digest (`blurring.config.settings_digest`: the weights' hashes,
the runtime and precision they run in, and every detection, blur and output option that changes an
output's pixels or bytes); other settings redo everything. `--retry-failed` redoes the inputs that
failed. A run killed midway keeps the parts it wrote; the next run compacts them first, then does
the rest. A run whose pipeline raises writes the rows it finished, then raises.

One bad input never stops the job: an unsafe key (empty, absolute, with `..`), a local file name that
is not UTF-8, an unsupported extension, an input over `max_input_bytes`, a missing or unreadable
object, an undecodable image all become failed rows with the reason. Fail closed: an output is
written only for an image whose decoding, detection and blur succeeded. The output and the input may
not contain one another (outputs would replace inputs, or be read back as inputs). A run in which
more than `max_failed_fraction` of the inputs it processed failed (or that finds no input) says so in
its summary, and `streetblur run` exits 1.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from blurring.config import Config, output_settings, settings_digest
from blurring.image_io import FORMAT_BY_SUFFIX, BadImageError, output_format
from detection.detector import model_id, resolve_models
from jobs.batch.actor import ImagePipelineActor
from jobs.batch.lease import LEASE_WAIT_S, Lease
from jobs.batch.listing import ListingCounts, ListInputsToDo, ResumeRule
from jobs.batch.manifest import (
    TIMING_COLUMNS,
    ManifestPartWriter,
    compact,
    new_run_id,
    read_index,
    uncompacted_runs,
    write_summary,
)
from jobs.batch.verdicts import reviewer_boxes
from jobs.batch.videos import ChunkTally, chunk_count, remove_chunks
from jobs.ray_cluster import ACTOR_CPUS, BATCH_SIZE, IO_CPUS, start_ray, with_actor_pool
from storage.objects import InvalidKey, NotFound, Storage, check_key
from video.config import VIDEO_SUFFIXES, is_video_key

log = logging.getLogger("streetblur.job")

# Outputs keep the input's format, so only writable ones; and videos (`jobs.batch.videos`)
INPUT_SUFFIXES = tuple(FORMAT_BY_SUFFIX) + VIDEO_SUFFIXES
LISTING_CPUS = 0  # the listing task waits on storage: it reserves no CPU, so actors never starve it
# Ray Data's block size target: one row a block, so that keys flow at once, and so that the chunks of a
# video (rows without bytes) reach several actors: rows in one block go to one actor.
STREAM_BLOCK_BYTES = 1


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
    actors: int | None = None  # detector actors; None: as many as fit now, then more as the cluster grows
    actor_cpus: float = ACTOR_CPUS  # below 1 on purpose: leaves room for the read/write tasks
    actor_gpus: float = 0.0
    io_cpus: float = IO_CPUS  # CPUs per read/write task: small, so actors do not starve them
    batch_size: int = BATCH_SIZE  # images per actor call; their tiles share model batches
    block_rows: int = 64  # inputs to do per listing block: one manifest part of the run each
    # how long to wait on another host's unexpired lease of the output (a retry of this job on a new
    # host: the dead try's lease is not renewed, and is taken over once expired); 0: refuse at once
    lease_wait_s: float = LEASE_WAIT_S
    max_input_bytes: int = 1 << 30  # larger inputs fail from their listed size, unread (videos: no limit)
    # Per started this many MB of a video, `batch_size` chunks (an actor's batch) that one actor detects
    # while others detect the rest; 0: one actor per video (`jobs.batch.videos.chunk_count`)
    video_chunk_mb: float = 64.0
    # memory Ray reserves per detector actor: measured peaks 1.0 GB with 4 1280x720 frames a batch, 2.2 GB
    # with 4 8192x4096 panoramas (OpenVINO INT8, 2026-12); raise it for larger images or batches
    actor_memory_gb: float = 2.0
    max_failed_fraction: float = 0.5  # above this share of failed inputs (of those done), the run fails
    log_every_s: float = 10.0  # progress log lines, when there is no progress bar
    # False: one progress line on a terminal (else a log line every log_every_s), and Ray's own
    # progress blocks and info logs off (they stay in Ray's log folder); True: Ray's output as is.
    verbose: bool = False
    config: Config = field(default_factory=Config)


def run_job(options: JobOptions, address: str | None = None) -> dict:
    """Run the job on the Ray cluster at `address` (None: `RAY_ADDRESS`, else a new local Ray).

    Raises `ValueError`, before anything runs, for a missing local input folder or an output and an
    input that contain one another; `LeaseHeld` if another run is writing to the output. The summary's
    `failed_fraction_exceeded` is true when more than `max_failed_fraction` of the inputs done failed,
    or when there was no input at all.
    """
    started = time.perf_counter()
    source = Storage(options.input_uri, options.endpoint_url)
    target = Storage(options.output_uri, options.endpoint_url)
    check_locations(source, target)
    # What the actors will record: the weights that run on their device (hashed here, nothing loaded).
    actor_device = options.config.detect.device or ("cuda" if options.actor_gpus > 0 else "cpu")
    runtime, precision, weights = resolve_models(options.config.detect, actor_device)
    settings = output_settings(options.config, model_id(weights), runtime, precision)
    video_settings = output_settings(options.config, model_id(weights), runtime, precision, video=True)
    rule = ResumeRule(
        settings_digest(settings), settings_digest(video_settings), options.overwrite, options.retry_failed
    )
    with Lease(target, new_run_id(), wait_s=options.lease_wait_s) as lease:
        # The run's id is minted again once it holds the lease, so that its rows sort after those of
        # every re-render (`review`) written while it waited; the lease then names it.
        run_id = lease.run_id = new_run_id()
        lease.verify()
        index = read_index(target)
        leftover = uncompacted_runs(target, index)
        if leftover:
            log.info("compacting the manifest parts of %d earlier runs that did not finish", len(leftover))
            index = compact(target, index, leftover, lease)
        log.info("run %s: settings %s; %d inputs done before", run_id, rule.settings_digest, index["rows"])
        settings_of_run = {
            "settings_digest": rule.settings_digest,  # of the photos
            "settings": settings,
            "video_settings_digest": rule.video_settings_digest,  # of the videos: the `video` options too
        }
        started_summary = {"run_id": run_id, "input": options.input_uri, "output": options.output_uri}
        # Written before any row, so a run killed midway still says how its rows were made.
        write_summary(target, run_id, started_summary | {"finished": False} | settings_of_run)
        start_ray(address, verbose=options.verbose)
        parts = ManifestPartWriter(target, run_id)
        try:
            listed = run_pipeline(source, target, options, rule, parts, run_id)
        finally:
            parts.flush()  # even if the pipeline raised: the rows it finished are kept, and skipped next time
        compact(target, index, [run_id], lease)  # renews the lease first: `LeaseLost` if taken over
    wall = time.perf_counter() - started
    processed = parts.counts["blurred"] + parts.counts["failed"]
    failed_fraction = parts.counts["failed"] / processed if processed else 0.0
    summary = {
        **started_summary,
        "finished": True,
        "inputs": listed["inputs"],
        **parts.counts,
        "skipped": listed["skipped"],
        "skipped_failed": listed["skipped_failed"],
        "wall_s": round(wall, 2),
        "images_per_s": round(processed / wall, 3) if processed else 0.0,
        "actors": options.actors or "autoscaling",
        "failed_fraction": round(failed_fraction, 4),
        "max_failed_fraction": options.max_failed_fraction,
        "failed_fraction_exceeded": failed_fraction > options.max_failed_fraction or not listed["inputs"],
        **settings_of_run,
    }
    write_summary(target, run_id, summary)
    log.info("summary: %s", json.dumps(summary))
    if not listed["inputs"]:
        log.error("no inputs under %s with suffixes %s", options.input_uri, ", ".join(options.suffixes))
    elif summary["failed_fraction_exceeded"]:
        log.error(
            "%d of %d inputs failed (%.1f%%, above --max-failed-fraction %s): see the manifest for reasons",
            parts.counts["failed"],
            processed,
            100 * failed_fraction,
            options.max_failed_fraction,
        )
    if listed["skipped_failed"]:
        log.warning(
            "%d inputs skipped that failed in an earlier run (see the manifest); --retry-failed redoes them",
            listed["skipped_failed"],
        )
    return summary


def check_locations(source: Storage, target: Storage) -> None:
    """`ValueError` for a missing local input folder, or an output and an input that contain one
    another (or are one).

    An output key is its input's key under the output root, so an output root that contains the input
    root would write over inputs (`--input s3://b/raw --output s3://b`: `raw/a.jpg` is written to
    `s3://b/raw/a.jpg`), and one inside the input root would be listed as inputs by the next run.
    With the two roots apart, no output can ever land on an input.
    """
    if not source.is_s3 and not source.root.is_dir():
        raise ValueError(f"--input {source.uri}: no such folder")
    if source.is_s3 != target.is_s3:
        return
    if source.is_s3:
        nested = target.prefix.startswith(source.prefix) or source.prefix.startswith(target.prefix)
        overlap = source.bucket == target.bucket and nested
    else:
        input_dir, output_dir = source.root.resolve(), target.root.resolve()
        overlap = (
            input_dir == output_dir or input_dir in output_dir.parents or output_dir in input_dir.parents
        )
    if overlap:
        raise ValueError(
            f"--output {target.uri} and the input {source.uri} are one, or one is inside the other: "
            "outputs would replace inputs or be read back as inputs; write them to a separate folder "
            "or prefix"
        )


def run_pipeline(
    source: Storage,
    target: Storage,
    options: JobOptions,
    rule: ResumeRule,
    parts: ManifestPartWriter,
    run_id: str,
) -> dict:
    """List, read, blur and write every input to do on the connected Ray cluster, handing each finished
    input's manifest row to `parts` as it comes; the listing's counts (`ListingCounts`) at the end.

    Ray Data streams, in small blocks so that the first images start while the listing goes on; the
    memory of every stage stays bounded whatever the bucket size.
    """
    import ray

    ray.data.DataContext.get_current().target_max_block_size = STREAM_BLOCK_BYTES
    reviewed = reviewer_boxes(target)  # a redone image keeps the boxes reviewers added to it
    listing_counts = ray.remote(num_cpus=0)(ListingCounts).remote()
    keys = None if options.keys_file is None else ray.put(Path(options.keys_file).read_bytes())
    listing = ListInputsToDo(
        source, target, options.suffixes, keys, rule, run_id, options.block_rows, listing_counts
    )
    # Its own CPU share, unlike the read stage's: Ray Data then keeps it out of the read stage's actors
    # (fused, one process would list and read every image).
    dataset = ray.data.read_datasource(listing, override_num_blocks=1, num_cpus=LISTING_CPUS)
    io_pool = ray.data.ActorPoolStrategy(min_size=1, max_size=options.actors)
    chunk_bytes = round(options.video_chunk_mb * 2**20)
    dataset = dataset.flat_map(
        _ReadStage,
        fn_constructor_args=(source, options.max_input_bytes, chunk_bytes, options.batch_size, reviewed),
        compute=io_pool,
        num_cpus=options.io_cpus,
    )
    tally = ray.remote(num_cpus=0)(ChunkTally).remote()
    dataset = with_actor_pool(
        dataset,
        ImagePipelineActor,
        {"config": options.config, "source": source, "target": target, "tally": tally},
        options.actors,
        options.batch_size,
        options.actor_cpus,
        options.actor_gpus,
        options.io_cpus,
        options.actor_memory_gb,
    )
    dataset = dataset.map(
        _WriteStage, fn_constructor_args=(target, run_id), compute=io_pool, num_cpus=options.io_cpus
    )
    bar = tqdm(unit="img", desc="blurred", disable=options.verbose or not sys.stderr.isatty())
    counts = ray.get(listing_counts.get.remote())
    last_log = started = time.perf_counter()
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        rows = batch.to_pylist()
        parts.add(rows)
        for key in [row["key"] for row in rows if is_video_key(row["key"])]:
            _remove_video_chunks(target, key)
        bar.update(batch.num_rows)
        bar.set_postfix_str(f"{parts.counts['failed']} failed", refresh=False)
        if time.perf_counter() - last_log >= (2.0 if not bar.disable else options.log_every_s):
            last_log = time.perf_counter()
            counts = ray.get(listing_counts.get.remote())
            bar.total = counts["queued"] if counts["complete"] else None
            if bar.disable:
                _log_progress(parts.counts, counts, last_log - started)
    bar.close()
    counts = ray.get(listing_counts.get.remote())
    _log_progress(parts.counts, counts, time.perf_counter() - started)
    return counts


def _remove_video_chunks(target: Storage, key: str) -> None:
    """`remove_chunks` of a video whose row is in; a failure is logged, not raised (its output and row
    are written: the chunks only take room, and the next run of that video removes them)."""
    try:
        remove_chunks(target, key)
    except Exception as error:  # noqa: BLE001 -- best effort, see above
        log.warning("could not remove the stored chunks of %s: %s", key, error)


def _log_progress(done_counts: dict, listing: dict, seconds: float) -> None:
    done = done_counts["blurred"] + done_counts["failed"]
    total = f"{listing['queued']}" if listing["complete"] else f"{listing['queued']}+ (listing)"
    log.info(
        "progress: %d/%s done, %d failed, %d skipped, %.2f images/s",
        done,
        total,
        done_counts["failed"],
        listing["skipped"],
        done / seconds if seconds else 0.0,
    )


class _ReadStage:
    """Adds the input's output format and bytes to a row, or the reason it cannot be read; a video's row
    becomes one row per chunk (`chunk`, `chunks`), which the detector actors read from storage.

    Never raises (Ray Data does not retry user-code errors, and one would end the whole job): an
    unsafe key, an unsupported extension, a size over `max_bytes` (from the listing, so the input is
    never read) or any read error is recorded in `error`, and the row goes on with no data, to become
    a failed manifest row. So is an error the listing found (a name that is not UTF-8).
    """

    def __init__(
        self,
        source: Storage,
        max_bytes: int,
        chunk_bytes: int,
        batch_size: int,
        reviewed: dict[str, list[dict]],
    ) -> None:
        self.source, self.max_bytes = source, max_bytes
        self.chunk_bytes, self.batch_size = chunk_bytes, batch_size
        self.reviewed = reviewed

    def __call__(self, row: dict) -> list[dict]:
        start = time.perf_counter()
        row["data"], row["format"], row["chunk"], row["chunks"] = b"", "", 0, 1
        # JSON, as the boxes elsewhere: a batch's column of empty lists alone would be a 0-wide tensor
        row["reviewer_boxes"] = json.dumps(self.reviewed.get(row["key"], []))
        if row["error"]:
            row["read_ms"] = 0.0
            return [row]
        try:
            if is_video_key(check_key(row["key"])):  # read by the actors that blur it, from storage
                row["format"], row["read_ms"] = "video", 0.0
                count = chunk_count(row["size"], self.chunk_bytes, self.batch_size)
                return [row | {"chunk": index, "chunks": count} for index in range(count)]
            row["format"] = output_format(check_key(row["key"]))
            size = row["size"]
            if size <= self.max_bytes:
                row["data"] = self.source.read(row["key"])
                size = len(row["data"])
            if size > self.max_bytes:  # listed so, or grown since
                row["data"] = b""
                row["error"] = f"input is {size:,} bytes, over --max-input-bytes {self.max_bytes:,}"
        except InvalidKey as error:
            row["error"] = str(error)
        except BadImageError as error:
            row["error"] = f"unsupported format: {error}"
        except NotFound:
            row["error"] = "input not found"
        except Exception as error:  # noqa: BLE001 -- recorded in the manifest, job goes on
            row["error"] = f"read failed: {type(error).__name__}: {error}"
        row["read_ms"] = (time.perf_counter() - start) * 1000
        return [row]


class _WriteStage:
    """Writes a blurred output (only a blurred one) and turns the row into a manifest row."""

    def __init__(self, target: Storage, run_id: str) -> None:
        self.target = target
        self.run_id = run_id

    def __call__(self, row: dict) -> dict:
        start = time.perf_counter()
        status, error = row["status"], row["error"]
        if status == "blurred" and not row["video"]:  # a video's actor wrote it
            try:
                self.target.write(row["key"], bytes(row["output"]))
            except Exception as failure:  # noqa: BLE001 -- recorded in the manifest, job goes on
                status, error = "failed", f"write failed: {type(failure).__name__}: {failure}"
        blurred = status == "blurred"
        return {
            "key": row["key"],
            "output_key": row["key"] if blurred else None,
            "status": status,
            "error": error,
            "width": row["width"],
            "height": row["height"],
            "faces": row["faces"] if blurred else 0,
            "plates": row["plates"] if blurred else 0,
            "boxes": json.loads(row["boxes"]) if blurred else [],
            "model_id": row["model_id"],
            "settings_digest": row["settings_digest"],
            **{c: float(row[c]) for c in TIMING_COLUMNS if c != "write_ms"},
            "write_ms": (time.perf_counter() - start) * 1000,
            "etag": row["etag"],
            "size": row["size"],
            "run_id": self.run_id,
            "finished_at": datetime.now(timezone.utc),
            "proposals": json.loads(row["proposals"]) if blurred else [],
            "block": row["block"],
            "block_todo": row["block_todo"],
            "frames": row["frames"],
            "streams_dropped": json.loads(row["streams_dropped"]),
            "detections_key": row["detections_key"],
        }
