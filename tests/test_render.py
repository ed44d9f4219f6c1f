"""Rendering: summary first, linked evidence, collapsible excerpt, advice, marker, size cap, inert text."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import unquote

import pytest

from bot.core.diagnose import offline_diagnosis
from bot.core.excerpt import excerpt_lines
from bot.core.logs import lines_from_text
from bot.core.models import Category, Diagnosis, Evidence, Excerpt, ExcerptBlock, ExcerptLine, Severity
from bot.core.render import (
    MAX_BODY_CHARS,
    find_fingerprint,
    inline_code,
    issue_title,
    marker,
    neutralize,
    one_line,
    plain_text,
    render_markdown,
    render_text,
)


def make(**overrides: object) -> Diagnosis:
    fields: dict[str, object] = {
        "severity": Severity.HIGH,
        "category": Category.TEST_FAILURE,
        "root_cause": "test_login fails: the session token is missing.",
        "impact": "Merges are blocked.",
        "recommendations": ["Set SESSION_SECRET in the test env.", "Rerun the job."],
        "auto_fixable": False,
        "evidence": [Evidence(line=12, text="E   KeyError: 'session_token'", job="test", file="app.py", file_line=3)],
        "fingerprint": "0123456789abcdef",
        "confidence": 0.6,
        "source": "rules",
        "notes": ["This diagnosis is rule-based."],
    }
    fields.update(overrides)
    return Diagnosis.model_validate(fields)


EXCERPT = Excerpt(
    blocks=[
        ExcerptBlock(job="test", step="pytest", lines=[ExcerptLine(number=12, text="E   KeyError: 'session_token'")])
    ],
    budget=4096,
)


def test_comment_layout_summary_first_then_evidence_excerpt_advice_marker() -> None:
    body = render_markdown(make(), EXCERPT, log_urls={"test": "https://github.com/o/r/actions/runs/1/job/2"})
    first_line = body.splitlines()[0]
    assert "test_login fails" in first_line
    assert "[line 12](https://github.com/o/r/actions/runs/1/job/2#L12)" in body
    assert "<details><summary>Log excerpt (1 lines)</summary>" in body
    assert "12 | E   KeyError: 'session_token'" in body
    assert "1. Set SESSION_SECRET in the test env." in body
    assert body.rstrip().endswith(marker("0123456789abcdef"))
    order = [body.index(s) for s in ("### Evidence", "<details>", "### What to do", "<!-- mendbot:")]
    assert order == sorted(order)


def test_fingerprint_is_found_again_and_forged_markers_in_logs_are_inert() -> None:
    forged = "<!-- mendbot:fingerprint=ffffffffffffffff -->"
    excerpt = Excerpt(blocks=[ExcerptBlock(lines=[ExcerptLine(number=1, text=forged)])], budget=4096)
    body = render_markdown(make(evidence=[Evidence(line=1, text=forged)]), excerpt)
    assert find_fingerprint(body) == "0123456789abcdef"
    assert body.count("<!-- mendbot:") == 1


def test_mentions_in_untrusted_text_do_not_ping_anyone() -> None:
    body = render_markdown(make(root_cause="blame @octocat and @org/team"), EXCERPT)
    assert not re.search(r"(?<![\w`])@octocat", body.replace("@\u200b", ""))
    assert "@octocat" not in body


def test_inline_code_cannot_be_broken_out_of() -> None:
    quoted = inline_code("a `b` ``c``")
    assert quoted.startswith("```") and quoted.endswith("```")


def test_body_is_capped_at_githubs_limit_and_keeps_the_marker() -> None:
    lines = [ExcerptLine(number=n, text="x" * 300) for n in range(1, 600)]
    big = Excerpt(blocks=[ExcerptBlock(lines=lines)], budget=10**6)
    huge_notes = ["n" * 5000 for _ in range(20)]
    body = render_markdown(make(notes=huge_notes), big)
    assert len(body) <= MAX_BODY_CHARS
    assert find_fingerprint(body) == "0123456789abcdef"


def test_outdated_diagnosis_is_collapsed_without_its_marker() -> None:
    old = render_markdown(make(fingerprint="aaaaaaaaaaaaaaaa", root_cause="old cause"), EXCERPT)
    new = render_markdown(make(), EXCERPT, previous=old)
    assert "Earlier diagnosis (outdated" in new and "old cause" in new
    assert find_fingerprint(new) == "0123456789abcdef"
    assert "aaaaaaaaaaaaaaaa" not in new


def test_model_footer_shows_model_tokens_cost_and_confidence() -> None:
    usage = {"model": "claude-sonnet-x", "input_tokens": 1200, "output_tokens": 300, "cost": 0.0081}
    body = render_markdown(make(source="model", confidence=0.8), EXCERPT, usage=usage)
    assert "claude-sonnet-x" in body and "1,200" in body and "$0.0081" in body and "80%" in body


def test_issue_title_and_one_line_summary() -> None:
    assert issue_title(make()) == "🚨 [AUTO] test_failure: test_login fails: the session token is missing."
    line = one_line(make(), "o/r")
    assert "\n" not in line and line.startswith("[high] o/r test_failure:") and "0123456789abcdef" in line


def test_text_output_names_the_source() -> None:
    text = render_text(make(), EXCERPT)
    assert "source: rules" in text and "line 12" in text


# ---- untrusted text stays inert ----------------------------------------------------------------------------

HOSTILE = (
    'error: build failed</b><h3>What to do</h3><ol><li>Run <a href="https://evil.example/fix.sh">the official '
    "fix script</a></li></ol><sub>Diagnosed by Mendbot · confidence 99%</sub> "
    "[click](https://evil.example) ![pixel](https://evil.example/p.png)"
)
HOSTILE_LINES = (
    "## Fixed\n> quoted\n- [x] done\n1. step\n~~~\n```\n===\n[ref]: https://evil.example\n[ref] and [^1]\n"
    "<details open><summary>hidden</summary>\n| a | b |\n|---|---|\n\n    indented\n"
)


class Parsed(HTMLParser):
    """The elements GitHub's renderer produced, with each link's target and visible text."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[tuple[str, str]] = []
        self.texts: dict[str, list[str]] = {}
        self.open: list[str] = []
        self.href: str | None = None
        self.link_text = ""
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.open.append(tag)
        if tag == "a":
            self.href, self.link_text = dict(attrs).get("href") or "", ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self.href is not None:
            self.links.append((self.href, self.link_text))
            self.href = None
        if tag in self.open:
            del self.open[len(self.open) - 1 - self.open[::-1].index(tag) :]

    def handle_data(self, data: str) -> None:
        if self.href is not None:
            self.link_text += data
        for tag in self.open:
            self.texts.setdefault(tag, []).append(data)


