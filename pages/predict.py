"""Predict & explain: one X-ray through every selected run, with saliency maps (placeholder)."""

from __future__ import annotations

import streamlit as st

st.title("Predict & explain")
st.caption("Teaching tool, not for diagnosis.")
st.info("Upload one X-ray to see every model's prediction and saliency maps (coming soon).")
