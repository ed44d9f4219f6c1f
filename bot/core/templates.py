"""Every message Mendbot writes for people, kept in one place."""

from __future__ import annotations

from typing import Final

from bot.core.models import Category

MARKER: Final = "<!-- mendbot:fingerprint={fingerprint} -->"
ISSUE_TITLE: Final = "🚨 [AUTO] {category}: {summary}"
ONE_LINE: Final = "[{severity}] {repository}{category}: {summary} ({fingerprint})"
COMMENT_HEADING: Final = "## {icon} Mendbot diagnosis: {title}"
CHECK_RUN_NAME: Final = "Mendbot diagnosis"
RULES_NOTE: Final = (
    "This diagnosis is rule-based: no model was used. It matched the log against Mendbot's "
    "{rule_count} rules and quotes the lines that matched."
)
FALLBACK_RULE_NOTE: Final = "No rule matched; this names the most error-like line in the log."
SLOW_RULES_NOTE: Final = (
    "These repository rules took too long and were skipped; simplify their patterns in "
    ".github/mendbot.yml: {rules}"
)
TRUNCATED_NOTE: Final = "\n\n_(Trimmed to fit GitHub's comment size limit.)_"
OUTDATED_SUMMARY: Final = "Earlier diagnosis (outdated: the failure changed)"
FOOTER_RULES: Final = "Diagnosed by Mendbot from the rules · confidence {confidence:.0%}"
FOOTER_MODEL: Final = (
    "Diagnosed by Mendbot with {model} · {input_tokens:,} in / {output_tokens:,} out tokens · "
    "${cost:.4f} · confidence {confidence:.0%}"
)

SEVERITY_ICON: Final = {"low": "ℹ️", "medium": "⚠️", "high": "❌", "critical": "🚨"}

IMPACT: Final[dict[Category, str]] = {
    Category.TEST_FAILURE: "Tests fail, so this change cannot be trusted or merged until they pass.",
    Category.COMPILE_ERROR: "The build does not compile; nothing after the build step ran.",
    Category.LINT: "A style or static check failed; the code may work, but the pipeline is red.",
    Category.DEPENDENCY: "Dependencies could not be installed or resolved, so the job stopped before testing.",
    Category.NETWORK: "A network call failed; the failure may be transient and unrelated to the change.",
    Category.TIMEOUT: "The job ran out of time; results after that point are missing.",
    Category.OOM: "The job ran out of memory and was killed.",
    Category.CRASH: "A process crashed; its results, and anything after it, are missing.",
    Category.INFRASTRUCTURE: "The CI infrastructure failed; the change itself may be fine.",
    Category.CONFIGURATION: "The workflow or environment is misconfigured, so the job cannot run as intended.",
    Category.CANCELLED: "The run was cancelled or interrupted before it finished.",
    Category.UNKNOWN: "The job failed for a reason the rules do not recognise; see the evidence.",
}

FIX_SUGGESTION: Final[dict[Category, str]] = {
    Category.TIMEOUT: "Raise the job's or step's `timeout-minutes` moderately, or split the slow work.",
    Category.NETWORK: "Add a bounded retry around the failing download or network step.",
}

# Why the model was not used, or not believed; each is shown as a note on the rule-based diagnosis.
CAP_HOURLY_REASON: Final = "{repository} has had {count} model diagnoses this hour (limit {limit})"
CAP_REPOSITORY_DAILY_REASON: Final = (
    "{repository} has spent ${spent:.2f} of its ${limit:.2f} daily model budget"
)
CAP_INSTALLATION_DAILY_REASON: Final = (
    "this installation has spent ${spent:.2f} of its ${limit:.2f} daily model budget"
)
CAP_STORE_REASON: Final = "the usage records could not be read, so the spending caps could not be checked"
MODEL_CAPPED_NOTE: Final = "The model was not used because a spending cap was reached: {reasons}."
MODEL_BREAKER_NOTE: Final = (
    "The model was not used: its API kept failing, so Mendbot pauses model calls until {until:%H:%M} UTC."
)
MODEL_UNAVAILABLE_NOTE: Final = (
    "The model could not be asked ({reason}), so this is the rule-based diagnosis."
)
MODEL_REDACTION_NOTE: Final = (
    "The model was not used: the log could not be redacted safely, so nothing was sent."
)
MODEL_PROMPT_NOTE: Final = "The model was not used: the facts did not fit in the prompt's size budget."
MODEL_INVALID_NOTE: Final = "The model's answer was invalid twice, so this is the rule-based diagnosis."
MODEL_REMEMBERED_NOTE: Final = (
    "The model diagnosed this same log excerpt on {when:%Y-%m-%d %H:%M} UTC; this repeats that diagnosis "
    "without a new model call."
)
MODEL_INVENTED_NOTE: Final = (
    "The model's diagnosis was discarded because none of its evidence is in the log; "
    "this is the rule-based diagnosis."
)

