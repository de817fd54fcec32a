"""Defaults that `streetblur --help` shows, in a module that imports nothing heavy.

The command modules build their parsers from these and import the packages that do the work (and
torch, Ray and OpenCV with them) only inside the commands, so that `--help` and usage errors answer at
once. Values owned by a heavy module are copied here; tests/test_cli.py checks that each copy agrees.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

# The shipped weights' folder, found without importing `detection` (its modules load OpenCV)
WEIGHTS = Path(find_spec("detection").submodule_search_locations[0]).resolve() / "weights"
DEFAULT_MODEL = WEIGHTS / "streetblur-n.pt"  # the shipped weights: detection.detector.DEFAULT_MODEL
DEFAULT_PSEUDO_LABELS = WEIGHTS / "pseudo-labels.json"  # jobs.training.labels.SHIPPED_PSEUDO_LABELS
SELF_LABEL_THRESHOLD = 0.6  # jobs.training.labels.SELF_LABEL_THRESHOLD
AUDIT_THRESHOLD = 0.1  # eval.audit.AUDIT_THRESHOLD

# `streetblur train` writes here by default (relative to the working folder), and `quantize` reads it
TRAINED_MODEL = Path("runs") / "train" / "streetblur-n.pt"
DATASETS_ENV = "STREETBLUR_DATASETS"  # the folder holding the labelled sets, for train and quantize

# The batch job (jobs.batch.job.JobOptions and jobs.ray_cluster)
# the formats blurring.image_io writes, and video.config.VIDEO_SUFFIXES
INPUT_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".mp4", ".mov", ".mkv", ".avi")
ACTOR_CPUS = 0.75  # jobs.ray_cluster.ACTOR_CPUS
BATCH_SIZE = 4  # jobs.ray_cluster.BATCH_SIZE
BLOCK_ROWS = 64  # jobs.batch.job.JobOptions.block_rows
LEASE_WAIT_S = 150.0  # jobs.batch.lease.LEASE_WAIT_S
MAX_INPUT_BYTES = 1 << 30
VIDEO_CHUNK_MB = 64.0  # jobs.batch.job.JobOptions.video_chunk_mb
ACTOR_MEMORY_GB = 2.0
MAX_FAILED_FRACTION = 0.5
