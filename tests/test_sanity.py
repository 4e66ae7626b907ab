"""The saliency sanity check's computing part: the rank correlation of two maps and its
sentence (the Predict page lays it out)."""

from __future__ import annotations

import numpy as np
import pytest

from xrcompare.sanity import ALIKE, DIFFERENT, rank_correlation, sanity_sentence, verdict


def test_rank_correlation_of_maps():
    rng = np.random.default_rng(0)
    first = rng.random((14, 14))
    assert rank_correlation(first, first) == pytest.approx(1.0)
    assert rank_correlation(first, 1 - first) == pytest.approx(-1.0)
    assert rank_correlation(first, first ** 3 + 5) == pytest.approx(1.0)  # ranks only
    assert abs(rank_correlation(first, rng.random((14, 14)))) < 0.3
    # another grid is resized to the first's (a 7×7 map against a 224×224 one)
    coarse = np.add.outer(np.arange(7.0), np.arange(7.0))
    fine = np.add.outer(np.arange(224.0), np.arange(224.0))
    assert rank_correlation(fine, coarse) > 0.99
    assert rank_correlation(first, np.zeros((14, 14))) is None  # a blank map ranks nothing
    with pytest.raises(ValueError, match="2-D"):
        rank_correlation(first, np.zeros(5))
    with pytest.raises(ValueError, match="finite"):
        rank_correlation(first, np.full((14, 14), np.nan))


@pytest.mark.parametrize(("rho", "kind", "words"), [
    (0.8, "alike", "fails the sanity check"), (ALIKE, "alike", "fails"),
    (0.35, "partly alike", "partly alike"), (DIFFERENT - 0.01, "different", "passes"),
    (-0.4, "different", "passes"), (None, "undefined", "cannot be made")])
def test_the_sentence_says_what_the_correlation_means(rho, kind, words):
    assert verdict(rho) == kind
    sentence = sanity_sentence(rho, "Grad-CAM", "ResNet50 · cxr3", "its random-init control")
    assert words in sentence and "\n" not in sentence
    if rho is not None:
        assert f"ρ = {rho:.2f}" in sentence and "Adebayo" in sentence
