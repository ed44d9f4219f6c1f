"""Settings come from MENDBOT_* variables, are built on request, and never show their secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from bot.settings import DEFAULT_API_URL, DEFAULT_NOTIFY_SCHEMES, Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("MENDBOT_") or name == "ANTHROPIC_API_KEY":
            monkeypatch.delenv(name)


def test_defaults_are_the_single_machine_setup() -> None:
    settings = load_settings()
    assert settings.github_api_url == DEFAULT_API_URL
    assert settings.database_url.startswith("sqlite:///")
    assert settings.queue_url is None
    assert settings.dry_run is False
    assert settings.log_max_bytes == 100 * 1024 * 1024
    assert settings.max_body_bytes == 25 * 1024 * 1024


def test_every_documented_variable_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key_file = tmp_path / "app.pem"
    key_file.write_text("-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n")
    env = {
        "MENDBOT_APP_ID": "123",
        "MENDBOT_PRIVATE_KEY_PATH": str(key_file),
        "MENDBOT_WEBHOOK_SECRET": "s3cret",
        "MENDBOT_GITHUB_API_URL": "https://ghe.example.com/api/v3/",
        "MENDBOT_DATABASE_URL": "postgresql://db/mendbot",
        "MENDBOT_QUEUE_URL": "redis://cache:6379/0",
        "MENDBOT_DRY_RUN": "true",
        "ANTHROPIC_API_KEY": "sk-ant-test",
        "MENDBOT_ANTHROPIC_BASE_URL": "http://127.0.0.1:9999",
        "MENDBOT_LOG_MAX_BYTES": "1000",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.app_id == "123"
    assert settings.private_key_pem().startswith("-----BEGIN PRIVATE KEY-----")
    assert settings.webhook_secret_bytes() == b"s3cret"
    assert settings.github_api_url == "https://ghe.example.com/api/v3"
    assert settings.database_url == "postgresql://db/mendbot"
    assert settings.queue_url == "redis://cache:6379/0"
    assert settings.dry_run is True
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == "sk-ant-test"
    assert settings.anthropic_base_url == "http://127.0.0.1:9999"
    assert settings.log_max_bytes == 1000
    settings.require_app()


def test_the_mendbot_prefixed_anthropic_key_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENDBOT_ANTHROPIC_API_KEY", "sk-ant-mendbot")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-plain")
    key = load_settings().anthropic_api_key
    assert key is not None and key.get_secret_value() == "sk-ant-mendbot"


def test_an_inline_key_with_escaped_newlines_is_accepted() -> None:
    settings = Settings(private_key=SecretStr("-----BEGIN X-----\\nabc\\n-----END X-----"))
    assert settings.private_key_pem() == "-----BEGIN X-----\nabc\n-----END X-----"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "MENDBOT_APP_ID"),
        ({"app_id": "1"}, "MENDBOT_PRIVATE_KEY"),
        ({"app_id": "1", "private_key": "pem"}, "MENDBOT_WEBHOOK_SECRET"),
        ({"app_id": "1", "private_key_path": "/nonexistent/key.pem", "webhook_secret": "s"}, "cannot read"),
    ],
)
def test_missing_settings_name_the_variable(values: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings(**values).require_app()  # type: ignore[arg-type]


def test_a_bad_value_names_its_variable_not_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENDBOT_GITHUB_API_URL", "ftp://secret-host")
    monkeypatch.setenv("MENDBOT_LOG_MAX_BYTES", "-5")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert "MENDBOT_GITHUB_API_URL" in str(caught.value) and "MENDBOT_LOG_MAX_BYTES" in str(caught.value)
    assert "secret-host" not in str(caught.value)


def test_secrets_do_not_show_in_repr() -> None:
    settings = Settings(
        app_id="1",
        private_key=SecretStr("PEMDATA"),
        webhook_secret=SecretStr("hooksecret"),
        anthropic_api_key=SecretStr("sk-ant-x"),
    )
    shown = repr(settings) + str(settings.model_dump())
    for secret in ("PEMDATA", "hooksecret", "sk-ant-x"):
        assert secret not in shown


def test_settings_are_not_read_at_import() -> None:
    import importlib

    import bot.web
    import bot.wiring

    # Importing the entry modules must not need any environment.
    importlib.reload(bot.wiring)
    importlib.reload(bot.web)


def test_alerts_default_to_chat_and_paging_schemes_on_public_addresses() -> None:
    settings = load_settings()
    assert settings.notify_schemes == DEFAULT_NOTIFY_SCHEMES
    assert "json" not in settings.notify_schemes and "mailto" not in settings.notify_schemes
    assert settings.notify_allow_private is False
    assert settings.notify_timeout == 10.0


def test_the_operator_chooses_the_notify_schemes_and_private_targets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MENDBOT_NOTIFY_SCHEMES", "slack, JSON, jsons://")
    monkeypatch.setenv("MENDBOT_NOTIFY_ALLOW_PRIVATE", "true")
    monkeypatch.setenv("MENDBOT_NOTIFY_TIMEOUT", "2.5")
    settings = load_settings()
    assert settings.notify_schemes == ("slack", "json", "jsons")
    assert settings.notify_allow_private is True and settings.notify_timeout == 2.5
    monkeypatch.setenv("MENDBOT_NOTIFY_SCHEMES", "")
    assert load_settings().notify_schemes == ()
