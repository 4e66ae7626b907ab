"""The prediction engine and result caches, one per server process, and its warm-up.

The router (``streamlit_app.py``) calls :func:`start_warm_up` on every run: the first call of
a process (and the first after the runs folder changes) starts one background thread that
builds every run's trunk and tail (:meth:`xrcompare.engine.Engine.warm_up`), so the first
upload finds its models ready. Nothing waits for it: a page that needs a model first builds
it itself (or waits for the thread already building it). ``XRCOMPARE_WARM_UP=0`` turns the
warm-up off (the test suite does, so that pages without models do not pay for it).
"""

from __future__ import annotations

import logging
import os
import threading

import streamlit as st

from app_pages import _common as common
from xrcompare import predictor
from xrcompare.engine import Engine

LOG = logging.getLogger("xrcompare.app")

WARM_UP_VARIABLE = "XRCOMPARE_WARM_UP"


@st.cache_resource(show_spinner=False)
def engine() -> Engine:
    """Shared trunks, tails, flat models and feature maps for every session (bounded)."""
    return Engine()


@st.cache_resource(show_spinner=False)
def prediction_cache() -> predictor.ResultCache:
    """Predictions by (image, run, run folder time): a rerun never reruns a model."""
    return predictor.ResultCache(max_entries=1024)


@st.cache_resource(show_spinner=False)
def saliency_cache() -> predictor.SaliencyCache:
    """Saliency maps by image hash, run, method, class and options (least recently used go)."""
    return predictor.SaliencyCache(max_entries=256)


def warm_up_enabled() -> bool:
    return os.environ.get(WARM_UP_VARIABLE, "1").strip().lower() not in ("0", "false", "no",
                                                                            "off")


@st.cache_resource(show_spinner=False, max_entries=4)
def _warm_up_thread(fingerprint: tuple) -> threading.Thread:
    """One daemon thread per runs-folder state: builds what the engine does not have yet."""
    runs = common.all_runs()

    def report(run, problem: str | None) -> None:
        if problem:
            LOG.info("warm-up skipped %s: %s", run.run_id, problem)

    def work() -> None:
        try:
            engine().warm_up(runs, progress=report)
        except Exception:  # noqa: BLE001 - the pages build on demand anyway
            LOG.exception("model warm-up failed")

    thread = threading.Thread(target=work, name="xrcompare-warm-up", daemon=True)
    thread.start()
    return thread


def start_warm_up() -> threading.Thread | None:
    """Start the background warm-up once per runs-folder state (cheap when running)."""
    if not warm_up_enabled():
        return None
    return _warm_up_thread(common.runs_fingerprint(common.runs_dir()))
