"""The feature cache under faults: damaged entries are recomputed and said, a full disk is
named, and no temporary file is left behind. Real ResNet50 at 32 px on the tiny fixture."""

from __future__ import annotations

import errno
import logging

import numpy as np
import pytest
from conftest import FIXTURES

from xrcompare import features
from xrcompare.features import FeatureExtractor, FeatureSpec

SPEC = FeatureSpec("resnet50", 32)
PATHS = sorted((FIXTURES / "tiny_cxr" / "normal").glob("*.jpg"))[:3]


@pytest.fixture(scope="module")
def base():
    """One frozen base for the module (each extractor would build its own)."""
    return FeatureExtractor(SPEC).base


def entries(cache) -> list:
    return sorted(cache.rglob("*.npy"))


@pytest.mark.parametrize("damage", ["shape", "dtype", "garbage"])
def test_a_damaged_cache_entry_is_recomputed_and_said(tmp_path, base, caplog, damage):
    first = FeatureExtractor(SPEC, cache_dir=tmp_path, base=base).extract(PATHS)
    assert first.computed == 3 and first.cache_notes == []
    target = entries(tmp_path)[1]
    if damage == "shape":
        np.save(target, np.zeros((3, 3, 5), np.float16))
    elif damage == "dtype":
        np.save(target, np.load(target).astype(np.float32))
    else:
        target.write_bytes(b"\x93NUMPY garbage")
    with caplog.at_level(logging.WARNING, logger="xrcompare.features"):
        again = FeatureExtractor(SPEC, cache_dir=tmp_path, base=base).extract(PATHS)
    assert (again.cached, again.computed) == (2, 1)
    # One image alone against a batch of three: oneDNN may sum in another order (AVX2 CPUs
    # do), which can move a value across a float16 rounding step of the cache (2**-10).
    assert np.allclose(again.features, first.features, rtol=2e-3, atol=1e-3)
    assert len(again.cache_notes) == 1 and "1 damaged entry recomputed" in again.cache_notes[0]
    assert str(tmp_path) in again.cache_notes[0] and target.name in again.cache_notes[0]
    assert again.cache_notes[0] in caplog.text
    assert np.load(target).shape == first.features.shape[1:]  # repaired on disk


def test_a_wrong_shape_entry_is_found_without_the_base_when_entries_disagree(tmp_path, base):
    FeatureExtractor(SPEC, cache_dir=tmp_path, base=base).extract(PATHS)
    np.save(entries(tmp_path)[0], np.zeros((2, 2, 7), np.float16))
    fresh = FeatureExtractor(SPEC, cache_dir=tmp_path)  # no base yet: shapes disagree
    result = fresh.extract(PATHS)
    assert result.features.shape == (3, 1, 1, 2048) and result.computed == 1


def test_a_full_disk_is_named_leaves_no_temporary_and_loses_nothing(tmp_path, base,
                                                                    monkeypatch):
    def save_to_a_full_disk(path, array):
        with open(path, "wb") as partial:  # the half-written temporary the probe found
            partial.write(b"\x93NUMPY")
        with open("/dev/full", "wb") as disk:  # a real ENOSPC from the kernel
            disk.write(b"x" * 4096)
            disk.flush()

    monkeypatch.setattr(features.np, "save", save_to_a_full_disk)
    result = FeatureExtractor(SPEC, cache_dir=tmp_path, base=base).extract(PATHS)
    assert result.features.shape == (3, 1, 1, 2048)  # the features are all there
    assert result.cache_notes and result.cache_notes[0].startswith(f"disk full at {tmp_path}")
    assert not list(tmp_path.rglob("*.tmp.npy")) and not entries(tmp_path)


def test_other_write_errors_name_the_cache_folder(tmp_path, base, monkeypatch):
    def refuse(path, array):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(features.np, "save", refuse)
    result = FeatureExtractor(SPEC, cache_dir=tmp_path, base=base).extract(PATHS[:1])
    assert result.cache_notes[0].startswith(f"cannot write the feature cache at {tmp_path} "
                                            "(Permission denied)")
