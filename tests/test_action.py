"""`mendbot action` against the local GitHub API: summary, outputs, sticky comment, clear errors, no leaked token."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bot.action import INPUTS, OUTPUTS, format_outputs, read_inputs
from bot.action import run as action_main
from bot.adapters.github import GitHubApp
from bot.adapters.store import Store
from bot.cli import app
from bot.diagnosers import OfflineDiagnoser
from bot.plan import RunInfo
from bot.policy.repo_config import parse_repo_config
from bot.services import Options, Services
from tests.app_support import APP_ID, INSTALLATION, LOGS, REPO, failure_payload, fake_github, rsa_keys
from tests.fakes import anthropic_server as anthropic
from tests.fakes.anthropic_server import FakeAnthropic
from tests.fakes.github_server import FakeGitHubServer

GRADLE = LOGS / "gha-gradle-test-failure.log"
ELIXIR = LOGS / "travis-elixir-test-failure.log"
runner = CliRunner()


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str
    summary: str
    outputs: str

    def output(self, name: str) -> str:
        return parse_outputs(self.outputs)[name]

    def everything(self) -> str:
        return "\n".join((self.stdout, self.stderr, self.summary, self.outputs))


@dataclass
class Actions:
    """A GitHub Actions job around `mendbot action`: the environment, event file and command files."""

    fake: FakeGitHubServer
    token: str
    tmp: Path

    def run(
        self,
        inputs: Mapping[str, str] | None = None,
        *,
        event_name: str = "workflow_run",
        event: dict[str, Any] | None = None,
        env: Mapping[str, str | None] | None = None,
    ) -> Result:
        """Run the Action; `inputs` are the `with:` values by their action.yml names, `env` overrides variables."""
        summary, outputs, event_path = self.tmp / "summary.md", self.tmp / "output.txt", self.tmp / "event.json"
        for path in (summary, outputs):
            path.write_text("")
        event_path.write_text(json.dumps(event or {}))
        # Cleared first: when this suite itself runs in GitHub Actions, the real job's variables are set.
        variables: dict[str, str | None] = {
            name: None for name in os.environ if name.startswith(("GITHUB_", "INPUT_", "MENDBOT_", "ANTHROPIC_"))
        }
        variables.update(
            GITHUB_ACTIONS="true",
            GITHUB_REPOSITORY=REPO,
            GITHUB_API_URL=self.fake.api_url,
            GITHUB_EVENT_NAME=event_name,
            GITHUB_EVENT_PATH=str(event_path),
            GITHUB_RUN_ID="999999",
            GITHUB_STEP_SUMMARY=str(summary),
            GITHUB_OUTPUT=str(outputs),
        )
        # The runner passes every declared input, defaults included, as INPUT_<NAME> with hyphens kept.
        variables.update({"INPUT_GITHUB-TOKEN": self.token, "INPUT_COMMENT": "false", "INPUT_FAIL-ON-ERROR": "false"})
        variables.update({f"INPUT_{name.upper()}": value for name, value in (inputs or {}).items()})
        variables.update(env or {})
        result = runner.invoke(app, ["action"], env=variables)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Result(result.exit_code, result.stdout, result.stderr, summary.read_text(), outputs.read_text())

    def failed_run(
        self, log: bytes, *, job: str = "build", pulls: tuple[int, ...] = (), **run: Any
    ) -> dict[str, Any]:
        data = self.fake.add_run(REPO, pull_requests=pulls, **run)
        self.fake.add_job(REPO, data["id"], name=job, log=log)
        return data


@pytest.fixture
def actions(tmp_path: Path) -> Iterator[Actions]:
    fake = fake_github()
    # GITHUB_TOKEN is an installation token of the GitHub Actions app; the fake mints one the same way.
    minting = GitHubApp(APP_ID, rsa_keys()[0], fake.api_url)
    token = minting.installation_token(INSTALLATION)
    minting.close()
    fake.requests.clear()
    yield Actions(fake, token, tmp_path)
    fake.stop()


def parse_outputs(text: str) -> dict[str, str]:
    """Read GITHUB_OUTPUT the way the runner does: name=value lines and name<<DELIMITER heredocs."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for inner in lines:
                if inner == delimiter:
                    break
                body.append(inner)
            else:
                raise AssertionError(f"heredoc for {name} is not closed")
            values[name] = "\n".join(body)
        elif line:
            name, value = line.split("=", 1)
            values[name] = value
    return values


