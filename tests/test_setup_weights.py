"""scripts/setup_weights.py: skip a file that is there with the right sha256, rebuild a wrong
one through a temporary name, say so when ../shared is missing, one line on failure.

The real rebuild downloads a wheel from PyPI; that is .ci/run's job, so these tests drive the
script with a stand-in rebuild script (same command line) and small files.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys

import pytest
from conftest import REPO, WEIGHTS

SCRIPT = REPO / "scripts" / "setup_weights.py"
CONTENT = b"stand-in weights\n"


@pytest.fixture(scope="module")
def setup_weights():
    spec = importlib.util.spec_from_file_location("setup_weights", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_shared(folder, content: bytes = CONTENT, exit_code: int = 0):
    """A shared folder whose rebuild script writes ``content`` to its OUT argument and leaves
    a marker each time it runs."""
    weights = folder / "weights"
    weights.mkdir(parents=True)
    (weights / "rebuild_from_pypi.py").write_text(
        "import pathlib, sys\n"
        "here = pathlib.Path(__file__).parent\n"
        "(here / 'ran').open('a').write(sys.argv[1] + '\\n')\n"
        f"if {exit_code}:\n"
        "    print('pip: no route to pypi.org', file=sys.stderr)\n"
        f"    sys.exit({exit_code})\n"
        f"pathlib.Path(sys.argv[2]).write_bytes({content!r})\n", encoding="utf-8")
    return folder


def runs_of(shared) -> list[str]:
    marker = shared / "weights" / "ran"
    return marker.read_text().split() if marker.exists() else []


def test_expected_sha256_is_the_one_the_weights_readme_lists(setup_weights):
    readme = (WEIGHTS / "README.md").read_text(encoding="utf-8")
    row = next(line for line in readme.splitlines()
               if line.startswith("| `xception_imagenet_notop.weights.h5`"))
    assert setup_weights.BUILT_WEIGHTS["xception"] == re.findall(r"`([0-9a-f]{64})`", row)[0]


def test_present_file_with_the_right_hash_builds_nothing(setup_weights, tmp_path, monkeypatch,
                                                          capsys):
    shared = fake_shared(tmp_path / "shared")
    target = tmp_path / ".weights" / "xception_imagenet_notop.weights.h5"
    target.parent.mkdir()
    target.write_bytes(b"the validated file")
    monkeypatch.setitem(setup_weights.BUILT_WEIGHTS, "xception",
                        hashlib.sha256(b"the validated file").hexdigest())
    assert setup_weights.main(["--shared", str(shared), "--weights-dir",
                               str(target.parent)]) == 0
    assert "present, sha256 checked" in capsys.readouterr().out
    assert runs_of(shared) == [] and target.read_bytes() == b"the validated file"


def test_missing_or_wrong_file_is_rebuilt_through_a_temporary_name(setup_weights, tmp_path):
    shared = fake_shared(tmp_path / "shared")
    rebuild = shared / "weights" / "rebuild_from_pypi.py"
    target = tmp_path / ".weights" / "xception_imagenet_notop.weights.h5"
    expected = hashlib.sha256(CONTENT).hexdigest()
    assert setup_weights.ensure("xception", expected, target, rebuild) == "built"
    assert target.read_bytes() == CONTENT and runs_of(shared) == ["xception"]
    assert setup_weights.ensure("xception", expected, target, rebuild) == "present"
    assert runs_of(shared) == ["xception"]  # not rebuilt
    target.write_bytes(b"truncated")
    assert setup_weights.ensure("xception", expected, target, rebuild) == "built"
    assert target.read_bytes() == CONTENT
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temporaries


def test_a_rebuild_with_another_hash_is_not_installed(setup_weights, tmp_path):
    shared = fake_shared(tmp_path / "shared", content=b"something else")
    target = tmp_path / ".weights" / "xception_imagenet_notop.weights.h5"
    with pytest.raises(setup_weights.SetupError, match="has sha256 .* not installed"):
        setup_weights.ensure("xception", hashlib.sha256(CONTENT).hexdigest(), target,
                             shared / "weights" / "rebuild_from_pypi.py")
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_failure_is_one_line_and_non_zero(tmp_path):
    shared = fake_shared(tmp_path / "shared", exit_code=3)
    result = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(shared),
                             "--weights-dir", str(tmp_path / ".weights")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert result.stderr.startswith("error: building xception_imagenet_notop.weights.h5")
    assert "no route to pypi.org" in result.stderr
    assert not (tmp_path / ".weights" / "xception_imagenet_notop.weights.h5").exists()


def test_without_shared_it_says_so_and_does_nothing(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--shared", str(tmp_path / "none"),
                             "--weights-dir", str(tmp_path / ".weights")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "nothing to set up" in lines[0]
    assert not (tmp_path / ".weights").exists()


def test_script_imports_only_the_standard_library():
    text = SCRIPT.read_text(encoding="utf-8")
    imported = set(re.findall(r"^(?:import|from) (\w+)", text, flags=re.MULTILINE))
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def test_its_folders_are_the_package_ones(setup_weights):
    from xrcompare.paths import PROJECT_WEIGHTS_DIR, SHARED_DIR

    assert setup_weights.REPO / ".weights" == PROJECT_WEIGHTS_DIR
    assert setup_weights.REPO.parent / "shared" == SHARED_DIR