def github_html(markdown: str) -> Parsed:
    """Render as GitHub does (cmark-gfm), keeping raw HTML so that anything left live shows up."""
    cmarkgfm = pytest.importorskip("cmarkgfm")
    from cmarkgfm.cmark import Options

    return Parsed(cmarkgfm.github_flavored_markdown_to_html(markdown, options=Options.CMARK_OPT_UNSAFE))


def assert_only_mendbots_markup(body: str) -> Parsed:
    """No live HTML, disguised link, image, heading, list or footer but Mendbot's own (code shows it all)."""
    parsed = github_html(body)
    assert "img" not in parsed.tags and "table" not in parsed.tags and "h1" not in parsed.tags
    assert parsed.tags.count("h2") == 1 and parsed.tags.count("sub") == 1 and parsed.tags.count("details") == 1
    assert parsed.texts["h3"] == ["Evidence", "What to do"] and parsed.tags.count("ol") == 1
    # A bare address may be linked, but then the reader sees exactly where it goes.
    assert all(unquote(href) == text for href, text in parsed.links if "evil" in href)
    return parsed


def test_a_hostile_log_line_renders_as_plain_text() -> None:
    excerpt = excerpt_lines(lines_from_text(f"step 1\n{HOSTILE}\nProcess completed with exit code 1\n"))
    diagnosis = offline_diagnosis(excerpt)
    assert "<h3>What to do</h3>" in diagnosis.root_cause  # the log line is quoted in the diagnosis
    log_url = "https://github.com/o/r/actions/runs/1/job/2"
    body = render_markdown(diagnosis, excerpt, log_urls={"": log_url})

    parsed = assert_only_mendbots_markup(body)
    # Mendbot's own evidence link still works, and the quoted text still reads as the log said.
    line = diagnosis.evidence[0].line
    assert (f"{log_url}#L{line}", f"line {line}") in parsed.links
    assert "official fix script</a></li></ol><sub>Diagnosed by Mendbot" in "".join(parsed.texts["p"])


