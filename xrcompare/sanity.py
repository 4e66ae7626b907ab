"""Saliency sanity check (Adebayo et al. 2018): does a saliency map depend on what the model
learned? Compare a trained run's map of an image with the map of its random-init control
(the same recipe on an untrained base) by rank correlation. Maps that look alike say more
about the image (edges, bright regions) than about the model.

Computing only: :func:`rank_correlation` and :func:`sanity_sentence` take two maps;
:func:`saliency_sanity` makes both maps of one image through the Predict page's own functions
(:mod:`xrcompare.predictor`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Spearman ρ at or above this: the two maps are "alike" (the trained map fails the check).
ALIKE = 0.5
#: Below this: the maps "differ" (the trained map passes the check). In between: "partly".
DIFFERENT = 0.2
REFERENCE = ("Adebayo J. et al. (2018). Sanity checks for saliency maps. NeurIPS 31. "
             "arXiv:1810.03292")


def rank_correlation(map_a: np.ndarray, map_b: np.ndarray) -> float | None:
    """Spearman rank correlation of two saliency maps over their pixels (the second resized
    to the first's shape when they differ); None when either map is constant (a blank map
    has no ranking)."""
    from scipy.stats import spearmanr

    a = np.asarray(map_a, dtype=np.float64)
    b = np.asarray(map_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.size == 0 or b.size == 0:
        raise ValueError(f"expected two 2-D maps, got shapes {a.shape} and {b.shape}")
    if b.shape != a.shape:
        import cv2

        b = cv2.resize(b, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("saliency maps must hold finite values")
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    rho = spearmanr(a.ravel(), b.ravel()).statistic
    return None if not np.isfinite(rho) else float(rho)


def verdict(rho: float | None) -> str:
    """``"alike"``, ``"partly alike"``, ``"different"`` or ``"undefined"``."""
    if rho is None:
        return "undefined"
    if rho >= ALIKE:
        return "alike"
    return "different" if rho < DIFFERENT else "partly alike"


def sanity_sentence(rho: float | None, method: str = "the saliency method",
                    model: str = "the trained model",
                    control: str = "its random-init control") -> str:
    """One plain sentence on what the correlation of the two maps means."""
    kind = verdict(rho)
    if kind == "undefined":
        return (f"The check cannot be made: one of the {method} maps is blank (the same "
                "value everywhere), so it ranks no pixel above another.")
    value = f"Spearman ρ = {rho:.2f}"
    if kind == "alike":
        return (f"The {method} maps of {model} and of {control} (an untrained base) are "
                f"alike ({value}): this map says more about the image than about what the "
                "model learned, so it fails the sanity check (Adebayo et al. 2018). Do not "
                "read it as where the model looks.")
    if kind == "partly alike":
        return (f"The {method} maps of {model} and of {control} are partly alike ({value}): "
                "part of the map comes from the image itself, not from what the model "
                "learned. Read it with care (Adebayo et al. 2018).")
    return (f"The {method} maps of {model} and of {control} differ ({value}): the map "
            "depends on the trained weights, so it passes this sanity check (Adebayo et al. "
            "2018). Passing is necessary, not sufficient: it still does not show why the "
            "model is right.")


@dataclass(frozen=True)
class SanityCheck:
    """Two runs' maps of one image and their rank correlation."""

    method: str
    target: str
    map_model: np.ndarray
    map_control: np.ndarray
    rho: float | None
    sentence: str


def saliency_sanity(run, control, gray: np.ndarray, method: str = "gradcam",
                    target: str | None = None, *, engine=None, cache=None,
                    digest: str | None = None) -> SanityCheck:
    """Both runs' ``method`` maps of one 8-bit gray image for class ``target`` (default: the
    trained run's prediction) and their :func:`rank_correlation`, through the Predict page's
    own functions: ``engine`` (an :class:`xrcompare.engine.Engine`; a new one if None) and,
    when given, its saliency ``cache`` (maps already drawn on the page are reused)."""
    from xrcompare import predictor
    from xrcompare.engine import Engine
    from xrcompare.explain import METHODS

    engine = engine if engine is not None else Engine()
    digest = digest or predictor.image_digest(gray)
    if target is None:
        prediction = predictor.predict_run(engine, run, gray, digest=digest)
        if not prediction.ok:
            raise ValueError(prediction.problem)
        target = prediction.predicted
    if target not in control.labels:
        raise ValueError(f"{control.title} does not predict {target!r}")
    first = predictor.explain_cached(cache, engine, run, gray, method, target, digest=digest)
    second = predictor.explain_cached(cache, engine, control, gray, method, target,
                                      digest=digest)
    rho = rank_correlation(first.saliency, second.saliency)
    return SanityCheck(method, target, first.saliency, second.saliency, rho,
                       sanity_sentence(rho, METHODS.get(method, method), run.title,
                                       control.title))


def random_control_of(run, runs):
    """``run``'s random-init control among ``runs`` (the same recipe on an untrained base of
    the same backbone: :func:`xrcompare.shortcuts.controls_of`), or None."""
    from xrcompare.shortcuts import controls_of

    if not run.is_cnn or run.is_control:
        return None
    return controls_of(run, runs).get("random-init")
