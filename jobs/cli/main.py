"""`streetblur` command line: `blur` photos, `run` the batch job, `eval` or `calibrate` a model, `audit`
a labelled set, `train` or `quantize` a model.

The parser of every command: each command's module (`jobs.cli.blur`, `jobs.cli.run`,
`jobs.cli.evaluation`, `jobs.cli.training`) adds its own and calls the library, which it imports (and
torch, Ray and OpenCV with it) only inside the command, so that `--help` and usage errors answer at
once. The options every command that runs the detector takes are in `jobs.cli.options`.
"""

from __future__ import annotations

import argparse
import functools
import sys

from jobs.cli import blur, evaluation, review, run, training, video_eval


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `streetblur` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, ImportError) as error:
        # An ImportError is a usage error only as detection.baselines.MissingPackageError (loaded by
        # the command that raised it), which says what to install.
        missing_package = getattr(sys.modules.get("detection.baselines"), "MissingPackageError", ())
        if isinstance(error, ImportError) and not isinstance(error, missing_package):
            raise
        print(f"streetblur: error: {error}", file=sys.stderr)
        return 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: ...)" to the help of each option with a default that its help does not state."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or action.default == [] or "default" in text:
            return text
        return super()._get_help_string(action)


class _Version(argparse.Action):
    """`--version`: the installed package's version, looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args) -> None:
        from importlib.metadata import version

        print(f"streetblur {version('streetblur')}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The `streetblur` parser with every command."""
    description = " ".join(__doc__.split("\n\n")[0].split())  # the first paragraph
    parser = argparse.ArgumentParser(
        prog="streetblur", description=description, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action=_Version, help="show the version and exit")
    commands = parser.add_subparsers(
        dest="command",
        required=True,
        parser_class=functools.partial(argparse.ArgumentParser, formatter_class=_HelpFormatter),
    )
    for module in (blur, run, evaluation, training, video_eval, review):  # the order of `--help`
        module.add_parsers(commands)
    return parser