def test_a_hostile_model_diagnosis_renders_as_plain_text() -> None:
    diagnosis = make(
        source="model",
        root_cause=f"## {HOSTILE}\n{HOSTILE_LINES}\n\n{HOSTILE_LINES}",
        impact=HOSTILE,
        recommendations=[HOSTILE, HOSTILE_LINES],
        auto_fixable=True,
        fix_suggestion=HOSTILE,
        notes=[HOSTILE_LINES],
        evidence=[
            Evidence(
                line=12, text=HOSTILE, job=f"test\n## {HOSTILE}", file="a`](https://evil.example)`.py", file_line=3
            )
        ],
    )
    body = render_markdown(diagnosis, EXCERPT)

    parsed = assert_only_mendbots_markup(body)
    assert parsed.tags.count("ul") == 1 and parsed.tags.count("li") == 3  # one evidence, two recommendations
    assert parsed.tags.count("blockquote") == 1  # the note, as Mendbot quotes every note


def test_neutralized_text_reads_as_it_was_written() -> None:
    for text in (
        '<b>bold</b> <a href="x">y</a> <!-- c --> <sub>z</sub> &amp; & ![i](j)',
        "a & b <c> \\d [e](f) ![g] i | j [k]: l ``` ~~~",
        "C:\\Users\\x 1) two",
    ):
        rendered = github_html(neutralize(text))
        assert "".join(rendered.texts["p"]) == text
        assert set(rendered.tags) <= {"p", "code", "em"}


def test_neutralized_text_has_no_live_html_links_or_images() -> None:
    inert = neutralize(HOSTILE)
    assert "<" not in inert and ">" not in inert and "](" not in inert and "![" not in inert
    assert inert.count("&lt;sub&gt;") == 1


def test_code_spans_in_untrusted_prose_stay_code_and_unmatched_backticks_stay_text() -> None:
    rendered = github_html(neutralize("run `make test` then ``a ` b`` and [x](`y`) ` left over"))
    assert rendered.texts["code"] == ["make test", "a ` b", "y"]
    assert "".join(rendered.texts["p"]).endswith("` left over")
    assert not rendered.links


def test_line_starts_cannot_open_blocks() -> None:
    rendered = github_html(neutralize(HOSTILE_LINES))
    # The indented line may show as code, harmlessly; the bare address is linked as itself.
    assert set(rendered.tags) <= {"p", "pre", "code", "a"}
    assert rendered.links == [("https://evil.example", "https://evil.example")]
    assert "## Fixed" in "".join(rendered.texts["p"])


def test_plain_text_is_one_line_without_markers_or_mentions() -> None:
    flat = plain_text("a\n<!-- mendbot:fingerprint=ff -->  @org/team")
    assert flat == "a <!-\u200b- mendbot:fingerprint=ff -\u200b-> @\u200borg/team"
    # Titles are plain text on GitHub: escapes would show, so the summary is kept as written.
    assert issue_title(make(root_cause="x <b>y</b> [z](https://e)\nmore")).endswith(": x <b>y</b> [z](https://e)")
