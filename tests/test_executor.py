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


def test_a_reopened_regression_is_a_new_issue_and_alerts_again(
    fake: FakeGitHubServer, client: InstallationClient, url: str, receiver: Receiver
) -> None:
    store = Store(url)
    first = issue_step(run_id=100)
    executor(client, store, notifier=local_notifier()).run([first, alert_for(first, receiver)])
    [issue] = fake.repo(REPO).issues.values()
    issue["state"] = "closed"
    back = issue_step(run_id=101)
    executor(client, store, "d-2", notifier=local_notifier()).run([back, alert_for(back, receiver)])
    assert len(fake.repo(REPO).issues) == 2 and len(receiver.received) == 2
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
