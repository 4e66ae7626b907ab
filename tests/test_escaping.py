"""User-controlled text shown through Streamlit Markdown renders as itself."""

from __future__ import annotations

import pytest

from xrcompare.escaping import escape_markdown, unescape_markdown

ZWSP = "\u200b"


@pytest.mark.parametrize(("text", "escaped"), [
    ("[click](http://evil.example)", rf"\[click\](http:{ZWSP}//evil.example)"),
    ("![x](http://evil.example/a.png)", rf"!\[x\](http:{ZWSP}//evil.example/a.png)"),
    ("<http://evil.example>", rf"\<http:{ZWSP}//evil.example\>"),
    ("see www.evil.example", f"see www{ZWSP}.evil.example"),
    ("mail me@evil.example", f"mail me@{ZWSP}evil.example"),
    ("**bold** _it_ `code` ~~gone~~", r"\*\*bold\*\* \_it\_ \`code\` \~\~gone\~\~"),
    (":red[alarm] :smile: :material/home: $x^2$",
     r"\:red\[alarm\] \:smile: \:material/home: \$x^2\$"),
    ("&lt;b&gt;", r"\&lt;b\&gt;"),
    ("# title", r"\# title"), ("- item", r"\- item"), ("+ item", r"\+ item"),
    ("12. item", r"12\. item"), ("3) item", r"3\) item"), ("> quote", r"\> quote"),
    ("a\\b", r"a\\b"),
    ("line one\nline two", "line one line two"),
    # ordinary names and sentences stay as they are
    ("resnet50-cxr3 · ResNet50", "resnet50-cxr3 · ResNet50"),
    ("kaggle_test (624 images): 12:30, +2.4 points",
     "kaggle_test (624 images): 12:30, +2.4 points"),
])
def test_markdown_specials_are_escaped(text, escaped):
    assert escape_markdown(text) == escaped


def test_any_object_is_escaped_as_its_text():
    assert escape_markdown(ValueError("bad [x](y)")) == r"bad \[x\](y)"
    assert escape_markdown(3) == "3"


@pytest.mark.parametrize("text", ["[click](http://evil.example) **x** www.a.b c@d.e",
                                  "error: a_b (c) #1 - 2. x", "- list", "3. item", "a\\b"])
def test_unescaping_gives_back_the_text(text):
    assert unescape_markdown(escape_markdown(text)) == text
