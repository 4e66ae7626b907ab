"""Text from outside (run titles, folder and file names, class names, error messages that
quote them) made safe to put into Streamlit Markdown.

Streamlit renders GitHub-flavoured Markdown plus its own directives (``:material/…:``,
``:red[…]``, ``:emoji:``, ``$…$``) in ``st.markdown``, captions, alerts, progress texts and
widget labels. A run folder or an upload can carry any name, so every such text is escaped
where it meets Markdown: it then shows as written, never as a link, image, emphasis, icon or
formula. Only what can start a construct is escaped, so ordinary sentences ("kaggle_test",
"(256 images)", "error: …") stay as they are.
"""

from __future__ import annotations

import re

#: Characters that open or close an inline construct wherever they stand (CommonMark lets any
#: ASCII punctuation be backslash-escaped): links and images need ``[``, autolinks and HTML
#: ``<``, code a backtick, emphasis ``*`` (also inside words), strikethrough ``~``, formulas
#: ``$``, entities ``&``.
_ALWAYS = re.compile(r"([\\`*\[\]<>~$&])")
#: ``_`` makes emphasis only at a word edge ("kaggle_test" is safe, "_x_" is not).
_UNDERSCORE = re.compile(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")
#: ``:`` starts Streamlit's shortcodes and directives (``:smile:``, ``:material/home:``,
#: ``:red[…]``) only when a word follows it directly.
_DIRECTIVE = re.compile(r":(?=[A-Za-z0-9_/+-]+(?::|\\\[))")
#: At the start of the text: a heading, list item, block quote or numbered item.
_LINE_START = re.compile(r"^(\s*)([#+-]|\d+(?=[.)]))")
#: Bare links (``http://…``, ``www.…``, ``name@host``) are found by GitHub-flavoured Markdown
#: in the text *after* escapes are resolved, so a backslash cannot stop them: an invisible
#: zero-width space after the ``:`` of ``://`` or an ``@``, and after the ``www`` of ``www.``,
#: does.
_ZERO_WIDTH_SPACE = "\u200b"
_LINK_MARKS = re.compile(r"(?i)(:(?=//)|@|\bwww(?=\.))")


def escape_markdown(text) -> str:
    """``text`` (any object, made a string) as Markdown that renders as that text, on one
    line: line breaks become spaces, and a zero-width space keeps bare links from linking."""
    value = " ".join(str(text).splitlines())
    value = _ALWAYS.sub(r"\\\1", value)
    value = _UNDERSCORE.sub(r"\\_", value)
    value = _DIRECTIVE.sub(r"\\:", value)
    value = _LINE_START.sub(_escape_line_start, value)
    return _LINK_MARKS.sub(lambda match: match.group(1) + _ZERO_WIDTH_SPACE, value)


def _escape_line_start(match: re.Match) -> str:
    indent, mark = match.group(1), match.group(2)
    if mark.isdigit():  # "12. item" → "12\. item": the escape goes on the punctuation
        return indent + mark + "\\"
    return indent + "\\" + mark


def unescape_markdown(text: str) -> str:
    """What :func:`escape_markdown` text shows: backslash escapes resolved, zero-width spaces
    dropped (for tests and logs that compare shown text)."""
    return re.sub(r"\\(.)", r"\1", text).replace(_ZERO_WIDTH_SPACE, "")
