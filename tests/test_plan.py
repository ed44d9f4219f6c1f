"""The plan's plain data: the run read from a payload, job ranking, report bodies and each step's key and marker."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.core import templates
from bot.core.models import Diagnosis, Excerpt, ExcerptBlock, ExcerptLine, Severity
from bot.core.render import MAX_BODY_CHARS, find_fingerprint, marker
from bot.plan import (
    CheckRunStep,
    ConfigProblemIssue,
    IncidentIssue,
    IssueAlert,
    JobDiagnosis,
    NotifyProblemIssue,
    Plan,
    Report,
    RunInfo,
    StickyComment,
    alert_key,
    chat_text,
    rank_jobs,
)
from bot.policy.repo_config import parse_repo_config
from bot.ports import DiagnosisResult, TargetCheck
from bot.services import plan_steps
from tests.app_support import INSTALLATION, REPO, fixture_payload

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)
RUN = RunInfo(
    repository=REPO,
    installation_id=INSTALLATION,
    run_id=100,
    attempt=2,
    workflow_id=42,
    workflow_name="CI",
    workflow_path=".github/workflows/ci.yml",
    head_branch="feature",
    head_sha="0123456789abcdef0123456789abcdef01234567",
    event="pull_request",
    conclusion="failure",
    html_url=f"https://github.com/{REPO}/actions/runs/100",
    default_branch="master",
)


def diagnosed(job: str, severity: Severity, fingerprint: str, url: str = "") -> JobDiagnosis:
    diagnosis = Diagnosis.model_validate(
        {
            "severity": severity,
            "category": "test_failure",
            "root_cause": f"{job} failed: the {fingerprint} check is red.",
            "impact": "Merges are blocked.",
            "recommendations": ["Fix it."],
            "auto_fixable": False,
            "evidence": [{"line": 7, "text": f"FAILED {fingerprint}", "job": job}],
            "fingerprint": fingerprint,
            "confidence": 0.6,
            "source": "rules",
        }
    )
    excerpt = Excerpt(
        blocks=[ExcerptBlock(job=job, step="test", lines=[ExcerptLine(number=7, text=f"FAILED {fingerprint}")])],
        budget=4096,
    )
    return JobDiagnosis(job, url, excerpt, DiagnosisResult(diagnosis))


BUILD = diagnosed("build", Severity.HIGH, "fp-build", url="https://example.test/build/log")
LINT = diagnosed("lint", Severity.LOW, "fp-lint")
REPORT = Report(RUN, (BUILD, LINT))


# ---- the run ---------------------------------------------------------------------------------------------


def pull_payload() -> dict[str, Any]:
    """GitHub's example delivery that lists pull requests, read fresh (its pull request is another repo's)."""
    return fixture_payload("completed.with-pull-requests.payload.json")


def test_run_info_from_a_fork_keeps_only_this_repositorys_pull_requests() -> None:
    payload = pull_payload()
    run, ours = payload["workflow_run"], payload["repository"]["id"]
    [foreign] = run["pull_requests"]
    assert foreign["base"]["repo"]["id"] != ours
    mine = [copy.deepcopy(foreign) for _ in range(2)]
    for number, pull in zip((17, 18), mine, strict=True):
        pull["number"] = number
        pull["base"]["repo"]["id"] = ours
    run["pull_requests"] = [mine[0], foreign, mine[1]]
    run["head_repository"]["full_name"] = "contributor/octo-repo"
    run.update(run_attempt=3, conclusion="failure", event="pull_request")

    info = RunInfo.from_payload(payload, INSTALLATION)

    assert info.pull_requests == (17, 18)
    assert info.from_fork and info.head_owner == "contributor"
    assert (info.repository, info.installation_id, info.attempt) == (REPO, INSTALLATION, 3)
    assert (info.event, info.conclusion, info.default_branch) == ("pull_request", "failure", "master")
    # The example run has no name of its own; the workflow's name and path stand in.
    assert (info.workflow_name, info.workflow_path) == ("test", ".github/workflows/test.yml")
    assert (info.actor, info.triggering_actor) == ("Codertocat", "Codertocat")


def test_run_info_from_the_repository_itself_is_not_a_fork() -> None:
    payload = pull_payload()
    run = payload["workflow_run"]
    assert run["head_repository"]["full_name"] == REPO
    info = RunInfo.from_payload(payload, INSTALLATION)
    assert not info.from_fork and info.head_owner == "octo-org"

    for key in ("head_repository", "run_attempt", "pull_requests"):
        run[key] = None
    bare = RunInfo.from_payload(payload, INSTALLATION)
    assert bare.head_repository is None and not bare.from_fork and bare.head_owner == "octo-org"
    assert (bare.attempt, bare.pull_requests) == (1, ())


# ---- ranking and the report --------------------------------------------------------------------------------


def test_rank_jobs_puts_the_most_severe_first_and_keeps_githubs_order_among_equals() -> None:
    jobs = [
        diagnosed("a", Severity.MEDIUM, "fp-a"),
        diagnosed("b", Severity.CRITICAL, "fp-b"),
        diagnosed("c", Severity.MEDIUM, "fp-c"),
        diagnosed("d", Severity.LOW, "fp-d"),
        diagnosed("e", Severity.CRITICAL, "fp-e"),
    ]
    assert [job.job for job in rank_jobs(jobs)] == ["b", "e", "a", "c", "d"]
    assert rank_jobs([]) == ()


def test_report_shows_the_primary_then_the_other_jobs_and_notes_before_the_footer() -> None:
    report = Report(RUN, (BUILD, diagnosed("@octocat's job", Severity.LOW, "fp-other")), notes=("Ping @admins.",))
    body = report.markdown()
    lines = body.split("\n")

    assert lines[0].startswith("## ") and "build failed" in lines[0]
    assert lines[-1] == marker("fp-build") and find_fingerprint(body) == "fp-build"
    heading = lines.index(templates.OTHER_JOBS_HEADING)
    footer = next(index for index, line in enumerate(lines) if line.startswith("<sub>"))
    assert heading < footer
    other = lines[heading + 1]
    assert other.startswith("- **@\u200boctocat's job**: [low]") and "fp-other" in other
    assert "> Ping @\u200badmins." in lines[heading:footer]
    # Only jobs with a log page are linked.
    assert report.log_urls() == {"build": "https://example.test/build/log"}
    assert "(https://example.test/build/log#L7)" in body


def test_report_markdown_for_another_job_lists_the_primary_among_the_others() -> None:
    body = REPORT.markdown(LINT)
    assert find_fingerprint(body) == "fp-lint"
    heading = body.index(templates.OTHER_JOBS_HEADING)
    assert body.index("lint failed") < heading < body.index("- **build**: [high]")


def test_a_report_of_one_job_without_notes_is_the_plain_diagnosis() -> None:
    assert templates.OTHER_JOBS_HEADING not in Report(RUN, (BUILD,)).markdown()


# ---- steps -----------------------------------------------------------------------------------------------


def test_sticky_comment_is_keyed_per_pull_request_and_workflow_and_ends_with_its_marker() -> None:
    step = StickyComment(REPO, 7, 42, REPORT)
    assert step.key == f"sticky:{REPO}#7:workflow-42"
    assert {step.key, StickyComment(REPO, 8, 42, REPORT).key, StickyComment(REPO, 7, 43, REPORT).key} == {
        step.key,
        f"sticky:{REPO}#8:workflow-42",
        f"sticky:{REPO}#7:workflow-43",
    }
    assert step.marker == "<!-- mendbot:sticky=workflow-42 -->"
    body = step.body(None)
    assert body.endswith("\n" + step.marker)
    assert find_fingerprint(body) == step.fingerprint == "fp-build"


def test_sticky_comment_keeps_a_changed_earlier_diagnosis_collapsed_without_its_markers() -> None:
    step = StickyComment(REPO, 7, 42, REPORT)
    earlier = StickyComment(REPO, 7, 42, Report(RUN, (diagnosed("build", Severity.HIGH, "fp-older"),))).body(None)

    body = step.body(earlier)
    assert templates.OUTDATED_SUMMARY in body and "fp-older check is red" in body
    assert body.count(step.marker) == 1 and body.endswith(step.marker)
    assert "mendbot:fingerprint=fp-older" not in body and find_fingerprint(body) == "fp-build"


def test_sticky_comment_drops_an_earlier_body_of_the_same_failure() -> None:
    step = StickyComment(REPO, 7, 42, REPORT)
    body = step.body(step.body(None))
    assert templates.OUTDATED_SUMMARY not in body
    assert body == step.body(None)


def test_check_run_is_keyed_per_run_attempt_and_described_with_its_annotations() -> None:
    step = CheckRunStep(REPO, RUN.head_sha, 100, 2, "test_failure: build failed", "summary", "text", ())
    assert step.key == f"check:{REPO}:100.2"
    assert CheckRunStep(REPO, RUN.head_sha, 100, 3, "t", "s", "x", ()).key != step.key
    described = step.describe()
    assert RUN.head_sha[:12] in described and RUN.head_sha[:13] not in described
    assert "0 annotation(s)" in described and templates.CHECK_RUN_NAME in described


def incident(run_id: int = 100, attempt: int = 1) -> IncidentIssue:
    return IncidentIssue(
        REPO,
        "fp-lint",
        "🚨 [AUTO] test_failure: lint failed",
        ("mendbot", "ci-failure"),
        REPORT,
        LINT,
        run_id,
        attempt,
        f"https://github.com/{REPO}/actions/runs/{run_id}",
        timedelta(hours=24),
    )


def test_incident_issue_is_one_per_fingerprint_with_one_occurrence_per_run_attempt() -> None:
    assert incident(100).key == incident(200).key == f"issue:{REPO}:fp-lint"
    assert incident(100, 1).occurrence_key == f"occurrence:{REPO}:fp-lint:100.1"
    assert len({incident(100, 1).occurrence_key, incident(100, 2).occurrence_key, incident(200).occurrence_key}) == 3
    assert "['mendbot', 'ci-failure']" in incident().describe()


def test_incident_issue_body_counts_occurrences_and_carries_its_jobs_fingerprint() -> None:
    once, thrice = incident().body(1, NOW), incident().body(3, NOW)
    assert "\n**Occurrences:** seen 1 time; latest in [this run](" in once
    assert "\n**Occurrences:** seen 3 times;" in thrice and "at 2025-03-10 12:00 UTC" in thrice
    # The count leads what follows the diagnosis, ahead of the other failed jobs.
    assert once.index("**Occurrences:**") < once.index(templates.OTHER_JOBS_HEADING) < once.index("<sub>")
    # The issue is about its own job, even when another job of the run was more severe.
    assert find_fingerprint(once) == "fp-lint" and "lint failed" in once.split("\n")[0]


def test_occurrence_comment_has_a_marker_per_run_attempt_and_mentions_a_quiet_period() -> None:
    comment = incident(100, 2).occurrence_comment(4, None)
    assert comment.endswith("<!-- mendbot:occurrence=100.2 -->")
    assert "4 occurrences" in comment and "quiet" not in comment
    quiet = incident(100, 2).occurrence_comment(5, NOW - timedelta(days=3))
    assert "after a quiet period since 2025-03-07 12:00 UTC" in quiet


def test_config_problem_issue_is_keyed_per_file_version_and_its_problems_are_inert() -> None:
    step = ConfigProblemIssue(REPO, "abc123", ("severity_threshold: not a severity", "cc @admins <!-- x -->"))
    assert step.key == f"config:{REPO}:abc123" != ConfigProblemIssue(REPO, "def456", ()).key
    assert step.marker == "<!-- mendbot:config=abc123 -->"
    body = step.body()
    assert body.endswith(step.marker) and body.count("<!--") == 1
    assert "- severity_threshold: not a severity\n" in body
    assert "- cc @\u200badmins" in body


def test_plans_do_not_share_their_refusals() -> None:
    first, second = Plan([]), Plan([])
    first.refused.append("comment refused: the run is from a fork")
    assert second.refused == []


def test_a_huge_report_with_other_jobs_and_a_sticky_marker_stays_within_githubs_limit() -> None:
    lines = [ExcerptLine(number=n, text=f"E   assertion {n} failed " + "x" * 200) for n in range(1, 400)]
    huge = Excerpt(blocks=[ExcerptBlock(job="build", step="test", lines=lines)], budget=100_000)
    primary = JobDiagnosis("build", "", huge, BUILD.result)
    notes = ("1 more failed job(s) were not diagnosed: e2e.",)
    report = Report(RUN, (primary, LINT, diagnosed("docs", Severity.LOW, "fp-docs")), notes=notes)
    sticky = StickyComment(REPO, 7, 42, report)
    body = sticky.body(None)
    assert len(report.markdown()) <= MAX_BODY_CHARS
    assert len(body) <= MAX_BODY_CHARS
    assert body.rstrip().endswith(sticky.marker)
    assert find_fingerprint(body) == primary.diagnosis.fingerprint


def test_a_huge_incident_issue_with_its_occurrence_line_stays_within_githubs_limit() -> None:
    lines = [ExcerptLine(number=n, text=f"E   assertion {n} failed " + "x" * 200) for n in range(1, 400)]
    huge = Excerpt(blocks=[ExcerptBlock(job="build", step="test", lines=lines)], budget=100_000)
    primary = JobDiagnosis("build", "", huge, BUILD.result)
    # A run with very many failed jobs names every skipped one in a note.
    names = ", ".join(f"job-{n}-" + "x" * 60 for n in range(1500))
    notes = (templates.SKIPPED_JOBS_NOTE.format(count=1500, names=names),)
    report = Report(RUN, (primary, LINT), notes=notes)
    step = IncidentIssue(
        REPO, "fp-build", "t", (), report, primary, 100, 1, f"https://github.com/{REPO}/actions/runs/100", timedelta(1)
    )
    body = step.body(12_345, NOW)
    assert len(body) <= MAX_BODY_CHARS
    assert "**Occurrences:** seen 12345 times" in body
    assert find_fingerprint(body) == "fp-build" and body.endswith(marker("fp-build"))


def test_a_config_problem_issue_about_huge_keys_stays_within_githubs_limit() -> None:
    # A YAML alias can repeat one 60 KB key in many problems without making the file any bigger.
    problems = tuple(f"rules.{n}.{'k' * 60_000}: Extra inputs are not permitted" for n in range(10))
    step = ConfigProblemIssue(REPO, "abc123", problems)
    body = step.body()
    assert len(body) <= MAX_BODY_CHARS
    assert body.count("\n- rules.") == 10 and body.endswith(step.marker)


def test_config_problems_that_do_not_fit_are_counted_instead() -> None:
    step = ConfigProblemIssue(REPO, "abc123", tuple(f"key{n}: " + "<" * 400 for n in range(1000)))
    body = step.body()
    assert len(body) <= MAX_BODY_CHARS and body.endswith(step.marker)
    listed = body.count("\n- key")
    assert 0 < listed < 1000 and f"- … and {1000 - listed} more" in body


# ---- alerts ----------------------------------------------------------------------------------------------


def test_chat_text_defuses_mentions_links_and_control_characters() -> None:
    text = chat_text(
        "@everyone <!channel> <@U123> see [here](https://evil.example/x) or https://evil.example\x07\u202e\n"
        "<!-- mendbot:fingerprint=x -->"
    )
    assert "\n" not in text and "\x07" not in text and "\u202e" not in text
    assert "@everyone" not in text and "@\u200beveryone" in text
    assert "<" not in text and ">" not in text
    assert "](" not in text and "https://" not in text
    assert "<!--" not in text
    assert len(chat_text("x" * 5000)) <= 400


def test_an_issue_alert_is_plain_text_ending_with_the_issue_url() -> None:
    line = "[high] o/r test_failure: @here look at [this](https://evil.example) (fp-build)"
    step = IssueAlert(REPO, "fp-build", f"issue:{REPO}:fp-build", ("slack://a/b/c",), line)
    body = step.body(f"https://github.com/{REPO}/issues/7")
    first, url = body.split("\n")
    assert url == f"https://github.com/{REPO}/issues/7"
    assert "@here" not in first and "](" not in first and "https://" not in first
    assert step.title == f"Mendbot: new CI incident in {REPO}"
    assert "slack://a/b/c" not in step.describe()
    assert alert_key(REPO, 7) == f"alert:{REPO}#7" != alert_key(REPO, 8)


def test_a_notify_problem_issue_is_keyed_by_its_refusals_and_its_problems_are_inert() -> None:
    step = NotifyProblemIssue(REPO, ("json://10.0.0.1: private", "cc @admins <!-- x -->"))
    same = NotifyProblemIssue(REPO, ("cc @admins <!-- x -->", "json://10.0.0.1: private"))
    assert step.key == same.key != NotifyProblemIssue(REPO, ("json://10.0.0.2: private",)).key
    body = step.body()
    assert body.endswith(step.marker) and body.count("<!--") == 1
    assert "@\u200badmins" in body
    assert step.title.startswith("⚠️ Mendbot:")


def push_report() -> Report:
    run = RunInfo(**{**RUN.__dict__, "event": "push", "head_branch": "master"})
    return Report(run, (BUILD, LINT))


def test_a_new_incident_issue_is_followed_by_an_alert_to_the_usable_targets_only() -> None:
    loaded = parse_repo_config("notify: ['slack://a/b/c', 'json://10.0.0.1/x']\n")
    checks = [TargetCheck("slack://…"), TargetCheck("json://10.0.0.1", "a private address")]
    plan = plan_steps(push_report(), (), loaded, checks)
    kinds = [type(step).__name__ for step in plan.steps]
    assert kinds == ["NotifyProblemIssue", "IncidentIssue", "IssueAlert"]
    problem, issue, alert = plan.steps
    assert isinstance(problem, NotifyProblemIssue) and problem.problems == ("json://10.0.0.1: a private address",)
    assert isinstance(issue, IncidentIssue) and isinstance(alert, IssueAlert)
    assert alert.issue_key == issue.key and alert.targets == ("slack://a/b/c",)
    assert alert.line.startswith("[high] ") and REPO in alert.line
    assert any("json://10.0.0.1 refused: a private address" in reason for reason in plan.refused)


def test_no_alert_without_a_notifier_without_usable_targets_or_for_a_pull_request() -> None:
    loaded = parse_repo_config("notify: ['slack://a/b/c']\n")
    assert not any(isinstance(s, IssueAlert) for s in plan_steps(push_report(), (), loaded).steps)
    refused_all = plan_steps(push_report(), (), loaded, [TargetCheck("slack://…", "not allowed")])
    assert not any(isinstance(s, IssueAlert) for s in refused_all.steps)
    assert any(isinstance(s, NotifyProblemIssue) for s in refused_all.steps)
    pull = plan_steps(REPORT, (5,), loaded, [TargetCheck("slack://…")])
    assert not any(isinstance(s, (IssueAlert, NotifyProblemIssue)) for s in pull.steps)
    assert any("no alert for a pull-request failure" in reason for reason in pull.refused)