def cli_diagnosis(path: Path) -> dict[str, Any]:
    result = runner.invoke(app, ["diagnose", str(path), "--offline", "--format", "json"])
    assert result.exit_code == 0, result.output
    diagnosis: dict[str, Any] = json.loads(result.stdout)["diagnosis"]
    return diagnosis


# ---- run mode: the run's failed jobs through the real adapter -------------------------------------------


def test_a_failed_run_becomes_the_job_summary_and_the_outputs(actions: Actions) -> None:
    run = actions.failed_run(GRADLE.read_bytes())

    result = actions.run(event=failure_payload(run))

    assert result.code == 0, result.stdout
    assert "### Evidence" in result.summary and "testClassicParsing" in result.summary
    assert "<!-- mendbot:fingerprint=" in result.summary
    outputs = parse_outputs(result.outputs)
    assert set(outputs) == set(OUTPUTS)
    assert outputs["category"] == "test_failure"
    assert outputs["source"] == "rules"
    assert re.fullmatch(r"[0-9a-f]{16}", outputs["fingerprint"])
    assert f"fingerprint {outputs['fingerprint']}" in result.stdout
    assert "the rules (no anthropic-api-key)" in result.stdout
    # The triggering run from the event, not the Action's own GITHUB_RUN_ID, was read over the API.
    assert actions.fake.requests_to(rf"/actions/runs/{run['id']}/attempts/1/jobs$")
    assert actions.fake.requests_to(r"/actions/jobs/\d+/logs$")
    assert not actions.fake.requests_to(r"/actions/runs/999999")
    assert not actions.fake.requests_to(r"/comments$", method="POST")


def test_every_entry_point_gives_the_same_diagnosis(actions: Actions, tmp_path: Path) -> None:
    run = actions.failed_run(GRADLE.read_bytes())
    from_action = actions.run(event=failure_payload(run))
    from_log_path = actions.run({"log-path": str(GRADLE)})
    from_cli = cli_diagnosis(GRADLE)

    # The App's pipeline on the same run: the same fingerprint.
    store = Store(f"sqlite:///{tmp_path / 'app.db'}")
    store.migrate()
    github = GitHubApp(APP_ID, rsa_keys()[0], actions.fake.api_url)
    try:
        services = Services(store, github, OfflineDiagnoser(), Options())
        info = RunInfo.from_payload(failure_payload(run), INSTALLATION)
        report = services.diagnose_run(github.client(INSTALLATION), info, parse_repo_config(None))
    finally:
        github.close()
        store.close()
    assert report is not None
    assert from_action.output("fingerprint") == report.primary.diagnosis.fingerprint

    # The fingerprint rests on the failure alone, so a bare log gives the same one as the run.
    assert from_log_path.output("fingerprint") == from_cli["fingerprint"] == from_action.output("fingerprint")
    for result in (from_action, from_log_path):
        assert result.output("category") == from_cli["category"]
        assert result.output("severity") == from_cli["severity"]
        for evidence in from_cli["evidence"]:
            assert evidence["text"] in result.summary


def test_the_current_run_is_the_default_and_its_pull_request_gets_one_sticky_comment(actions: Actions) -> None:
    # The `if: failure()` style: a later job of the same pull_request run.
    issue = actions.fake.add_issue(REPO, "Change feature")
    pull = actions.fake.add_pull(REPO, "feature", number=issue["number"])
    run = actions.failed_run(
        ELIXIR.read_bytes(), event="pull_request", head_branch="feature", head_sha=pull["head"]["sha"]
    )
    event = {"pull_request": {"number": issue["number"]}}
    inputs = {"comment": "true", "comment-author": "mendbot[bot]"}

    current = {"GITHUB_RUN_ID": str(run["id"])}
    first = actions.run(inputs, event_name="pull_request", event=event, env=current)
    second = actions.run(inputs, event_name="pull_request", event=event, env=current)

    assert first.code == 0 and second.code == 0, first.stdout + second.stdout
    comments = list(actions.fake.repo(REPO).comments.values())
    assert len(comments) == 1
    assert first.output("fingerprint") in comments[0]["body"]
    assert f"comment #{issue['number']} created" in first.stdout
    assert f"comment #{issue['number']} unchanged" in second.stdout


