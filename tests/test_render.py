"""Rendering: summary first, linked evidence, collapsible excerpt, advice, marker, size cap, inert text."""

from __future__ import annotations

import re

from bot.core.models import Category, Diagnosis, Evidence, Excerpt, ExcerptBlock, ExcerptLine, Severity
from bot.core.render import (
    MAX_BODY_CHARS,
    find_fingerprint,
    inline_code,
    issue_title,
    marker,
    one_line,
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
