"""Sidebar training panel (Streamlit glue only; the job logic lives in xrcompare.jobs)."""

from __future__ import annotations

import streamlit as st


def render_training_sidebar() -> None:
    """Render the training panel in the sidebar (placeholder until the job manager lands)."""
    with st.sidebar:
        st.subheader("Train a head")
        st.caption("Training from the browser is coming soon.")