def test_a_pull_request_whose_head_moved_on_gets_no_comment(actions: Actions) -> None:
    issue = actions.fake.add_issue(REPO, "Change feature")
    actions.fake.add_pull(REPO, "feature", number=issue["number"])
    run = actions.failed_run(GRADLE.read_bytes(), event="pull_request", pulls=(issue["number"],))

    result = actions.run({"comment": "true", "comment-author": "mendbot[bot]"}, event=failure_payload(run))

    assert result.code == 0, result.stdout
    assert result.output("category") == "test_failure"
    assert not actions.fake.repo(REPO).comments


def test_a_refused_comment_is_one_error_after_the_summary_is_written(actions: Actions) -> None:
    issue = actions.fake.add_issue(REPO, "Change feature")
    pull = actions.fake.add_pull(REPO, "feature", number=issue["number"])
    run = actions.failed_run(
        GRADLE.read_bytes(), event="pull_request", pulls=(issue["number"],), head_sha=pull["head"]["sha"]
    )
    actions.fake.fail_next(r"/issues/\d+/comments$", 403, method="POST")

    result = actions.run({"comment": "true", "fail-on-error": "true"}, event=failure_payload(run))

    assert result.code == 1
    assert "testClassicParsing" in result.summary and result.output("category") == "test_failure"
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "pull-requests: write" in errors[0]


def test_a_run_without_failed_jobs_says_so(actions: Actions) -> None:
    run = actions.fake.add_run(REPO, conclusion="success")

    result = actions.run({"run-id": str(run["id"])})

    assert result.code == 0
    assert "no failed jobs" in result.summary
    assert result.outputs == ""


def test_github_enterprise_server_is_reached_under_its_api_prefix(tmp_path: Path) -> None:
    fake = FakeGitHubServer(app_id=APP_ID, public_key_pem=rsa_keys()[1], api_prefix="/api/v3").start()
    try:
        fake.add_installation(INSTALLATION)
        fake.add_repo(REPO, INSTALLATION, default_branch="master")
        minting = GitHubApp(APP_ID, rsa_keys()[0], fake.api_url)
        token = minting.installation_token(INSTALLATION)
        minting.close()
        actions = Actions(fake, token, tmp_path)
        run = actions.failed_run(GRADLE.read_bytes())

        result = actions.run(event=failure_payload(run))
    finally:
        fake.stop()
    assert result.code == 0, result.stdout
    assert result.output("category") == "test_failure"
    assert fake.requests and all(r.path.startswith(("/api/v3/", "/_blobs/")) for r in fake.requests)


# ---- log-path mode -------------------------------------------------------------------------------------


def test_log_path_needs_no_network(actions: Actions) -> None:
    result = actions.run({"log-path": str(GRADLE), "github-token": ""})

    assert result.code == 0, result.stdout
    assert "testClassicParsing" in result.summary
    assert result.output("fingerprint") == cli_diagnosis(GRADLE)["fingerprint"]
    assert actions.fake.requests == []


def test_with_an_anthropic_key_the_model_diagnoses_and_the_key_stays_secret(actions: Actions) -> None:
    with FakeAnthropic() as claude:
        result = actions.run(
            {"log-path": str(GRADLE), "anthropic-api-key": claude.api_key},
            env={"MENDBOT_ANTHROPIC_BASE_URL": claude.url},
        )
        asked = len(claude.message_requests)

    assert result.code == 0, result.stdout
    assert asked == 1
    assert result.output("source") == "model"
    assert "diagnosed by the model (" in result.stdout
    assert claude.api_key not in result.everything()


# ---- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fail_on_error", ["false", "true"])
def test_a_missing_repository_is_one_clear_line(actions: Actions, fail_on_error: str) -> None:
    result = actions.run({"fail-on-error": fail_on_error}, env={"GITHUB_REPOSITORY": None})

    assert result.code == (1 if fail_on_error == "true" else 0)
    assert result.stdout.strip().splitlines() == [
        "::error title=Mendbot::GITHUB_REPOSITORY is not set: run this inside GitHub Actions, or give log-path"
    ]
    assert "Traceback" not in result.stdout + result.stderr
    assert result.summary == "" and result.outputs == ""
    assert actions.fake.requests == []


