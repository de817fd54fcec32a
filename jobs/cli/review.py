"""`streetblur review`: the review page over a job's output (the `review` package), and its `export` and
`stats`. Starlette and uvicorn (the `[review]` extra) are imported only when the page is served."""

from __future__ import annotations

import argparse
import getpass
import json
from importlib.util import find_spec
from pathlib import Path

ACTIONS = ("export", "stats")
DEFAULT_SEED = "streetblur-review"  # review.queue's random slice; stats must use the review's seed
INSTALL_HINT = "the review page needs Starlette and uvicorn: pip install 'streetblur[review]'"


def add_parsers(commands: argparse._SubParsersAction) -> None:
    """`streetblur review`."""
    p = commands.add_parser(
        "review",
        help="check a job's output in a web page, fix misses and false blurs, export them to train",
        usage="streetblur review [export|stats] OUTPUT [options]",
        description="`review OUTPUT` serves the review page over a job's output (folder or s3://); "
        "`review export OUTPUT --out DIR` writes its fully reviewed images as a YOLO dataset; "
        "`review stats OUTPUT` gives the miss and false-blur rates on the random slice. (An output "
        "folder named `export` or `stats` is written ./export.)",
    )
    p.add_argument(
        "words", nargs="+", metavar="OUTPUT", help="the job's output, after `export` or `stats` if given"
    )
    p.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO, moto) (default: AWS)")
    p.add_argument(
        "--input", help="where the originals are now (default: the input each run's summary names)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to serve on; beyond loopback needs --token")
    p.add_argument("--port", type=int, default=8765, help="port to serve on")
    p.add_argument("--token", help="require this token on every request (needed beyond loopback)")
    p.add_argument("--reviewer", default=getpass.getuser(), help="the name verdicts are recorded under")
    p.add_argument("--seed", default=DEFAULT_SEED, help="seed of the random slice (about 10%% of images)")
    p.add_argument("--out", type=Path, help="export: the dataset folder to write (replaced)")
    p.add_argument(
        "--max-background",
        type=float,
        default=0.25,
        metavar="F",
        help="export: background images (no face or plate) at most this fraction of the labelled ones",
    )
    p.set_defaults(run=_run_review)


def _run_review(args: argparse.Namespace) -> int:
    action, output_uri = _action_and_output(args.words)
    if action == "export" and args.out is None:
        raise ValueError("review export: --out DIR is required")
    if action is None and (find_spec("starlette") is None or find_spec("uvicorn") is None):
        raise ValueError(INSTALL_HINT)
    from review.output import ReviewedOutput
    from storage.objects import Storage

    output = ReviewedOutput(Storage(output_uri, args.endpoint_url), args.input)
    if action == "export":
        from review.export import export_dataset

        print(json.dumps(export_dataset(output, args.out, args.seed, args.max_background), indent=2))
    elif action == "stats":
        from review.export import review_stats

        print(json.dumps(review_stats(output, args.seed), indent=2))
    else:
        from review.app import ReviewSession, serve

        serve(ReviewSession(output, args.reviewer, args.seed), args.host, args.port, args.token)
    return 0


def _action_and_output(words: list[str]) -> tuple[str | None, str]:
    """(`export`, `stats` or None for the page; the output) from `review`'s words."""
    if len(words) == 1:
        return None, words[0]
    if len(words) == 2 and words[0] in ACTIONS:
        return words[0], words[1]
    raise ValueError(f"review: expected OUTPUT, export OUTPUT or stats OUTPUT, got {' '.join(words)}")
