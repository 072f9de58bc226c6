"""API failures and usage-limit resets as Claude Code reports them: the back-off, the reset time.

One rule for headless results (stream-json, marker) and the lines a TUI prints (patterns.py's
scanner), apart from the scanner because it is plain text to values with no state. `parse_reset` turns a
usage-limit message into an epoch; the wall clock is passed in.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo

from .base import RateLimited

# ----------------------------------------------------------------------------------------------------
# reset times

_EPOCH = re.compile(r"limit reached\|(\d{9,13})", re.IGNORECASE)
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_AT_TIME = re.compile(
    r"\b(?:resets?|reset\s+at|try\s+again(?:\s+at)?|available\s+again(?:\s+at)?)\b[^\d\n]{0,12}?"
    r"(?:(?P<mon>jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)[a-z]*\.?\s+(?P<day>\d{1,2})"
    r"(?:st|nd|rd|th)?,?(?:\s+(?P<year>\d{4}),?)?\s*(?:at\s+)?)?"
    r"(?P<h>\d{1,2})(?::(?P<m>\d{2}))?\s*(?P<ampm>[ap]\.?m\.?)?"
    r"(?:\s*\((?P<tz>[A-Za-z][A-Za-z0-9_+\-/]*)\))?",
    re.IGNORECASE,
)
_IN_DURATION = re.compile(
    r"\b(?:resets?|try\s+again|available\s+again)\s+in\s+"
    r"(?:(?P<h>\d+)\s*(?:h|hrs?|hours?)\b)?\s*(?:(?P<m>\d+)\s*(?:m|mins?|minutes?)\b)?",
    re.IGNORECASE,
)


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    if name.upper() in ("UTC", "GMT", "Z"):
        return UTC
    from zoneinfo import ZoneInfo  # imported only when a message names a zone

    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return None


def parse_reset(text: str, now: float) -> float | None:
    """The reset time (epoch seconds) a usage-limit message announces, relative to `now` (epoch).

    Understands `...limit reached|<epoch>` (seconds or milliseconds), `resets 3pm`, `reset at 5:30pm
    (Europe/Paris)`, `resets Feb 3 at 10am`, 24-hour `17:00` and `try again in 3h 41m`. A time of day
    without a zone is local time; a time already past today means tomorrow. None when none is given.
    """
    m = _EPOCH.search(text)
    if m:
        value = int(m.group(1))
        return value / 1000.0 if value >= 10**12 else float(value)
    d = _IN_DURATION.search(text)
    if d and (d.group("h") or d.group("m")):
        return now + int(d.group("h") or 0) * 3600 + int(d.group("m") or 0) * 60
    for t in _AT_TIME.finditer(text):
        ampm, minute = t.group("ampm"), t.group("m")
        if not ampm and minute is None:
            continue  # a bare number ("resets 3") is not a time
        hour = int(t.group("h"))
        if ampm:
            if not 1 <= hour <= 12:
                continue
            hour = hour % 12 + (12 if ampm[0].lower() == "p" else 0)
        if hour > 23 or (minute is not None and int(minute) > 59):
            continue
        zone = _zone(t.group("tz"))
        now_dt = datetime.fromtimestamp(now, zone) if zone else datetime.fromtimestamp(now).astimezone()
        tz = now_dt.tzinfo
        mins = int(minute or 0)
        if t.group("mon"):
            month = _MONTHS.index(t.group("mon").lower()[:3]) + 1
            year = int(t.group("year") or now_dt.year)
            try:
                when = datetime(year, month, int(t.group("day")), hour, mins, tzinfo=tz)
            except ValueError:
                continue
            if not t.group("year") and when < now_dt - timedelta(days=1):
                when = when.replace(year=year + 1)
        else:
            when = now_dt.replace(hour=hour, minute=mins, second=0, microsecond=0)
            if when <= now_dt:
                when += timedelta(days=1)
        return when.timestamp()
    return None


# ----------------------------------------------------------------------------------------------------
# API failures: one rule for headless results (stream-json) and the lines a TUI prints

BACKOFF_KINDS = ("rate_limit", "overloaded", "server_error", "auth", "network")
_ERROR_CATEGORIES = {  # Claude Code's own names (api_retry `error`, an error message's `error`)
    "rate_limit": "rate_limit",
    "overloaded": "overloaded",
    "server_error": "server_error",
    "authentication_failed": "auth",
    "oauth_org_not_allowed": "auth",
    "account_on_hold": "auth",
    "verification_required": "auth",
    "billing_error": "auth",
    "cloud_credential_error": "auth",
    "unknown": "server_error",  # the agent gave up on it after its own retries
    "network": "network",
    "connection_error": "network",
    "timeout": "network",
}
# "API Error: 529 ...", "API Error (529 {...", "Request rejected (429)", 2.0.x's bare `529 {"type":"error"`,
# 2.1.x's retry spinner `✻ 529 Overloaded · retrying in 3s`
_STATUS_IN_TEXT = re.compile(
    r"API Error:?\s*\(?(\d{3})\b|Request rejected \((\d{3})\)"
    r"|^[^\S\n]*(?:[⎿✻✽✶✳✢·*⋆✦][^\S\n]+)?(\d{3})(?= \{\"type\":\"error\"| [A-Za-z])",
    re.MULTILINE,
)
_AUTH_TEXT = re.compile(
    r"Invalid API key|Please run /login|OAuth token (?:has expired|revoked)|authentication_error|"
    r"permission_error|disabled Claude subscription access|Credit balance is too low",
    re.IGNORECASE,
)
_OVERLOADED_TEXT = re.compile(r"\bOverloaded\b|overloaded_error", re.IGNORECASE)
_NETWORK_TEXT = re.compile(
    r"Connection (?:refused|error|reset)|ECONNREFUSED|ECONNRESET|ETIMEDOUT|ENOTFOUND|fetch failed|"
    r"socket hang up|Request timed out|Unable to connect",
    re.IGNORECASE,
)
_RATE_TEXT = re.compile(r"rate_limit_error|\brate limit\b|\blimit reached\b", re.IGNORECASE)
# A TUI line that ends a turn with an API failure: at the start of a line (plain, or after Claude
# Code's `⎿` / `●` / `⏺`). Indented text is the model's reply and does not count.
API_ERROR_LINE = re.compile(
    r"^(?:[^\S\n]*[⎿●⏺][^\S\n]+)?(?P<reason>(?:API Error\b|Invalid API key\b"
    r"|OAuth token (?:has expired|revoked)|Your organization has disabled Claude)[^\n]*?)[^\S\n]*$",
    re.MULTILINE,
)


def api_error_status(text: str) -> int | None:
    """The HTTP status an API error message names, else None."""
    m = _STATUS_IN_TEXT.search(text)
    if m is None:
        return None
    return int(m.group(1) or m.group(2) or m.group(3))


def api_error_kind(status: int | None, error: str | None, text: str) -> str | None:
    """Which back-off an API failure calls for (one of BACKOFF_KINDS), or None when it is the
    request's own fault (400, 404, 413: the task failed). `error` is Claude Code's category when it
    gives one; `text` the message, read when neither says."""
    if status is not None:
        if status == 429:
            return "rate_limit"
        if status in (401, 403):
            return "auth"
        if status == 529:
            return "overloaded"
        if status >= 500 or status == 408:
            return "server_error" if status != 408 else "network"
        return None
    if error and error in _ERROR_CATEGORIES:
        return _ERROR_CATEGORIES[error]
    if _AUTH_TEXT.search(text):
        return "auth"
    if _OVERLOADED_TEXT.search(text):
        return "overloaded"
    if _RATE_TEXT.search(text):
        return "rate_limit"
    if _NETWORK_TEXT.search(text):
        return "network"
    return None


def api_backoff(
    kind: str, status: int | None, detail: str, now: float, *, overloaded_park_s: float, auth_park_s: float
) -> RateLimited:
    """The RateLimited an API failure of `kind` gives: the model waits, the task goes back without an
    attempt counted. A rate limit waits for the reset its text names (else the queue's default park);
    an auth failure `auth_park_s` (a human must act); the rest `overloaded_park_s` (the agent already
    retried them)."""
    shown = f" ({status})" if status is not None else ""
    if kind == "rate_limit":
        return RateLimited(reset_at=parse_reset(detail, now), message=f"API rate limit{shown}: {detail}")
    if kind == "auth":
        return RateLimited(reset_at=now + auth_park_s, message=f"API authentication failed{shown}: {detail}")
    if kind == "network":
        return RateLimited(reset_at=now + overloaded_park_s, message=f"API unreachable{shown}: {detail}")
    label = "overloaded" if kind == "overloaded" else "server error"
    return RateLimited(reset_at=now + overloaded_park_s, message=f"API {label}{shown}: {detail}")


def retry_category(status: int | None, text: str) -> str:
    """api_retry's `error` for a TUI retry line (rate_limit, overloaded, server_error, ...)."""
    kind = api_error_kind(status, None, text)
    if kind == "auth":
        return "authentication_failed"
    return kind or "unknown"