def test_a_bad_token_is_one_clear_line_that_never_shows_the_token(actions: Actions) -> None:
    run = actions.failed_run(GRADLE.read_bytes())
    bad = "ghs_" + "x" * 36 + ".not.a.token"

    result = actions.run({"github-token": bad, "fail-on-error": "true"}, event=failure_payload(run))

    assert result.code == 1
    errors = [line for line in result.stdout.splitlines() if line.startswith("::error")]
    assert len(errors) == 1 and "401" in errors[0] and "github-token" in errors[0]
    assert "Traceback" not in result.stdout + result.stderr
    assert bad not in result.everything()


def test_the_token_never_reaches_the_summary_outputs_or_logs_even_when_the_log_echoes_it(
    actions: Actions,
) -> None:
    leaky = (
        f"##[group]Run git push\nremote: Invalid username or password.\n"
        f"fatal: Authentication failed for 'https://x-access-token:{actions.token}@github.com/{REPO}.git/'\n"
        f"##[error]Process completed with exit code 128.\n"
    )
    run = actions.failed_run(leaky.encode())

    result = actions.run(event=failure_payload(run))

    assert result.code == 0, result.stdout
    assert "Authentication failed" in result.summary
    assert actions.token not in result.everything()


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"budget": "12"}, "input budget must be a number of bytes"),
        ({"comment": "yes"}, "input comment must be true or false"),
        ({"run-id": "abc"}, "run-id must be a workflow run id"),
        ({"log-path": "no/such.log"}, "log-path: no such file"),
    ],
)
def test_bad_inputs_are_one_clear_line(actions: Actions, inputs: dict[str, str], message: str) -> None:
    result = actions.run(inputs)

    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("::error title=Mendbot::") and message in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_no_line_of_log_text_can_become_a_workflow_command(actions: Actions) -> None:
    # A log can talk the model into anything; what it says is printed, but never at the start of a line.
    def obedient(body: dict[str, Any]) -> dict[str, Any]:
        return {**anthropic.diagnosis_input(body), "root_cause": "::warning::the log told me to say this"}

    with FakeAnthropic() as claude:
        claude.script(anthropic.Scenario(tool_input=obedient))
        result = actions.run(
            {"log-path": str(GRADLE), "anthropic-api-key": claude.api_key},
            env={"MENDBOT_ANTHROPIC_BASE_URL": claude.url},
        )

    assert result.code == 0, result.stdout
    assert result.output("summary") == "::warning::the log told me to say this"
    assert "the log told me to say this" in result.stdout
    assert not [line for line in (result.stdout + result.stderr).splitlines() if line.lstrip().startswith("::")]


def test_the_token_is_masked_even_where_no_secret_pattern_knows_its_shape(actions: Actions) -> None:
    token = "Zq7-opaque-credential-4d1f0b"
    leaky = actions.tmp / "leaky.log"
    leaky.write_text(f"Run ./deploy\nerror: the server refused credential {token}\nError: Process exited with 1\n")

    result = actions.run({"log-path": str(leaky), "github-token": token})

    assert result.code == 0, result.stdout
    assert "the server refused credential ***" in result.summary
    assert token not in result.everything()


def test_outputs_use_name_value_lines_and_heredocs_for_multiline_values() -> None:
    text = format_outputs({"category": "test_failure", "summary": "first\nsecond"})

    assert text.startswith("category=test_failure\nsummary<<ghadelimiter_")
    assert parse_outputs(text) == {"category": "test_failure", "summary": "first\nsecond"}


# ---- packaging: action.yml, Dockerfile, workflows -------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_yaml(path: Path) -> Any:
    from ruamel.yaml import YAML

    return YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))


def test_action_yml_declares_exactly_what_the_action_reads_and_writes() -> None:
    action = load_yaml(REPO_ROOT / "action.yml")

    assert action["runs"] == {"using": "docker", "image": "Dockerfile", "args": ["action"]}
    assert set(action["inputs"]) == set(INPUTS)
    assert set(action["outputs"]) == set(OUTPUTS)
    for spec in [*action["inputs"].values(), *action["outputs"].values()]:
        assert spec["description"].strip()
    assert action["inputs"]["github-token"]["default"] == "${{ github.token }}"
    assert str(action["inputs"]["fail-on-error"]["default"]) == "false"
    assert all(not spec.get("required", False) for spec in action["inputs"].values())


