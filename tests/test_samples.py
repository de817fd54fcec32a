"""The sample photos shipped in samples/ are photos of the labelled sets, byte for byte, and
samples/labels.json holds their labels there (as published, plus the boxes of the set's label overlay)."""

from __future__ import annotations

import hashlib
from functools import cache

import numpy as np
import pytest

from eval.datasets import LabelledImage, load_dataset
from tests.conftest import DATASETS, SAMPLES, requires_datasets, sample_labels

SOURCE_SETS = ("faces-crowd", "plates-dashcam")  # CC0 and MIT: the licences that allow shipping


@cache
def labelled_by_content() -> dict[str, LabelledImage]:
    """Every image of SOURCE_SETS, with its labels and overlay, by the SHA-256 of its bytes."""
    images = (image for name in SOURCE_SETS for image in load_dataset(DATASETS / name))
    return {hashlib.sha256(image.path.read_bytes()).hexdigest(): image for image in images}


def test_every_sample_photo_has_labels_and_every_label_a_photo():
    assert sorted(p.name for p in SAMPLES.glob("*.jpg")) == sorted(sample_labels())


@requires_datasets
@pytest.mark.parametrize("name", sorted(sample_labels()))
def test_a_sample_and_its_labels_are_those_of_its_labelled_set(name):
    source = labelled_by_content()[hashlib.sha256((SAMPLES / name).read_bytes()).hexdigest()]
    shipped = sample_labels()[name]
    assert shipped.class_names == source.boxes.class_names
    np.testing.assert_allclose(shipped.xyxy, source.boxes.xyxy, atol=0.01)
