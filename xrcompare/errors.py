"""One helper for showing an error as one line (the CLI, the app, the job runner)."""

from __future__ import annotations

#: How long a one-line error may get by default.
LINE_LIMIT = 200


def one_line(error: BaseException | str, limit: int = LINE_LIMIT) -> str:
    """An exception (or a message) as one short line: its first non-blank line, cut at
    ``limit`` characters with an ellipsis; the exception type's name when it says nothing."""
    text = str(error).strip()
    if not text:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    line = next(row.strip() for row in text.splitlines() if row.strip())
    return line if len(line) <= limit else line[:max(1, limit - 1)].rstrip() + "…"
