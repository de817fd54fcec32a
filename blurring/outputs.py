"""Which file `streetblur blur` writes each photo to, checked before any model loads so that no input
is ever replaced or read back as one."""

from __future__ import annotations

from pathlib import Path

from blurring.image_io import FORMAT_BY_SUFFIX, BadImageError, output_format


def plan_outputs(
    source: Path, output: Path, into_folder: bool = False, video_suffixes: tuple[str, ...] = ()
) -> list[tuple[Path, Path]]:
    """`(input, output)` file pairs for `streetblur blur SOURCE -o OUTPUT`, checked, before any model
    loads, so that no input is lost and every output can be written.

    A folder is searched recursively for the formats we write (outputs keep each input's format) and
    mirrored under `output`. A photo is written to `output`, or into it under its own name when
    `output` is a folder or `into_folder` (it was given ending in a slash: a new folder). `ValueError`
    when an output would replace an input or land among them: an output folder that is the input
    folder, lies inside it or holds it; an output file that is an input file (through any spelling,
    symlink or hard link) or lies in the input folder through a link; two inputs whose outputs differ
    only in case (one file on macOS and Windows). Also for a photo's output whose extension names no
    format we write. Files ending in one of `video_suffixes` are taken too, and a video's output must
    be one (any of them: the container is chosen by the output's suffix).
    """
    if not source.exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.is_dir():
        suffixes = tuple(FORMAT_BY_SUFFIX) + video_suffixes
        inputs = sorted(p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        if not inputs:
            kinds = "images or videos" if video_suffixes else "images"
            raise ValueError(f"{source}: no {kinds} ({', '.join(suffixes)}) in this folder")
        if output.exists() and not output.is_dir():
            raise ValueError(f"{output}: must be a folder when the input is a folder")
        folder, out = source.resolve(), output.resolve()
        if out == folder or folder in out.parents:
            raise ValueError(
                f"output folder {output} is the input folder {source} or inside it: the outputs would "
                "replace the originals or be read back as inputs; choose a separate folder"
            )
        if out in folder.parents:
            raise ValueError(
                f"output folder {output} contains the input folder {source}: the outputs of its "
                "subfolders would replace the originals; choose a folder outside it"
            )
        pairs = [(p, output / p.relative_to(source)) for p in inputs]
        originals = {(s.st_dev, s.st_ino) for s in (p.stat() for p in inputs)}
        for source_file, target in pairs:
            through_link = folder in target.resolve().parents
            if through_link or (target.exists() and _file_id(target) in originals):
                raise ValueError(
                    f"output {target} of {source_file} is a file in the input folder {source} (through a "
                    "link): it would replace an original or be read back as an input; choose another folder"
                )
    else:
        target = output / source.name if into_folder or output.is_dir() else output
        if target.resolve() == source.resolve() or (target.exists() and target.samefile(source)):
            raise ValueError(f"output {target} is the input {source}: write the blurred photo elsewhere")
        if not target.suffix:
            raise ValueError(
                f"output {output}: no such folder, and no extension to name a file's format "
                f"({', '.join(FORMAT_BY_SUFFIX)}); end it with / to write into a new folder"
            )
        is_video = source.suffix.lower() in video_suffixes
        if is_video != (target.suffix.lower() in video_suffixes):
            raise ValueError(
                f"output {target} of {source}: a video is written as a video ({', '.join(video_suffixes)}) "
                "and a photo as a photo"
            )
        if not is_video:
            try:
                output_format(target)
            except BadImageError as error:
                raise ValueError(str(error)) from None
        pairs = [(source, target)]
    by_name: dict[str, Path] = {}
    for source_file, target in pairs:
        key = str(target.resolve()).casefold()
        if key in by_name:
            raise ValueError(
                f"{by_name[key]} and {source_file} would be written to outputs whose names differ only in "
                "case: on a case-insensitive file system (macOS, Windows) one would replace the other; "
                "rename one"
            )
        by_name[key] = source_file
    return pairs


def _file_id(path: Path) -> tuple[int, int]:
    """The device and inode of a file: the same for every name of it (links, other spellings or case)."""
    status = path.stat()
    return status.st_dev, status.st_ino