# The GitHub App's own bodies: sticky PR comments, incident issues and config reports.
STICKY_MARKER: Final = "<!-- mendbot:sticky=workflow-{workflow_id} -->"
OCCURRENCE_MARKER: Final = "<!-- mendbot:occurrence={run} -->"
CONFIG_MARKER: Final = "<!-- mendbot:config={digest} -->"
OCCURRENCE_LINE: Final = "**Occurrences:** seen {count} time{plural}; latest in [this run]({run_url}) at {when}."
OCCURRENCE_COMMENT: Final = "Seen again{quiet} in [this run]({run_url}); {count} occurrences in all.\n{marker}"
REGRESSION_COMMENT: Final = (
    "Failed again in [this run]({run_url}) after this issue was closed, so Mendbot reopened it as a regression; "
    "{count} occurrences in all.\n{marker}"
)
OTHER_JOBS_HEADING: Final = "### Other failed jobs"
OTHER_JOB_LINE: Final = "- **{job}**: {line}"
CHECK_RUN_TITLE: Final = "{category}: {summary}"
ANNOTATION_TITLE: Final = "Mendbot: {category}"
SKIPPED_JOBS_NOTE: Final = "{count} more failed job(s) were not diagnosed: {names}."
LOG_TRUNCATED_NOTE: Final = "The log of {job} was cut at {limit:,} bytes; the end of it was not read."
LOG_UNREADABLE_NOTE: Final = "The log of {job} could not be read: {reason}"
CONFIG_ISSUE_TITLE: Final = "⚠️ Mendbot: .github/mendbot.yml is invalid"
CONFIG_ISSUE_BODY: Final = (
    "Mendbot could not use this repository's `.github/mendbot.yml`, so it carries on with its defaults "
    "until the file is fixed:\n\n{problems}\n\n"
    "The keys are described in Mendbot's configuration reference (docs/configuration.md).\n{marker}"
)

# Diagnoses asked for by labeling an issue `claude-ready`.
ISSUE_DIAGNOSIS_MARKER: Final = "<!-- mendbot:claude-ready={delivery} -->"
ISSUE_FROM_RUN: Final = "Diagnosis of the failed jobs of [run {run_id}]({run_url}), which this issue links to."
ISSUE_FROM_BODY: Final = "Diagnosis of the log text in this issue."

# The Action's own messages.
ACTION_NO_FAILED_JOBS: Final = "## Mendbot\n\nRun {run_id} (attempt {attempt}) has no failed jobs to diagnose.\n"
ACTION_COMMENT_REFUSED: Final = (
    "could not comment on #{number}: {reason} (the job needs `permissions: pull-requests: write`)"
)

# Alerts to a repository's `notify` targets: plain text, since chat services read it as Markdown or worse.
ALERT_TITLE: Final = "Mendbot: new CI incident in {repository}"
ALERT_REOPENED_TITLE: Final = "Mendbot: CI incident reopened in {repository} (failed again)"
ALERT_BODY: Final = "{line}\n{url}"
NOTIFY_MARKER: Final = "<!-- mendbot:notify-refused={digest} -->"
NOTIFY_ISSUE_TITLE: Final = "⚠️ Mendbot: some notify targets in .github/mendbot.yml are refused"
NOTIFY_ISSUE_BODY: Final = (
    "Mendbot will not send alerts to these `notify` targets of `.github/mendbot.yml` (shown as scheme and "
    "host only), for the reasons given:\n\n{problems}\n\n"
    "The other targets still get alerts. The schemes a repository may use are set by whoever runs "
    "Mendbot (`MENDBOT_NOTIFY_SCHEMES`); see docs/configuration.md.\n{marker}"
)
