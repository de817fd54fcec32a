"""`streetblur run`: the Ray batch job (`jobs.batch.job`), and its exit status."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from jobs.cli import defaults
from jobs.cli.options import MODELS_HELP, add_config_options, config_from_args

EXIT_OUTPUT_BUSY = 75  # another run holds the output (EX_TEMPFAIL: try again later)
RUN_EXIT_STATUSES = (
    "exit status: 0 done, failed inputs included (the manifest gives their reasons); 1 more than "
    "--max-failed-fraction of the inputs processed failed, or no input was found; 2 usage error; "
    f"{EXIT_OUTPUT_BUSY} another run holds the output: try again later"
)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`streetblur run`."""
    p = commands.add_parser(
        "run",
        help="blur a bucket or folder with the Ray batch job",
        description="Blur every photo under --input into --output on a Ray cluster (a new local "
        "Ray by default), skipping those done before with the same settings, and keep an audit "
        "manifest in OUTPUT/_streetblur/. Prints the run's summary as one JSON line.",
        epilog=RUN_EXIT_STATUSES,
    )
    p.add_argument("--input", required=True, help="s3://bucket/prefix or a local folder")
    p.add_argument("--output", required=True, help="s3://bucket/prefix or a local folder")
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, moto) (default: AWS)")
    p.add_argument(
        "--keys-file", help="text file of input keys to process, one a line (default: list --input)"
    )
    p.add_argument(
        "--extensions", default=",".join(defaults.INPUT_SUFFIXES), help="input suffixes, comma-separated"
    )
    p.add_argument("--overwrite", action="store_true", help="redo inputs already done")
    p.add_argument("--retry-failed", action="store_true", help="redo inputs that failed before")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local Ray)")
    p.add_argument(
        "--actors",
        type=int,
        help="detector actors (default: as many as fit the cluster at the start, then more as it grows)",
    )
    p.add_argument(
        "--actor-cpus", type=float, metavar="C", default=defaults.ACTOR_CPUS, help="CPUs per detector actor"
    )
    p.add_argument("--actor-gpus", type=float, metavar="G", default=0.0, help="GPUs per detector actor")
    p.add_argument(
        "--actor-memory-gb",
        type=float,
        metavar="G",
        default=defaults.ACTOR_MEMORY_GB,
        help="memory reserved per detector actor",
    )
    p.add_argument(
        "--batch-size", type=int, metavar="N", default=defaults.BATCH_SIZE, help="images per detector call"
    )
    p.add_argument(
        "--block-rows",
        type=int,
        metavar="N",
        default=defaults.BLOCK_ROWS,
        help="inputs to do per listing block; the rows of a block make one Parquet part of the manifest",
    )
    p.add_argument(
        "--max-input-bytes",
        type=int,
        metavar="N",
        default=defaults.MAX_INPUT_BYTES,
        help="refuse images larger than this, from the listing's size, before reading them",
    )
    p.add_argument(
        "--video-chunk-mb",
        type=float,
        metavar="MB",
        default=defaults.VIDEO_CHUNK_MB,
        help="cut videos into --batch-size chunks per started MB of this many, detected by several "
        "actors at once (0: one actor per video)",
    )
    p.add_argument(
        "--max-failed-fraction",
        type=float,
        metavar="F",
        default=defaults.MAX_FAILED_FRACTION,
        help="exit 1 when more than this fraction of the inputs processed in this run failed "
        "(0: any failure; 1: never)",
    )
    p.add_argument(
        "--lease-wait",
        type=float,
        metavar="S",
        default=defaults.LEASE_WAIT_S,
        help="seconds to wait for another host's unexpired lease of the output (a retried job's dead "
        "try) before exiting 75; 0: exit at once",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="Ray's own progress, logs and warnings (its C++ core's too) instead of one progress line; "
        "without it they go to Ray's log folder only (/tmp/ray/session_latest/logs on a local Ray)",
    )
    add_config_options(p, MODELS_HELP)
    p.set_defaults(run=_run_job)


def _run_job(args: argparse.Namespace) -> int:
    """Run the batch job; print its summary as one JSON line. Exit status (`RUN_EXIT_STATUSES`) 0 when
    done, even if some inputs failed (they are in the manifest, with their reasons), 1 above
    `--max-failed-fraction` or with no input, `EXIT_OUTPUT_BUSY` if another run holds the output."""
    from jobs.batch.job import JobOptions, run_job
    from jobs.batch.lease import LeaseHeld, LeaseLost
    from jobs.batch.manifest import IndexChanged

    suffixes = tuple(f".{s.strip().lstrip('.').lower()}" for s in args.extensions.split(",") if s.strip())
    unsupported = set(suffixes) - set(defaults.INPUT_SUFFIXES)
    if unsupported:
        raise ValueError(f"cannot write {sorted(unsupported)}: outputs keep the input format")
    options = JobOptions(
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
        actor_memory_gb=args.actor_memory_gb,
        batch_size=args.batch_size,
        block_rows=args.block_rows,
        max_input_bytes=args.max_input_bytes,
        video_chunk_mb=args.video_chunk_mb,
        max_failed_fraction=args.max_failed_fraction,
        lease_wait_s=args.lease_wait,
        verbose=args.verbose,
        config=config_from_args(args),
    )
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        summary = run_job(options, address=args.address)
    except (LeaseHeld, LeaseLost, IndexChanged) as error:  # the parts of a lost run stay for the next
        print(f"streetblur: {error}", file=sys.stderr)
        return EXIT_OUTPUT_BUSY
    print(json.dumps(summary))
    return 1 if summary["failed_fraction_exceeded"] else 0