class RecordingEnv(dict[str, str]):
    """An environment that remembers which INPUT_* variables were looked up."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.inputs: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        if key.startswith("INPUT_"):
            self.inputs.add(key.removeprefix("INPUT_").lower().replace("_", "-"))
        return super().get(key, default)


def test_the_action_reads_exactly_the_inputs_action_yml_declares(tmp_path: Path) -> None:
    run_mode = RecordingEnv({"GITHUB_REPOSITORY": REPO, "GITHUB_RUN_ID": "7", "INPUT_GITHUB-TOKEN": "t"})
    log_mode = RecordingEnv({"INPUT_LOG-PATH": str(GRADLE), "GITHUB_STEP_SUMMARY": str(tmp_path / "s.md")})

    read_inputs(run_mode)
    assert action_main(log_mode, say=lambda _line: None) == 0

    declared = set(load_yaml(REPO_ROOT / "action.yml")["inputs"])
    assert run_mode.inputs | log_mode.inputs == declared == set(INPUTS)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            found.append((keyword.upper(), rest.strip()))
    return found


def test_the_dockerfile_builds_one_non_root_image_for_every_entry_point() -> None:
    steps = dockerfile_instructions()
    keywords = [keyword for keyword, _ in steps]
    value = {keyword: rest for keyword, rest in steps}  # the last of each, which is the one that counts

    assert steps[0] == ("FROM", "python:3.11-slim")
    assert json.loads(value["ENTRYPOINT"]) == ["mendbot"]
    assert json.loads(value["CMD"]) == ["serve", "--host", "0.0.0.0"]
    assert value["EXPOSE"] == "8000"
    assert "/healthz" in value["HEALTHCHECK"] and "python" in value["HEALTHCHECK"]
    assert "curl" not in value["HEALTHCHECK"]
    user = value["USER"].split(":")[0]
    assert user not in ("root", "0")
    # The package is installed from its pyproject, without the dev extras, before the user drops root.
    copied = " ".join(rest for keyword, rest in steps if keyword == "COPY")
    assert "pyproject.toml" in copied and "bot" in copied
    installs = [rest for keyword, rest in steps if keyword == "RUN" and "pip install" in rest]
    assert installs and all("[dev]" not in rest and "-e " not in rest for rest in installs)
    assert max(i for i, k in enumerate(keywords) if k == "RUN") < keywords.index("USER")


def test_the_docker_context_holds_only_what_the_image_copies() -> None:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    copied = {
        source for keyword, rest in dockerfile_instructions() if keyword == "COPY" for source in rest.split()[:-1]
    }

    # Everything is left out first (.venv, databases, .git), then exactly the copied sources are let back in.
    assert entries[0] == "*"
    assert {entry[1:] for entry in entries if entry.startswith("!")} == copied
    assert all((REPO_ROOT / source).exists() for source in copied)


def test_ci_runs_make_test_and_mendbot_diagnoses_its_failures() -> None:
    ci = load_yaml(REPO_ROOT / ".github" / "workflows" / "ci.yml")
    mendbot = load_yaml(REPO_ROOT / ".github" / "workflows" / "mendbot.yml")

    assert {"push", "pull_request"} <= set(ci["on"])
    steps = [step for job in ci["jobs"].values() for step in job["steps"]]
    assert any(step.get("uses", "").startswith("actions/setup-python@") for step in steps)
    assert any(str(step.get("with", {}).get("python-version")) == "3.11" for step in steps)
    assert any(step.get("run", "").strip() == "make test" for step in steps)

    trigger = mendbot["on"]["workflow_run"]
    assert trigger["workflows"] == [ci["name"]] and trigger["types"] == ["completed"]
    assert mendbot["permissions"] == {"actions": "read", "contents": "read", "pull-requests": "write"}
    (job,) = mendbot["jobs"].values()
    assert "conclusion == 'failure'" in job["if"]
    (step,) = [step for step in job["steps"] if step.get("uses") == "./"]
    assert set(step.get("with", {})) <= set(INPUTS)
