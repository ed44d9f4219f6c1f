"""Alerts to a repository's apprise URLs: the only module that imports apprise, and the guard on where they go."""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import apprise

from bot.ports import TargetCheck, TargetResult

log = logging.getLogger(__name__)

#: Plugins of these schemes post to the service's own host whatever the URL says. The URL's "host" is an
#: account id or a token (Telegram puts the bot token there), so it is neither resolved nor shown.
FIXED_HOST_SCHEMES = frozenset({"slack", "discord", "pagerduty", "opsgenie", "tgram", "pover"})
#: Query parameters that name a second host to connect to (the mail plugins' SMTP server).
HOST_PARAMETERS = ("smtp",)
MAX_URL_CHARS = 2048

Resolver = Callable[[str], Sequence[str]]


def resolve(host: str) -> list[str]:
    """Every address the host name resolves to."""
    return sorted({str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})


def target_label(url: str) -> str:
    """`scheme://host`, the most of a notify URL that may be logged: the rest often holds a token."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if not scheme:
        return "(not a URL)"
    try:
        host = parts.hostname or ""
    except ValueError:
        host = ""
    if scheme in FIXED_HOST_SCHEMES or not host:
        return f"{scheme}://…"
    return f"{scheme}://{host}"


def _public(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # is_global is False for loopback, private, link-local (cloud metadata at 169.254.169.254), shared
    # carrier-grade NAT (another cloud's metadata at 100.100.100.200), reserved and unspecified addresses.
    return ip.is_global and not ip.is_multicast


def _loads_content(plugin: object) -> bool:
    """Whether the URL made the plugin load a file or a URL of its own (`?template=…` on Slack, Discord,
    Telegram and Power Automate): that would read the server's files or fetch an internal address."""
    return any(isinstance(value, apprise.AppriseAttachment) and len(value) for value in vars(plugin).values())


class AppriseNotifier:
    """Implements the Notifier port with apprise, one plugin per URL so each target has its own result."""

    def __init__(
        self,
        allowed_schemes: Sequence[str],
        *,
        allow_private: bool = False,
        timeout: float = 10.0,
        resolver: Resolver = resolve,
    ) -> None:
        self.allowed_schemes = frozenset(scheme.lower() for scheme in allowed_schemes)
        self.allow_private = allow_private
        self.timeout = timeout
        self.resolver = resolver
        # No persistent storage on disk. Apprise's secure logging masks passwords but its debug lines show
        # whole URLs and payload paths, where webhook tokens live: keep its logger to warnings and above.
        self.asset = apprise.AppriseAsset(storage_mode="memory", secure_logging=True)
        apprise_log = logging.getLogger("apprise")
        apprise_log.setLevel(max(apprise_log.getEffectiveLevel(), logging.WARNING))

    def check(self, urls: Sequence[str]) -> list[TargetCheck]:
        checks = [TargetCheck(target_label(url), self._prepare(url)[1]) for url in urls]
        for check in checks:
            if check.refusal:
                log.warning("notify target %s refused: %s", check.target, check.refusal)
        return checks

    def send(self, urls: Sequence[str], title: str, body: str) -> list[TargetResult]:
        results = []
        for url in urls:
            label = target_label(url)
            plugin, reason = self._prepare(url)
            if plugin is None:
                log.warning("notify target %s refused: %s", label, reason)
                results.append(TargetResult(label, False, reason))
                continue
            try:
                sent = bool(plugin.notify(body=body, title=title, body_format=apprise.NotifyFormat.TEXT))
                reason = "" if sent else "the service did not accept the alert"
            except Exception as exc:  # a failing plugin must not stop the other targets
                sent, reason = False, f"{type(exc).__name__} while sending"
            if sent:
                log.info("alert sent to %s", label)
            else:
                log.warning("alert to %s failed: %s", label, reason)
            results.append(TargetResult(label, sent, reason))
        return results

    def _prepare(self, url: str) -> tuple[apprise.NotifyBase | None, str]:
        """The configured plugin for the URL, or None and why it may not be used."""
        url = url.strip()
        if len(url) > MAX_URL_CHARS:
            return None, f"the URL is over {MAX_URL_CHARS} characters"
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if not scheme:
            return None, "it is not a URL with a scheme"
        if scheme not in self.allowed_schemes:
            allowed = ", ".join(sorted(self.allowed_schemes)) or "none"
            return None, f"the scheme {scheme!r} is not allowed by this Mendbot (allowed: {allowed})"
        problem = self._address_problem(scheme, url)
        if problem:
            return None, problem
        plugin = apprise.Apprise.instantiate(url, asset=self.asset)
        if plugin is None:
            return None, "apprise cannot use this URL"
        if _loads_content(plugin):
            return None, "it asks Mendbot to load a file or URL (such as ?template=)"
        # Whatever the URL's own cto=, rto=, verify= or redirect= say: a redirect could lead to an address
        # the check above never saw.
        plugin.socket_connect_timeout = self.timeout
        plugin.socket_read_timeout = self.timeout
        plugin.verify_certificate = True
        plugin.redirects = False
        return plugin, ""

    def _address_problem(self, scheme: str, url: str) -> str:
        """Why the hosts the URL names may not be reached from the server, or "" when they may."""
        if scheme in FIXED_HOST_SCHEMES or self.allow_private:
            return ""
        parts = urlsplit(url)
        try:
            hosts = [parts.hostname or ""]
        except ValueError:
            return "its host cannot be read"
        query = parse_qs(parts.query)
        hosts += [value for name in HOST_PARAMETERS for value in query.get(name, [])]
        for host in hosts:
            if not host:
                return "it names no host"
            try:
                addresses = self.resolver(host)
            except (OSError, UnicodeError):
                return f"its host {host} does not resolve"
            for address in addresses:
                if not _public(address):
                    return (
                        f"its host {host} resolves to {address}, a loopback, private, link-local or "
                        "otherwise non-public address"
                    )
            if not addresses:
                return f"its host {host} does not resolve"
        return ""
