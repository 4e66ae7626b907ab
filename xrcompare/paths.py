"""Where things are: the repository root and every folder read from an environment variable.

One place answers "where": the runs, the datasets, the sidebar's training jobs, the feature
cache, the weights folders searched by default, the shipped samples and the benchmark
results. Each folder variable, when set and not blank, wins over its default; defaults are
relative to the repository (or ``../shared`` beside it), so the app, the CLI, the scripts and
the tests agree wherever they are started from. No heavy imports here.
"""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the folder holding ``xrcompare/``, ``app_pages/``, ``trained/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: The shared data and weights beside the repository (read-only).
SHARED_DIR = REPO_ROOT.parent / "shared"
#: Sample X-rays shipped with the repository (licences in ``samples/README.md``).
SAMPLES_DIR = REPO_ROOT / "samples"
#: What the benchmark scripts measured on this machine (read by the leaderboard).
BENCHMARK_RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
#: The project's own weights folder (ignored by git; ``scripts/setup_weights.py`` fills it).
PROJECT_WEIGHTS_DIR = REPO_ROOT / ".weights"
#: Weights folders searched, in order, when ``XRCOMPARE_WEIGHTS_DIR`` is unset (those that
#: exist): the project's ``.weights/``, then the shared weights.
DEFAULT_WEIGHTS_DIRS = (PROJECT_WEIGHTS_DIR, SHARED_DIR / "weights")

RUNS_DIR_VARIABLE = "XRCOMPARE_RUNS_DIR"
DATA_ROOT_VARIABLE = "XRCOMPARE_DATA_ROOT"
JOBS_DIR_VARIABLE = "XRCOMPARE_JOBS_DIR"
CACHE_DIR_VARIABLE = "XRCOMPARE_CACHE_DIR"
WEIGHTS_DIR_VARIABLE = "XRCOMPARE_WEIGHTS_DIR"


def _folder(variable: str) -> Path | None:
    value = os.environ.get(variable, "").strip()
    return Path(value).expanduser() if value else None


def runs_dir() -> Path:
    """Run folders: ``$XRCOMPARE_RUNS_DIR``, default ``trained/`` in the repository."""
    return _folder(RUNS_DIR_VARIABLE) or REPO_ROOT / "trained"


def data_root() -> Path:
    """Datasets: ``$XRCOMPARE_DATA_ROOT``, default ``../shared/data``. The sidebar offers the
    folders under it, and the image folders a run recorded are read only from inside it."""
    return _folder(DATA_ROOT_VARIABLE) or SHARED_DIR / "data"


def jobs_dir() -> Path:
    """The sidebar's training jobs: ``$XRCOMPARE_JOBS_DIR``, default ``jobs/``."""
    return _folder(JOBS_DIR_VARIABLE) or REPO_ROOT / "jobs"


def cache_dir() -> Path:
    """The feature cache: ``$XRCOMPARE_CACHE_DIR``, default ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) ``/xrcompare/features``."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return _folder(CACHE_DIR_VARIABLE) or cache_home / "xrcompare" / "features"


def weights_dirs_from_environment() -> list[Path] | None:
    """The folders ``$XRCOMPARE_WEIGHTS_DIR`` names (several separated by ``os.pathsep``),
    or None when it is unset or blank (then :data:`DEFAULT_WEIGHTS_DIRS` apply)."""
    value = os.environ.get(WEIGHTS_DIR_VARIABLE, "").strip()
    if not value:
        return None
    return [Path(part.strip()).expanduser() for part in value.split(os.pathsep) if part.strip()]


def from_repo(path: str | Path) -> Path:
    """A path as written (absolute, or relative to the repository root)."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path
