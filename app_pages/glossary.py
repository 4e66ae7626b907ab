"""Glossary: the dashboard's words, each explained once (xrcompare.glossary)."""

import streamlit as st

from app_pages import _common as common
from xrcompare.glossary import sections

st.title("Glossary")
st.caption("The words the dashboard uses, in plain language. The same explanations appear "
           "as help (the ? beside a setting or a column header) wherever the word is used.")
for section, terms in sections().items():
    st.subheader(section)
    for term in terms:
        st.markdown(f"**{term.term}.** {term.text}")
st.page_link(common.page_spec("Overview").path, label="Back to the leaderboard",
             icon=":material/leaderboard:")
