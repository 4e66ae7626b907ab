"""One helper for a one-line error, used by the CLI, the app and the job runner."""

from __future__ import annotations

from xrcompare.errors import one_line


def test_error_line_is_one_line_even_for_an_empty_message():
    assert one_line(ValueError("\n  first\nsecond")) == "first"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(OSError()) == "OSError"


def test_a_long_message_is_cut_with_an_ellipsis_at_the_limit():
    line = one_line(RuntimeError("x" * 500), limit=80)
    assert len(line) == 80 and line.endswith("…")
    assert one_line("short", limit=80) == "short"
