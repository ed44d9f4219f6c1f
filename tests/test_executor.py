"""The executor: each side effect once per key, found again by its marker after a crash, thread-safe."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bot.adapters.github import GitHubApp, InstallationClient, RetryPolicy
from bot.adapters.notify import AppriseNotifier
from bot.adapters.store import DELIVERY_LEASE, DeliveryStatus, Store, migrate
from bot.core.excerpt import Excerpter
from bot.core.logs import parse_lines
from bot.core.render import marker
from bot.diagnosers import OfflineDiagnoser
from bot.executor import EffectBusy, Executor, KeyedLocks
from bot.plan import (
    CheckRunStep,
    ConfigProblemIssue,
    IncidentIssue,
    IssueAlert,
    JobDiagnosis,
    NotifyProblemIssue,
    Report,
    RunInfo,
    StickyComment,
)
from bot.policy.repo_config import RepoConfig
from bot.ports import FailureFacts
from tests.app_support import APP_ID, INSTALLATION, LOGS, REPO, fake_github, rsa_keys
from tests.fakes.github_server import FakeGitHubServer
from tests.test_notify import Receiver

NOW = datetime(2025, 3, 10, 12, 0, tzinfo=UTC)


class CrashingStore(Store):
    """A real store whose process 'dies' once: completing a matching side effect raises."""

    def __init__(self, url: str, crash_on: str) -> None:
        super().__init__(url)
        self.crash_on = crash_on

    def complete_effect(self, key: str, **kwargs: Any) -> None:
        if self.crash_on and key.startswith(self.crash_on):
            self.crash_on = ""
            raise SystemError("worker killed")
        super().complete_effect(key, **kwargs)

    def record_effect(self, key: str, **kwargs: Any) -> bool:
        if self.crash_on and key.startswith(self.crash_on) and kwargs.get("target") is not None:
            self.crash_on = ""
            raise SystemError("worker killed")
        return super().record_effect(key, **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeGitHubServer]:
    server = fake_github()
    yield server
    server.stop()


@pytest.fixture
def client(fake: FakeGitHubServer) -> Iterator[InstallationClient]:
    app = GitHubApp(APP_ID, rsa_keys()[0], fake.api_url, write_interval=0.0)
    yield app.client(INSTALLATION)
    app.close()


@pytest.fixture
def url(tmp_path: Path) -> str:
    database = f"sqlite:///{tmp_path / 'state.db'}"
    migrate(database)
    return database


def report(
    log: str = "gha-gradle-test-failure.log", run_id: int = 100, pulls: tuple[int, ...] = ()
) -> Report:
    run = RunInfo(
        REPO,
        INSTALLATION,
        run_id,
        1,
        42,
        "CI",
        ".github/workflows/ci.yml",
        "master",
        "a" * 40,
        "push",
        "failure",
        f"https://github.com/{REPO}/actions/runs/{run_id}",
        "master",
        pull_requests=pulls,
    )
    excerpter = Excerpter()
    with (LOGS / log).open("rb") as stream:
        for line in parse_lines(stream, job="build"):
            excerpter.feed(line)
    excerpt = excerpter.finish()
    result = OfflineDiagnoser().diagnose(FailureFacts(REPO, excerpt, job="build", workflow="CI"), NOW)
    return Report(run, (JobDiagnosis("build", "", excerpt, result),))


def issue_step(run_id: int = 100) -> IncidentIssue:
    built = report(run_id=run_id)
    job = built.primary
    return IncidentIssue(
        REPO,
        job.diagnosis.fingerprint,
        "🚨 [AUTO] test_failure: x",
        ("mendbot", "bug"),
        built,
        job,
        run_id,
        1,
        f"https://github.com/{REPO}/actions/runs/{run_id}",
        timedelta(hours=24),
    )


def executor(
    client: InstallationClient,
    store: Store,
    delivery: str = "d-1",
    locks: KeyedLocks | None = None,
    config: RepoConfig | None = None,
    now: datetime = NOW,
    notifier: AppriseNotifier | None = None,
) -> Executor:
    return Executor(
        client,
        store,
        clock=lambda: now,
        delivery_id=delivery,
        config=config or RepoConfig(),
        bot_login="mendbot[bot]",
        locks=locks or KeyedLocks(),
        notifier=notifier,
    )


def pull_request(fake: FakeGitHubServer) -> int:
    issue = fake.add_issue(REPO, "Change feature")
    fake.add_pull(REPO, "feature", number=issue["number"])
    return int(issue["number"])


def test_killed_after_opening_an_issue_the_retry_finds_it_by_its_marker(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    step = issue_step()
    crashing = CrashingStore(url, crash_on="issue:")
    with pytest.raises(SystemError):
        executor(client, crashing).run([step])
    assert len(fake.repo(REPO).issues) == 1
    crashing.close()

    store = Store(url)
    [done] = executor(client, store).run([step])
    assert len(fake.repo(REPO).issues) == 1
    assert done.target == str(next(iter(fake.repo(REPO).issues)))
    effect = store.get_effect(step.key)
    assert effect is not None and effect.completed
    store.close()


def test_killed_after_posting_a_comment_the_retry_edits_it_instead(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    number = pull_request(fake)
    step = StickyComment(REPO, number, 42, report(pulls=(number,)))
    crashing = CrashingStore(url, crash_on="sticky:")
    with pytest.raises(SystemError):
        executor(client, crashing).run([step])
    crashing.close()
    store = Store(url)
    [done] = executor(client, store).run([step])
    assert done.action == "unchanged"
    assert len(fake.repo(REPO).comments) == 1
    store.close()


def test_two_threads_racing_for_one_incident_open_one_issue(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    locks = KeyedLocks()
    stores = [Store(url), Store(url)]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            executor(client, stores[index], f"d-{index}", locks).run([issue_step(run_id=100 + index)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    [issue] = fake.repo(REPO).issues.values()
    assert "seen 2 times" in issue["body"]
    for store in stores:
        store.close()


def test_a_claim_another_worker_just_made_means_retry_later(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    step = issue_step()
    store = Store(url)
    store.record_effect(step.key, kind="issue", repository=REPO, now=NOW, delivery_id="other")
    with pytest.raises(EffectBusy):
        executor(client, store).run([step])
    # The holder has no lease to renew, so its claim holds for as long as one GitHub call can block.
    patient = executor(client, store, "d-2")
    assert patient.claim_timeout > timedelta(seconds=RetryPolicy().max_wait + 60)
    almost = NOW + patient.claim_timeout - timedelta(seconds=1)
    with pytest.raises(EffectBusy):
        executor(client, store, "d-2", now=almost).run([issue_step(run_id=101)])
    assert not fake.repo(REPO).issues
    # A claim that old was left by a worker that died: take it over.
    later = NOW + patient.claim_timeout + timedelta(seconds=1)
    [done] = executor(client, store, "d-3", now=later).run([issue_step(run_id=102)])
    assert done.action == "created" and len(fake.repo(REPO).issues) == 1
    effect = store.get_effect(step.key)
    assert effect is not None and effect.delivery_id == "d-3"
    store.close()


def save_delivery(store: Store, delivery_id: str, running_since: datetime) -> None:
    store.save_delivery(delivery_id, event="workflow_run", action="completed", installation_id=INSTALLATION,
                        repository=REPO, payload="{}", now=running_since)
    assert store.start_delivery(delivery_id, now=running_since) is not None


def test_a_claim_is_held_while_its_delivery_renews_its_lease(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    step = issue_step()
    store = Store(url)
    save_delivery(store, "holder", NOW)
    store.record_effect(step.key, kind="issue", repository=REPO, now=NOW, delivery_id="holder")
    # Hours later, but the holder's worker is still renewing its lease (one GitHub call may block long).
    hours_later = NOW + timedelta(hours=3)
    assert store.touch_delivery("holder", now=hours_later - DELIVERY_LEASE / 2)
    with pytest.raises(EffectBusy):
        executor(client, store, "d-2", now=hours_later).run([step])
    assert not fake.repo(REPO).issues
    # The worker died: once the lease lapses the claim is taken over at once.
    lapsed = hours_later + DELIVERY_LEASE
    [done] = executor(client, store, "d-3", now=lapsed).run([issue_step(run_id=101)])
    assert done.action == "created" and len(fake.repo(REPO).issues) == 1
    store.close()


def test_a_claim_of_a_delivery_that_stopped_is_taken_over_at_once(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    step = issue_step()
    store = Store(url)
    save_delivery(store, "holder", NOW)
    store.record_effect(step.key, kind="issue", repository=REPO, now=NOW, delivery_id="holder")
    store.mark_delivery("holder", DeliveryStatus.FAILED, now=NOW, error="boom")
    [done] = executor(client, store, "d-2").run([step])
    assert done.action == "created" and len(fake.repo(REPO).issues) == 1
    effect = store.get_effect(step.key)
    assert effect is not None and (effect.delivery_id, effect.completed) == ("d-2", True)
    store.close()


def test_a_comment_someone_else_planted_the_marker_in_is_not_taken_over(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    number = pull_request(fake)
    step = StickyComment(REPO, number, 42, report(pulls=(number,)))
    store = Store(url)
    executor(client, store).run([step])
    [ours] = fake.repo(REPO).comments.values()
    ours["user"]["login"] = "mallory"  # as if a person had written it
    [done] = executor(client, store, "d-2").run([StickyComment(REPO, number, 42, report(run_id=101))])
    assert done.action == "created"
    assert len(fake.repo(REPO).comments) == 2 and ours["body"].count("mendbot:sticky") == 1
    store.close()


def test_one_check_run_per_run_attempt(fake: FakeGitHubServer, client: InstallationClient, url: str) -> None:
    built = report()
    step = CheckRunStep(REPO, built.run.head_sha, 100, 1, "test_failure: x", "summary", "text", ())
    store = Store(url)
    first = executor(client, store).run([step])
    second = executor(client, store, "d-2").run([step])
    assert [first[0].action, second[0].action] == ["created", "skipped"]
    assert len(fake.repo(REPO).check_runs) == 1
    store.close()


def test_an_invalid_config_is_reported_once_even_after_the_store_is_lost(
    fake: FakeGitHubServer, client: InstallationClient, url: str, tmp_path: Path
) -> None:
    step = ConfigProblemIssue(REPO, "abc123", ("severity_threshold: Input should be 'low', 'medium'…",))
    store = Store(url)
    executor(client, store).run([step])
    executor(client, store, "d-2").run([step])
    store.close()
    other = f"sqlite:///{tmp_path / 'other.db'}"
    migrate(other)
    fresh = Store(other)
    executor(client, fresh, "d-3").run([step])
    fresh.close()
    [issue] = fake.repo(REPO).issues.values()
    assert "<!-- mendbot:config=abc123 -->" in issue["body"]


def test_the_issue_limit_refuses_with_a_reason(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    store = Store(url)
    config = RepoConfig.model_validate({"rate_limits": {"issues_per_hour": 0}})
    [done] = executor(client, store, config=config).run([issue_step()])
    assert done.action == "refused" and "limit 0" in done.reasons[0]
    assert not fake.repo(REPO).issues
    store.close()


def test_a_run_attempt_is_counted_once(fake: FakeGitHubServer, client: InstallationClient, url: str) -> None:
    store = Store(url)
    step = issue_step()
    executor(client, store).run([step])
    [again] = executor(client, store, "d-2").run([step])
    assert again.action == "skipped"
    incident = store.get_incident(REPO, step.fingerprint)
    assert incident is not None and incident.count == 1
    store.close()


def test_an_issue_someone_else_planted_the_fingerprint_in_is_not_adopted(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    step = issue_step()
    planted = fake.add_issue(
        REPO, "harmless", body=f"see https://evil.example\n{marker(step.fingerprint)}",
        labels=["mendbot"], user="mallory",
    )
    store = Store(url)
    [done] = executor(client, store).run([step])
    assert done.action == "created" and done.target != str(planted["number"])
    assert fake.repo(REPO).issues[planted["number"]]["body"].startswith("see https://evil.example")
    ours = fake.repo(REPO).issues[int(done.target or 0)]
    assert ours["user"]["login"] == "mendbot[bot]" and marker(step.fingerprint) in ours["body"]
    store.close()


def test_after_the_store_is_lost_the_incident_returns_to_our_issue_not_a_planted_one(
    fake: FakeGitHubServer, client: InstallationClient, url: str, tmp_path: Path
) -> None:
    store = Store(url)
    [first] = executor(client, store).run([issue_step(run_id=100)])
    store.close()
    step = issue_step(run_id=101)
    fake.add_issue(REPO, "newer", body=marker(step.fingerprint), labels=["mendbot"], user="mallory")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    migrate(other)
    fresh = Store(other)
    [again] = executor(client, fresh, "d-2").run([step])
    assert (again.action, again.target) == ("occurrence", first.target)
    fresh.close()


def test_a_closed_issue_someone_else_planted_the_config_marker_in_is_not_adopted(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    step = ConfigProblemIssue(REPO, "abc123", ("severity_threshold: Input should be 'low', 'medium'…",))
    planted = fake.add_issue(
        REPO, "config", body=step.marker, labels=["mendbot"], state="closed", user="mallory"
    )
    store = Store(url)
    [done] = executor(client, store).run([step])
    assert done.target != str(planted["number"])
    ours = fake.repo(REPO).issues[int(done.target or 0)]
    assert ours["user"]["login"] == "mendbot[bot]" and step.marker in ours["body"]
    store.close()


# ---- alerts ----------------------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def local_notifier() -> AppriseNotifier:
    return AppriseNotifier(["json"], allow_private=True, timeout=5.0)


def alert_for(step: IncidentIssue, receiver: Receiver) -> IssueAlert:
    return IssueAlert(REPO, step.fingerprint, step.key, (receiver.url(),), f"[high] {REPO} test_failure: x @here")


def test_a_new_issue_is_alerted_once_and_a_repeat_is_not(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    first = issue_step(run_id=100)
    opened, alerted = executor(client, store, notifier=local_notifier()).run([first, alert_for(first, receiver)])
    assert (opened.action, alerted.action, alerted.target) == ("created", "sent", "1/1")
    [(_, payload)] = receiver.received
    [issue] = fake.repo(REPO).issues.values()
    assert payload["title"] == f"Mendbot: new CI incident in {REPO}"
    assert payload["message"].endswith("\n" + issue["html_url"])
    assert "@here" not in payload["message"]

    # The same delivery again, and the same failure in a later run: the issue is not new, nothing is sent.
    executor(client, store, notifier=local_notifier()).run([first, alert_for(first, receiver)])
    repeat = issue_step(run_id=101)
    _, again = executor(client, store, "d-2", notifier=local_notifier()).run([repeat, alert_for(repeat, receiver)])
    assert again.action == "skipped"
    assert len(receiver.received) == 1 and len(fake.repo(REPO).issues) == 1
    store.close()


def test_killed_after_opening_the_issue_the_retry_still_alerts_once(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    step = issue_step()
    crashing = CrashingStore(url, crash_on="issue:")
    with pytest.raises(SystemError):
        executor(client, crashing, notifier=local_notifier()).run([step, alert_for(step, receiver)])
    crashing.close()
    assert receiver.received == []

    store = Store(url)
    for delivery in ("d-1", "d-2"):
        executor(client, store, delivery, notifier=local_notifier()).run([step, alert_for(step, receiver)])
    assert len(receiver.received) == 1 and len(fake.repo(REPO).issues) == 1
    store.close()


def close(fake: FakeGitHubServer, number: int) -> None:
    fake.repo(REPO).issues[number].update(state="closed", state_reason="completed")


def regression_comments(fake: FakeGitHubServer, number: int) -> list[str]:
    url = fake.repo(REPO).issues[number]["url"]
    return [c["body"] for c in fake.repo(REPO).comments.values() if c["issue_url"] == url and "again" in c["body"]]


def test_a_repeat_inside_the_window_reopens_the_closed_issue_and_alerts_once(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    first = issue_step(run_id=100)
    executor(client, store, notifier=local_notifier()).run([first, alert_for(first, receiver)])
    [issue] = fake.repo(REPO).issues.values()
    close(fake, issue["number"])

    back = issue_step(run_id=101)
    later = NOW + timedelta(hours=2)
    reopened, alerted = executor(client, store, "d-2", now=later, notifier=local_notifier()).run(
        [back, alert_for(back, receiver)]
    )

    assert (reopened.action, reopened.target) == ("reopened", str(issue["number"]))
    assert len(fake.repo(REPO).issues) == 1
    assert (issue["state"], issue["state_reason"]) == ("open", "reopened")
    assert "seen 2 times" in issue["body"]
    [comment] = regression_comments(fake, issue["number"])
    assert "regression" in comment and "2 occurrences" in comment and "runs/101" in comment
    assert alerted.action == "sent"
    assert [payload["title"] for _, payload in receiver.received] == [
        f"Mendbot: new CI incident in {REPO}",
        f"Mendbot: CI incident reopened in {REPO} (failed again)",
    ]
    assert receiver.received[1][1]["message"].endswith("\n" + issue["html_url"])

    # The same delivery again, then a quiet repeat on the reopened issue: no second reopening, no alert.
    executor(client, store, "d-2", now=later, notifier=local_notifier()).run([back, alert_for(back, receiver)])
    repeat = issue_step(run_id=102)
    counted, quiet = executor(client, store, "d-3", now=later, notifier=local_notifier()).run(
        [repeat, alert_for(repeat, receiver)]
    )
    assert counted.action == "occurrence" and quiet.action == "skipped"
    assert len(receiver.received) == 2 and len(regression_comments(fake, issue["number"])) == 1
    assert "seen 3 times" in issue["body"]
    store.close()


def test_the_issue_state_is_read_before_its_body_is_edited(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    store = Store(url)
    [first] = executor(client, store).run([issue_step(run_id=100)])
    number = int(first.target or 0)
    close(fake, number)
    fake.requests.clear()

    executor(client, store, "d-2", now=NOW + timedelta(hours=1)).run([issue_step(run_id=101)])

    calls = fake.requests_to(rf"/issues/{number}$")
    assert calls[0].method == "GET"
    patches: list[dict[str, Any]] = [call.json() for call in calls if call.method == "PATCH"]
    # One edit, and it reopens as it writes the new count: the closed issue is never edited as if open.
    assert len(patches) == 1 and patches[0]["state"] == "open" and "seen 2 times" in patches[0]["body"]
    store.close()


def test_outside_the_window_a_closed_issue_stays_closed_and_a_new_one_is_opened(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    first = issue_step(run_id=100)
    [opened, _] = executor(client, store, notifier=local_notifier()).run([first, alert_for(first, receiver)])
    old = fake.repo(REPO).issues[int(opened.target or 0)]
    close(fake, old["number"])
    old_body = old["body"]

    back = issue_step(run_id=101)
    later = NOW + timedelta(hours=25)
    created, alerted = executor(client, store, "d-2", now=later, notifier=local_notifier()).run(
        [back, alert_for(back, receiver)]
    )

    assert created.action == "created" and created.target != opened.target
    assert (old["state"], old["body"]) == ("closed", old_body)
    assert not regression_comments(fake, old["number"])
    new = fake.repo(REPO).issues[int(created.target or 0)]
    assert new["state"] == "open" and marker(first.fingerprint) in new["body"]
    incident = store.get_incident(REPO, first.fingerprint)
    assert incident is not None and incident.issue_number == new["number"]
    assert alerted.action == "sent"
    assert [payload["title"] for _, payload in receiver.received] == [f"Mendbot: new CI incident in {REPO}"] * 2
    store.close()


def test_a_retry_measures_the_window_from_the_sighting_before_its_own(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    store = Store(url)
    [opened] = executor(client, store).run([issue_step(run_id=100)])
    old = int(opened.target or 0)
    close(fake, old)
    back = issue_step(run_id=101)
    later = NOW + timedelta(hours=30)
    # The first attempt counts the sighting (the incident is now last seen `later`), then GitHub fails.
    fake.fail_next(rf"/issues/{old}$", 404, method="GET")
    with pytest.raises(Exception, match="404"):
        executor(client, store, "d-2", now=later).run([back])

    [done] = executor(client, store, "d-2", now=later + timedelta(minutes=1)).run([back])

    # Still 30 hours after the last sighting before this run, so a new issue, not a reopening.
    assert done.action == "created" and done.target != str(old)
    assert fake.repo(REPO).issues[old]["state"] == "closed"
    store.close()


def test_killed_after_opening_an_issue_for_a_failure_that_came_back_the_retry_finds_it(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    store = Store(url)
    [opened] = executor(client, store).run([issue_step(run_id=100)])
    store.close()
    close(fake, int(opened.target or 0))
    back = issue_step(run_id=101)
    later = NOW + timedelta(hours=30)
    crashing = CrashingStore(url, crash_on=f"{back.key}:after-")
    with pytest.raises(SystemError):
        executor(client, crashing, "d-2", now=later).run([back])
    crashing.close()

    store = Store(url)
    [done] = executor(client, store, "d-2", now=later).run([back])
    assert len(fake.repo(REPO).issues) == 2
    incident = store.get_incident(REPO, back.fingerprint)
    assert incident is not None and str(incident.issue_number) == done.target != opened.target
    store.close()


def test_killed_while_reopening_the_retry_comments_and_alerts_once(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    first = issue_step(run_id=100)
    executor(client, store, notifier=local_notifier()).run([first, alert_for(first, receiver)])
    store.close()
    [issue] = fake.repo(REPO).issues.values()
    close(fake, issue["number"])

    back = issue_step(run_id=101)
    later = NOW + timedelta(hours=3)
    crashing = CrashingStore(url, crash_on="reopen:")
    with pytest.raises(SystemError):
        executor(client, crashing, "d-2", now=later, notifier=local_notifier()).run([back, alert_for(back, receiver)])
    crashing.close()
    assert issue["state"] == "open" and len(receiver.received) == 1
    # Someone closes it again before the retry; the retry still finishes this reopening, not a new issue.
    close(fake, issue["number"])

    store = Store(url)
    for delivery in ("d-2", "d-3"):
        executor(client, store, delivery, now=later + timedelta(minutes=5), notifier=local_notifier()).run(
            [back, alert_for(back, receiver)]
        )
    assert len(fake.repo(REPO).issues) == 1 and issue["state"] == "open"
    assert len(regression_comments(fake, issue["number"])) == 1
    assert len(receiver.received) == 2
    incident = store.get_incident(REPO, first.fingerprint)
    assert incident is not None and incident.count == 2
    store.close()


def test_a_reopening_beyond_the_hourly_issue_limit_is_counted_and_left_closed(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    store = Store(url)
    config = RepoConfig.model_validate({"rate_limits": {"issues_per_hour": 1}})
    [opened] = executor(client, store, config=config).run([issue_step(run_id=100)])
    issue = fake.repo(REPO).issues[int(opened.target or 0)]
    close(fake, issue["number"])
    body = issue["body"]

    [done] = executor(client, store, "d-2", config=config, now=NOW + timedelta(minutes=10)).run(
        [issue_step(run_id=101)]
    )

    assert done.action == "refused" and "issues limit of 1" in done.reasons[0]
    assert (issue["state"], issue["body"]) == ("closed", body)
    assert len(fake.repo(REPO).issues) == 1
    incident = store.get_incident(REPO, issue_step().fingerprint)
    assert incident is not None and incident.count == 2
    store.close()


def test_the_hourly_notification_limit_refuses_with_a_reason(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    config = RepoConfig.model_validate({"rate_limits": {"notifications_per_hour": 0}})
    step = issue_step()
    opened, alerted = executor(client, store, config=config, notifier=local_notifier()).run(
        [step, alert_for(step, receiver)]
    )
    assert opened.action == "created"
    assert alerted.action == "refused" and "notifications" in alerted.reasons[0]
    assert receiver.received == []
    store.close()


def test_a_failing_target_does_not_fail_the_delivery(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    step = issue_step()
    alert = IssueAlert(REPO, step.fingerprint, step.key, ("json://127.0.0.1:1/closed", receiver.url()), "x")
    _, alerted = executor(client, store, notifier=local_notifier()).run([step, alert])
    assert (alerted.action, alerted.target) == ("sent", "1/2")
    assert alerted.reasons and "json://127.0.0.1" in alerted.reasons[0]
    assert len(receiver.received) == 1
    store.close()


def test_refused_notify_targets_are_reported_once_per_set_of_refusals(
    fake: FakeGitHubServer, client: InstallationClient, url: str
) -> None:
    store = Store(url)
    step = NotifyProblemIssue(REPO, ("json://10.0.0.1: its host resolves to a private address",))
    executor(client, store).run([step])
    executor(client, store, "d-2").run([step])
    [issue] = fake.repo(REPO).issues.values()
    assert issue["title"] == step.title and step.marker in issue["body"]
    executor(client, store, "d-3").run([NotifyProblemIssue(REPO, ("xml://…: not allowed",))])
    assert len(fake.repo(REPO).issues) == 2
    store.close()
