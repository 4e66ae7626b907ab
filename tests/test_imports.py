"""What the first page after a start must not import: scikit-learn (about a second, more on a
loaded machine) is needed only where metrics or splits are computed, so the router, the
sidebar and Predict & explain are drawn without it."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO

FIRST_PAGE_MODULES = ("app_pages._common", "app_pages._engine", "app_pages._training",
                      "xrcompare.predictor", "xrcompare.neighbours", "xrcompare.sanity",
                      "xrcompare.errors_gallery", "xrcompare.uploads", "xrcompare.explain",
                      "xrcompare.inference")


def test_the_router_and_the_predict_page_draw_without_scikit_learn():
    code = ("import sys\n"
            + "".join(f"import {name}\n" for name in FIRST_PAGE_MODULES)
            + "heavy = sorted(name for name in ('sklearn', 'scipy.stats', 'tensorflow')"
              " if name in sys.modules)\n"
            + "print(','.join(heavy))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "", f"imported at once: {result.stdout.strip()}"


def test_metrics_still_import_scikit_learn_when_used():
    code = ("from xrcompare.evaluate import evaluate_predictions\n"
            "import numpy as np, sys\n"
            "m = evaluate_predictions(['covid', 'normal'], np.array([[0.9, 0.1], [0.2, 0.8]]),"
            " labels=['covid', 'normal'])\n"
            "print(m['accuracy'], 'sklearn' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1.0", "True"]
