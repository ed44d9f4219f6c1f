"""Mendbot's deployment settings, read from MENDBOT_* environment variables by each entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bot.policy.limits import ModelPrices

DEFAULT_API_URL = "https://api.github.com"
DEFAULT_DATABASE_URL = "sqlite:///mendbot.db"
DEFAULT_QUEUE_FILE = "mendbot-queue.db"
MB = 1024 * 1024
# Chat and paging services whose apprise plugins post to the service's own fixed host (Slack, Discord,
# PagerDuty, Opsgenie, Telegram), plus Teams through Power Automate, whose host is checked like any other.
# Generic webhooks (json, xml, form) and mail servers are left out: they let a repository choose the host.
DEFAULT_NOTIFY_SCHEMES = ("slack", "discord", "workflows", "pagerduty", "opsgenie", "tgram")


class SettingsError(ValueError):
    """A setting is missing or wrong; the message names the environment variable and never its value."""


class Settings(BaseSettings):
    """One deployment's configuration. Build it once, in an entry point, and pass it down."""

    model_config = SettingsConfigDict(env_prefix="MENDBOT_", extra="ignore", frozen=True)

    app_id: str | None = Field(default=None, description="the GitHub App's ID (or client ID)")
    private_key: SecretStr | None = Field(default=None, description="the App's PEM private key, inline")
    private_key_path: Path | None = Field(
        default=None, description="a file holding the App's PEM private key"
    )
    webhook_secret: SecretStr | None = Field(default=None, description="the App's webhook secret")
    github_api_url: str = Field(default=DEFAULT_API_URL, description="REST API root; a GHES URL works too")
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL, description="SQLAlchemy URL: sqlite or postgresql"
    )
    queue_url: str | None = Field(
        default=None, description="unset: a SQLite queue beside the database; redis://… to scale out"
    )
    queue_secret: SecretStr | None = Field(
        default=None, description="signs queued tasks; defaults to the webhook secret"
    )
    dry_run: bool = Field(default=False, description="print the plan instead of writing to GitHub")
    anthropic_api_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("MENDBOT_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY"),
        description="enables the Claude diagnoser (not used by the offline path)",
    )
    anthropic_base_url: str | None = Field(
        default=None, description="Messages API root, for proxies and tests"
    )
    anthropic_model: str | None = Field(
        default=None, description="the Claude model; unset: the newest Sonnet the installed SDK names"
    )
    anthropic_max_tokens: int = Field(default=2048, gt=0, le=64_000, description="cap on one answer")
    anthropic_timeout: float = Field(default=60.0, gt=0, description="seconds to wait for one API call")
    model_diagnoses_per_hour: int = Field(
        default=10, ge=0, description="model diagnoses per repository per clock hour; 0 switches the model off"
    )
    model_usd_per_day_per_repository: float = Field(default=2.0, ge=0, description="daily model budget")
    model_usd_per_day_per_installation: float = Field(default=20.0, ge=0, description="daily model budget")
    model_prices: dict[str, ModelPrices] = Field(
        default_factory=dict,
        description="JSON: USD per million tokens by model-name part, merged over the built-in table",
    )
    trigger_bots: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="comma-separated bot logins allowed to trigger a diagnosis by label"
    )
    log_max_bytes: int = Field(default=100 * MB, gt=0, description="cap on one downloaded job log")
    max_body_bytes: int = Field(default=25 * MB, gt=0, description="cap on one webhook body (GitHub's own)")
    workers: int = Field(default=2, ge=1, le=64, description="worker threads that process deliveries")
    bot_login: str = Field(default="mendbot[bot]", description="the App's bot account, for the loop guard")
    write_interval: float = Field(default=1.0, ge=0, description="seconds between content-creating writes")
    retry_delay: float = Field(default=30.0, ge=0, description="seconds before a failed delivery is retried")
    notify_schemes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=DEFAULT_NOTIFY_SCHEMES,
        description="comma-separated apprise schemes a repository's `notify` URLs may use; empty: none",
    )
    notify_allow_private: bool = Field(
        default=False,
        description="let notify URLs reach loopback, private and link-local addresses (tests, on-prem relays)",
    )
    notify_timeout: float = Field(default=10.0, gt=0, le=120, description="seconds to wait for one alert")

    @field_validator("github_api_url", "anthropic_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @field_validator("trigger_bots", "notify_schemes", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("notify_schemes")
    @classmethod
    def _lower_case(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(scheme.lower().removesuffix("://") for scheme in value)

    def anthropic_key(self) -> str | None:
        """The Anthropic key, or None when none is set (an empty variable counts as unset)."""
        if self.anthropic_api_key is None:
            return None
        return self.anthropic_api_key.get_secret_value().strip() or None

    def private_key_pem(self) -> str:
        """The App's private key, from MENDBOT_PRIVATE_KEY or the file MENDBOT_PRIVATE_KEY_PATH names."""
        if self.private_key is not None:
            # Some platforms cannot hold newlines in a variable; accept the escaped form too.
            return self.private_key.get_secret_value().replace("\\n", "\n")
        if self.private_key_path is None:
            raise SettingsError("set MENDBOT_PRIVATE_KEY or MENDBOT_PRIVATE_KEY_PATH")
        try:
            return self.private_key_path.read_text(encoding="utf-8")
        except OSError as exc:
            raise SettingsError(
                f"MENDBOT_PRIVATE_KEY_PATH: cannot read {self.private_key_path}: {exc.strerror}"
            ) from None

    def webhook_secret_bytes(self) -> bytes:
        if self.webhook_secret is None or not self.webhook_secret.get_secret_value():
            raise SettingsError("set MENDBOT_WEBHOOK_SECRET")
        return self.webhook_secret.get_secret_value().encode("utf-8")

    def require_app(self) -> None:
        """Fail with one clear line when the GitHub App cannot be run with these settings."""
        if not self.app_id:
            raise SettingsError("set MENDBOT_APP_ID")
        self.private_key_pem()
        self.webhook_secret_bytes()

    def task_secret(self) -> str | None:
        chosen = self.queue_secret or self.webhook_secret
        return chosen.get_secret_value() if chosen is not None else None


def load_settings() -> Settings:
    """Read the environment once; a bad value becomes a SettingsError naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"MENDBOT_{'_'.join(str(part) for part in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise SettingsError(problems) from None
