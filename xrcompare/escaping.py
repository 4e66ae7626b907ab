"""Text from outside (run titles, folder and file names, class names, error messages that
quote them) made safe to put into Streamlit Markdown.

Streamlit renders GitHub-flavoured Markdown plus its own directives (``:material/…:``,
``:red[…]``, ``$…$``) in ``st.markdown``, captions, alerts, progress texts and widget
labels. A run folder or an upload can carry any name, so every such text is escaped where it
meets Markdown: it then shows exactly as written, never as a link, image, emphasis or icon.
"""

from __future__ import annotations

import re

#: ASCII punctuation that starts or ends an inline Markdown construct (CommonMark lets any
#: ASCII punctuation be backslash-escaped), Streamlit's directives and bare links included.
_INLINE = re.compile(r"([\\`*_{}\[\]()<>#+!|~:$&@])")
_LIST_DASH = re.compile(r"^(\s*)-")  # "- item"; "+" and ">" are escaped as inline marks
_LIST_NUMBER = re.compile(r"^(\s*\d+)\.")  # "1. item"
_BARE_WWW = re.compile(r"(?i)\b(www)\.")


def escape_markdown(text) -> str:
    """``text`` (any object, made a string) as Markdown that renders as that exact text, on
    one line: line breaks become spaces."""
    value = " ".join(str(text).splitlines())
    value = _INLINE.sub(r"\\\1", value)
    value = _BARE_WWW.sub(r"\1\\.", value)
    value = _LIST_DASH.sub(r"\1\\-", value)
    return _LIST_NUMBER.sub(r"\1\\.", value)
