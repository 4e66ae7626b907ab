"""benchmarks/train_speed.py runs for VGG16, ResNet50 and Xception on a tiny subset and ends
with one ``speedup_<backbone>: X`` line per backbone (figures are measured by running the
script, see README)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from conftest import FIXTURES, REPO


def test_train_speed_reports_each_backbone_in_its_last_lines(tmp_path):
    result = subprocess.run(
        [sys.executable, "benchmarks/train_speed.py", "--data", str(FIXTURES / "tiny_cxr"),
         "--backbones", "vgg16", "resnet50", "--image-size", "71", "--epochs", "1",
         "--batch-size", "4", "--val-fraction", "0.3", "--test-fraction", "0.25"],
        capture_output=True, text=True, cwd=REPO, timeout=600,
        env={**os.environ, "XRCOMPARE_CACHE_DIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines[-2:]] == ["speedup_vgg16", "speedup_resnet50"]
    for line in lines[-2:]:
        assert re.fullmatch(r"speedup_\w+: \d+\.\d", line), line
    for name in ("vgg16", "resnet50"):
        assert re.search(rf"^{name} \(a\) cached features: [\d.]+ s", result.stdout, re.M)
        assert re.search(rf"^{name} \(b\) frozen base in the epoch loop: [\d.]+ s",
                         result.stdout, re.M)
