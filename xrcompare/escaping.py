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
#: Bare links (``http://…``, ``www.…``, ``name@host``) are found by GitHub-flavoured Markdown
#: in the text *after* escapes are resolved, so a backslash cannot stop them: an invisible
#: zero-width space after the ``:`` of ``://`` or an ``@``, and before the ``.`` of ``www.``,
#: does.
_ZERO_WIDTH_SPACE = "\u200b"
_LINK_MARKS = re.compile(r"(?i)(:(?=//)|@|\bwww(?=\.))")


def escape_markdown(text) -> str:
    """``text`` (any object, made a string) as Markdown that renders as that text, on one
    line: line breaks become spaces, and a zero-width space keeps bare links from linking."""
    value = " ".join(str(text).splitlines())
    value = _LINK_MARKS.sub(lambda match: match.group(1) + _ZERO_WIDTH_SPACE, value)
    value = _INLINE.sub(r"\\\1", value)
    value = _LIST_DASH.sub(r"\1\\-", value)
    return _LIST_NUMBER.sub(r"\1\\.", value)


def unescape_markdown(text: str) -> str:
    """What :func:`escape_markdown` text shows: backslash escapes resolved, zero-width spaces
    dropped (for tests and logs that compare shown text)."""
    return re.sub(r"\\(.)", r"\1", text).replace(_ZERO_WIDTH_SPACE, "")
