"""A bookmarked or reloaded page URL must open inside the router (menu titles, run picker),
also as the very first request a fresh server gets. Streamlit runs a folder named ``pages/``
as an old-style multipage app on such a request, which is why the pages live in
``app_pages/``."""

from __future__ import annotations

import pytest

from .conftest import REPO

pytestmark = pytest.mark.e2e


def test_first_request_to_a_page_url_runs_the_router(start_app_server, app_at):
    url = start_app_server({"XRCOMPARE_RUNS_DIR": str(REPO / "trained"),
                            "XRCOMPARE_E2E_SERVER": "fresh-for-direct-url"})
    app = app_at(url)
    page = app.open("tradeoffs")
    nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
    assert "Recall trade-offs" in nav and "Predict & explain" in nav
    entries = {line.strip().lower() for line in nav.splitlines()}
    assert not entries & {"streamlit app", "common", "training", "predict"}  # no file list
    assert page.get_by_text("Runs to compare").count() >= 1
    assert page.locator('[data-testid="stMain"] h1').first.inner_text().startswith(
        "Recall trade-offs")
    assert app.problems() == []
