"""Shared test setup: the real data and weights beside the repo (``../shared``), never mocked.

``../shared`` is always present in CI; tests that need it fail loudly if it is not.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("XRCOMPARE_SHARED", REPO.parent / "shared")).resolve()
DATA = SHARED / "data"
WEIGHTS = SHARED / "weights"
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: What the app searches by default (the project's .weights/, where scripts/setup_weights.py
#: builds Xception, then ../shared/weights), set explicitly so a missing file means unavailable
#: and nothing is downloaded during the tests.
PROJECT_WEIGHTS = REPO / ".weights"
os.environ.setdefault("XRCOMPARE_WEIGHTS_DIR", os.pathsep.join([str(PROJECT_WEIGHTS),
                                                               str(WEIGHTS)]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No background model warm-up in the app under test (tests that want it turn it on).
os.environ.setdefault("XRCOMPARE_WARM_UP", "0")


@pytest.fixture(scope="session", autouse=True)
def _shared_is_there():
    if not (DATA / "manifest.csv").is_file() or not WEIGHTS.is_dir():
        pytest.fail(f"the shared data and weights are expected at {SHARED}")


@pytest.fixture(scope="session", autouse=True)
def feature_cache(tmp_path_factory) -> Path:
    """One fresh feature cache for the whole session (never the user's ~/.cache), so a real
    backbone runs once per image and every test sees the same cache."""
    folder = tmp_path_factory.mktemp("feature-cache")
    os.environ["XRCOMPARE_CACHE_DIR"] = str(folder)
    return folder


@pytest.fixture
def resnet50_only_weights(monkeypatch, tmp_path) -> Path:
    """A weights folder that truly holds only ResNet50 (a link to the shared file), set as
    ``XRCOMPARE_WEIGHTS_DIR``, with an empty Keras home: every other backbone is unavailable."""
    folder = tmp_path / "resnet50-only-weights"
    folder.mkdir()
    name = "resnet50_imagenet_notop.weights.h5"
    (folder / name).symlink_to(WEIGHTS / name)
    monkeypatch.setenv("XRCOMPARE_WEIGHTS_DIR", str(folder))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    return folder
