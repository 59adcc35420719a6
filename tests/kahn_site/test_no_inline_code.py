"""No template of the site holds what the Content Security Policy refuses: an inline script, an
event handler attribute, a `javascript:` link, a style element or a style attribute. The browser
tests load the pages people reach; this reads every template, so that pages no test loads (the
server error page, a failed sign-in) and pages added later keep to it too. Data for scripts goes
through `json_script` and data- attributes, which are not run."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.conftest import PROJECT

TEMPLATES = sorted(
    path
    for folder in [PROJECT / "templates", *PROJECT.glob("*/templates")]
    for path in folder.rglob("*.html")
)


class InlineCodeFinder(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        where = f"line {self.getpos()[0]}"
        named = dict(attrs)
        if tag == "script" and "src" not in named and named.get("type") != "application/json":
            self.found.append(f"{where}: an inline <script>")
        if tag == "style":
            self.found.append(f"{where}: a <style> element")
        for name, value in attrs:
            if name == "style":
                self.found.append(f"{where}: a style attribute on <{tag}>")
            if name.startswith("on"):
                self.found.append(f"{where}: an event handler attribute {name} on <{tag}>")
            if name in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.found.append(f"{where}: a javascript: URL in {name}")


def inline_code(source: str) -> list[str]:
    finder = InlineCodeFinder()
    finder.feed(source)
    finder.close()
    return finder.found


def test_the_templates_are_found():
    names = {path.relative_to(PROJECT).as_posix() for path in TEMPLATES}
    assert {"templates/base.html", "templates/500.html", "templates/runs/run.html"} <= names


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.relative_to(PROJECT).as_posix())
def test_a_template_holds_no_inline_script_or_style(template: Path):
    assert inline_code(template.read_text()) == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("<script>alert(1)</script>", ["line 1: an inline <script>"]),
        ('<script type="module">go()</script>', ["line 1: an inline <script>"]),
        ("<p>\n<style>p { color: red }</style>", ["line 2: a <style> element"]),
        ('<div style="width: {{ w }}">', ["line 1: a style attribute on <div>"]),
        ('<button onclick="go()">', ["line 1: an event handler attribute onclick on <button>"]),
        ('<a href=" JavaScript:go()">', ["line 1: a javascript: URL in href"]),
        ("<script src=\"{% static 'live.js' %}\" defer></script>", []),
        ('<script type="application/json" id="d">{"a": 1}</script>', []),
        ('<rect class="bar" width="{{ w }}" height="8"/>', []),
    ],
)
def test_the_reader_tells_inline_code_from_what_the_policy_allows(source, found):
    assert inline_code(source) == found
