"""Ask Claude for a diagnosis through the official anthropic SDK, with one forced, action-free tool."""

from __future__ import annotations

import re
import typing
from collections.abc import Iterable
from importlib import resources
from typing import Any, cast

import anthropic
from anthropic.types import MessageParam, ModelParam, TextBlockParam, ToolChoiceToolParam, ToolParam

from bot.core.prompt import TOOL_NAME, BuiltPrompt, ModelAnswer, TokenUsage, answer_schema

API_URL = "https://api.anthropic.com"
# Used only when the installed SDK lists no Sonnet model at all.
FALLBACK_MODEL = "claude-sonnet-4-5"
DEFAULT_MAX_TOKENS = 2048
DEFAULT_TIMEOUT = 60.0
# One answer, always through report_diagnosis: the model has no way to reply in prose or act.
FORCED_TOOL: ToolChoiceToolParam = {"type": "tool", "name": TOOL_NAME, "disable_parallel_tool_use": True}
SONNET_RE = re.compile(r"claude-sonnet-(\d+)(?:-(\d{1,2}))?(?:-(\d{8}))?")


class ModelUnavailable(Exception):
    """The model could not be asked; the message is safe to log or show and never holds the key."""

    def __init__(self, message: str, status_code: int | None = None, error_type: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error_type = error_type


def newest_sonnet(names: Iterable[object]) -> str | None:
    """The highest-versioned claude-sonnet-* name; an undated alias wins over its dated snapshots."""
    versions = []
    for name in names:
        match = SONNET_RE.fullmatch(name) if isinstance(name, str) else None
        if match:
            major, minor, date = match.groups()
            versions.append(((int(major), int(minor or 0), not date), match.group()))
    return max(versions)[1] if versions else None


def default_model() -> str:
    """The newest Sonnet named in the installed SDK's model literals, so upgrading the SDK moves it."""
    names = [name for member in typing.get_args(ModelParam) for name in typing.get_args(member)]
    return newest_sonnet(names) or FALLBACK_MODEL


def load_prompt_text(name: str) -> str:
    """Read one of the versioned prompt files shipped in bot/prompts/."""
    return resources.files("bot").joinpath("prompts", name).read_text(encoding="utf-8")


def load_system_prompt() -> str:
    return load_prompt_text("system.md").strip()


def report_tool() -> ToolParam:
    return {
        "name": TOOL_NAME,
        "description": load_prompt_text("report_diagnosis.md").strip(),
        "input_schema": answer_schema(),
    }


class ClaudeDiagnoser:
    """Send a built prompt to the Messages API and return the model's raw report_diagnosis input."""

    def __init__(
        self,
        api_key: str,
        base_url: str | None = None,
        model: str | None = None,
        max_tokens: int = DEFAULT_MAX_TOKENS,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = 2,
    ) -> None:
        self.model = model or default_model()
        self.max_tokens = max_tokens
        self._api_key = api_key
        # The SDK retries 408, 409, 429 and 5xx itself, honouring retry-after; no second loop here.
        self._client = anthropic.Anthropic(
            api_key=api_key,
            base_url=base_url or API_URL,  # explicit, so ANTHROPIC_BASE_URL in the env cannot redirect it
            timeout=timeout,
            max_retries=max_retries,
        )
        self._tool = report_tool()
        self._retry_template = load_prompt_text("retry.md")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ClaudeDiagnoser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def diagnose(self, prompt: BuiltPrompt) -> ModelAnswer:
        """Ask once (plus the SDK's own retries); the tool input is returned unvalidated."""
        return self._ask(prompt, [{"role": "user", "content": prompt.user}])

    def retry_with_error(
        self, prompt: BuiltPrompt, previous: ModelAnswer, validation_error: str
    ) -> ModelAnswer:
        """Ask again in the same conversation, telling the model why its last tool input was rejected."""
        feedback = self._retry_template.format(errors=validation_error)
        tool_ids = [block["id"] for block in previous.assistant_content if block.get("type") == "tool_use"]
        reply: list[dict[str, Any]] = [
            {"type": "tool_result", "tool_use_id": tool_id, "is_error": True, "content": feedback}
            for tool_id in tool_ids
        ] or [{"type": "text", "text": feedback}]
        assistant = previous.assistant_content or [{"type": "text", "text": "…"}]
        messages = [
            {"role": "user", "content": prompt.user},
            {"role": "assistant", "content": assistant},
            {"role": "user", "content": reply},
        ]
        return self._ask(prompt, cast(list[MessageParam], messages))

    def count_tokens(self, prompt: BuiltPrompt) -> int:
        """What the prompt will cost in input tokens, asked of the API without generating anything."""
        try:
            counted = self._client.messages.count_tokens(
                model=self.model,
                system=self._system(prompt),
                tools=[self._tool],
                tool_choice=FORCED_TOOL,
                messages=[{"role": "user", "content": prompt.user}],
            )
        except anthropic.AnthropicError as exc:
            failure = self._unavailable(exc)
        else:
            return counted.input_tokens
        # Raised outside the except block so the SDK error, whose request carries the key, is not chained.
        raise failure

    def _system(self, prompt: BuiltPrompt) -> list[TextBlockParam]:
        # The system text is identical across calls; marking it lets the API cache tools + system.
        return [{"type": "text", "text": prompt.system, "cache_control": {"type": "ephemeral"}}]

    def _ask(self, prompt: BuiltPrompt, messages: list[MessageParam]) -> ModelAnswer:
        try:
            message = self._client.messages.create(
                model=self.model,
                max_tokens=self.max_tokens,
                system=self._system(prompt),
                tools=[self._tool],
                tool_choice=FORCED_TOOL,
                messages=messages,
            )
        except anthropic.AnthropicError as exc:
            failure = self._unavailable(exc)
        else:
            return _answer_from(message)
        raise failure

    def _unavailable(self, exc: anthropic.AnthropicError) -> ModelUnavailable:
        if isinstance(exc, anthropic.APIStatusError):
            kind = exc.type or "unknown_error"
            failure = ModelUnavailable(
                f"the model API answered {exc.status_code} {kind}", exc.status_code, exc.type
            )
        elif isinstance(exc, anthropic.APITimeoutError):
            failure = ModelUnavailable("the model API did not answer in time", None, "timeout")
        elif isinstance(exc, anthropic.APIConnectionError):
            failure = ModelUnavailable("the model API could not be reached", None, "connection")
        else:
            failure = ModelUnavailable(f"the model API call failed ({type(exc).__name__})")
        if self._api_key and self._api_key in str(failure):
            return ModelUnavailable("the model API call failed", failure.status_code, failure.error_type)
        return failure


def _answer_from(message: anthropic.types.Message) -> ModelAnswer:
    tool_input: dict[str, Any] = {}
    for block in message.content:
        if block.type == "tool_use" and block.name == TOOL_NAME and isinstance(block.input, dict):
            tool_input = block.input
            break
    usage = message.usage
    return ModelAnswer(
        tool_input=tool_input,
        model=message.model,
        usage=TokenUsage(
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            cache_read_tokens=usage.cache_read_input_tokens or 0,
            cache_write_tokens=usage.cache_creation_input_tokens or 0,
        ),
        stop_reason=message.stop_reason or "",
        assistant_content=[_as_param(block) for block in message.content],
    )


def _as_param(block: Any) -> dict[str, Any]:
    """A response block in the shape a request accepts, dropping response-only fields."""
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": block.input}
    if block.type == "text":
        return {"type": "text", "text": block.text}
    return {"type": "text", "text": f"[{block.type} block omitted]"}
