"""The real-capture corpus of issue 16: every file is listed, well formed, and read right by its dialect.

tests/fixtures/claude-code/manifest.json lists each capture (where it came from is in SOURCES.md
beside it) with what a correct parser concludes from it. Each capture is fed to its dialect whole and
in 7-byte chunks (splitting UTF-8 sequences, escape sequences and JSON lines), and what the dialect
concludes must match the manifest: `mismatches()` names every difference, `test_corpus_conclusions`
asserts there is none. Run this file as a script to print the list.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from conftest import FIXTURES

from shoal.protocols.dialects import make_dialect
from shoal.protocols.dialects.ansi import strip_ansi
from shoal.protocols.dialects.base import (
    NeedsInput,
    ProtocolError,
    RateLimited,
    Ready,
    Signal,
    TaskDone,
    TaskFailed,
)
from shoal.protocols.dialects.patterns import PatternScanner
from shoal.protocols.tasks import Assignment

MANIFEST = FIXTURES / "manifest.json"
CORPUS = FIXTURES / "corpus"
KINDS = {"headless-result", "headless-stream", "headless-text", "tui-screen"}
FORMATS = {"json", "jsonl", "text", "ansi"}  # ansi: raw PTY output, escape sequences and all
EXPECTS = {"done", "failed", "rate_limited", "retrying", "quota", "needs_input", "busy", "ready", "info"}
PROVENANCE = {"real", "partly-edited", "quoted"}
NOW = 1000.0
WALL = 1_780_000_000.0  # a fixed wall clock, so reset times parse the same on every run
TASK = Assignment(task_id="t1", attempt=1, prompt="Fix the failing test")
CHUNK = 7  # small enough to split UTF-8 sequences and JSON lines


def load_manifest() -> list[dict[str, Any]]:
    data = json.loads(MANIFEST.read_text(encoding="utf-8"))
    entries = data["files"]
    assert isinstance(entries, list)
    return entries


ENTRIES = load_manifest()


def entry_id(entry: dict[str, Any]) -> str:
    return str(entry["file"])


# -- the corpus itself ---------------------------------------------------------------------------------


def test_manifest_lists_every_corpus_file_once() -> None:
    listed = [e["file"] for e in ENTRIES]
    assert len(listed) == len(set(listed)), "a file is listed twice"
    on_disk = sorted(f"corpus/{p.name}" for p in CORPUS.iterdir() if p.is_file())
    assert sorted(f for f in listed if f.startswith("corpus/")) == on_disk
    assert len(on_disk) >= 30


def test_sources_names_every_corpus_file() -> None:
    sources = (FIXTURES / "SOURCES.md").read_text(encoding="utf-8")
    missing = [p.name for p in CORPUS.iterdir() if p.name not in sources]
    assert not missing, f"no provenance in SOURCES.md for {missing}"


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_entry_is_well_formed(entry: dict[str, Any]) -> None:
    path = FIXTURES / entry["file"]
    assert path.is_file(), f"{entry['file']} is listed but missing"
    assert entry["kind"] in KINDS
    assert entry["format"] in FORMATS
    assert entry["expect"] in EXPECTS
    assert entry["provenance"] in PROVENANCE
    assert entry["dialect"] in {"stream-json", "prompt", "oneshot"}
    text = path.read_bytes().decode("utf-8")  # every capture is UTF-8
    if entry["format"] in ("text", "ansi"):
        assert "non_json_lines" not in entry
        return
    non_json = set(entry.get("non_json_lines", []))
    lines = text.split("\n")
    assert lines[-1] == "", "a JSON capture ends with a newline"
    for number, line in enumerate(lines[:-1], start=1):
        if number in non_json:
            with pytest.raises(ValueError):
                json.loads(line)  # marked non-JSON, and really is not
            continue
        assert isinstance(json.loads(line), dict), f"line {number} is not a JSON object"
    if entry["format"] == "json":
        assert len(lines) - 1 - len(non_json) == 1, "a .json capture holds one object"


# -- feeding the dialects ------------------------------------------------------------------------------


def _feed(dialect: Any, data: bytes, chunk: int | None) -> list[Signal]:
    out: list[Signal] = []
    if chunk is None:
        out += dialect.feed(data, NOW)
    else:
        for start in range(0, len(data), chunk):
            out += dialect.feed(data[start : start + chunk], NOW)
    return out


def run_headless(entry: dict[str, Any], chunk: int | None = None) -> list[Signal]:
    """Start a task, feed the capture, end the process: every signal the dialect gives."""
    dialect = make_dialect(entry["dialect"], {}, wall_clock=lambda: WALL)
    out: list[Signal] = list(dialect.tick(NOW))
    dialect.start_task(TASK, NOW)
    out += _feed(dialect, (FIXTURES / entry["file"]).read_bytes(), chunk)
    out += dialect.on_exit(entry.get("exit_code", 0), None)
    return out


def run_screen(entry: dict[str, Any], *, task: bool, chunk: int | None = None) -> list[Signal]:
    """Feed a TUI screen to the prompt dialect, with or without a task written before it."""
    dialect = make_dialect("prompt", {}, wall_clock=lambda: WALL)
    if task:
        dialect.start_task(TASK, NOW)
    out = _feed(dialect, (FIXTURES / entry["file"]).read_bytes(), chunk)
    out += dialect.tick(NOW)
    return out


def scan_patterns(entry: dict[str, Any]) -> list[Signal]:
    """The shared pattern scanner over the whole text (what every text dialect runs)."""
    text = strip_ansi((FIXTURES / entry["file"]).read_bytes())
    scanner = PatternScanner()
    return [hit.signal for hit in scanner.scan(text if text.endswith("\n") else text + "\n", "", WALL)]


@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_dialect_reads_it_without_raising(entry: dict[str, Any]) -> None:
    if entry["kind"] == "tui-screen":
        for task in (False, True):
            whole = run_screen(entry, task=task)
            run_screen(entry, task=task, chunk=CHUNK)
            assert all(isinstance(s, Signal) for s in whole)
        scan_patterns(entry)
    else:
        whole = run_headless(entry)
        run_headless(entry, chunk=CHUNK)
        assert all(isinstance(s, Signal) for s in whole)


# -- what the dialects conclude, against the manifest ---------------------------------------------


def _terminal(signals: Sequence[Signal]) -> Signal | None:
    for s in signals:
        if isinstance(s, TaskDone | TaskFailed | RateLimited):
            return s
    return None


def _outcome(s: Signal | None) -> str | None:
    return {TaskDone: "done", TaskFailed: "failed", RateLimited: "rate_limited"}.get(type(s)) if s else None


def _text_of(s: Signal | None) -> str:
    if isinstance(s, TaskFailed):
        return s.reason
    if isinstance(s, RateLimited):
        return s.message
    if isinstance(s, TaskDone):
        return s.result
    return ""


def conclude(entry: dict[str, Any], chunk: int | None = None) -> dict[str, Any]:
    """What the dialects make of one capture, fed whole or in `chunk`-byte pieces."""
    if entry["kind"] == "tui-screen":
        idle = run_screen(entry, task=False, chunk=chunk)
        busy = run_screen(entry, task=True, chunk=chunk)
        end = _terminal(busy)
        return {
            "outcome": _outcome(end),
            "text": _text_of(end),
            "ready": Ready() in idle,
            "usage": dict(getattr(end, "usage", None) or {}),
            "asks": [s for s in idle if isinstance(s, NeedsInput)],
            "limits": [s for s in idle + busy if isinstance(s, RateLimited)],
            "protocol_errors": 0,
            "other": _by_name(idle + busy),
        }
    signals = run_headless(entry, chunk)
    end = _terminal(signals)
    return {
        "outcome": _outcome(end),
        "text": _text_of(end),
        "usage": dict(getattr(end, "usage", None) or {}),
        "limits": [s for s in signals if isinstance(s, RateLimited)],
        "protocol_errors": sum(isinstance(s, ProtocolError) for s in signals),
        "asks": [],
        "ready": None,
        "other": _by_name(signals),
    }


def _by_name(signals: Sequence[Signal]) -> dict[str, list[Any]]:
    """Signals grouped by class name: the issue-16 kinds (ApiRetry, QuotaReport, ExtraUsage, Notice)
    are looked up by name so this report works on a tree with or without them."""
    out: dict[str, list[Any]] = {}
    for s in signals:
        out.setdefault(type(s).__name__, []).append(s)
    return out


def mismatches(entry: dict[str, Any], chunk: int | None = None) -> list[str]:
    """How the dialects' conclusion differs from the manifest's, one sentence per difference."""
    got = conclude(entry, chunk)
    want = entry["expect"]
    out: list[str] = []
    outcome, text = got["outcome"], got["text"]
    other = got["other"]
    if got["protocol_errors"]:
        out.append(f"{got['protocol_errors']} ProtocolError(s) for non-JSON stdout lines")
    if entry.get("non_json_lines") and len(other.get("Notice", [])) != len(entry["non_json_lines"]):
        out.append(
            f"{len(other.get('Notice', []))} Notice(s) for {len(entry['non_json_lines'])} non-JSON line(s)"
        )
    # headless captures decide done/failed/rate_limited; a TUI screen decides failed (limits are
    # checked below), unless it is a snippet cut before its prompt frame
    judged = want in ("done", "failed", "rate_limited")
    if judged and not entry.get("decided_at_prompt"):
        if outcome != want:
            out.append(f"concluded {outcome or 'nothing'}, expected {want}")
        elif entry.get("reason_contains") and entry["reason_contains"] not in text:
            out.append(f"reason {text[:80]!r} lacks {entry['reason_contains']!r}")
    if want == "failed" and outcome == "failed" and entry.get("counts_attempt") is False:
        out.append("reported as TaskFailed: burns an attempt for the API's failure")
    cost = entry.get("usage", {}).get("cost_usd")
    if want == "failed" and cost and got["usage"].get("cost_usd") != cost:
        out.append(f"failed attempt's cost {got['usage'].get('cost_usd')} != {cost} (usage lost)")
    if entry.get("rate_limited") and not got["limits"]:
        out.append("no RateLimited: the model is not parked")
    if entry.get("rate_limited") is False and got["limits"]:
        out.append(f"RateLimited where none is: {got['limits'][0].message[:80]!r}")
    if entry.get("reset_at") and got["limits"] and got["limits"][0].reset_at != entry["reset_at"]:
        out.append(f"reset_at {got['limits'][0].reset_at} != {entry['reset_at']}")
    if entry.get("reset_tz") and got["limits"]:
        reset = got["limits"][0].reset_at
        if reset is None:
            out.append(f"reset time ({entry.get('reset_text')} {entry['reset_tz']}) not read")
        elif (wall := _wall_time(reset, entry["reset_tz"])) != _clock(entry["reset_text"]):
            out.append(f"reset at {wall} in {entry['reset_tz']}, expected {entry['reset_text']}")
    if want == "retrying" or entry.get("retry"):
        if want == "retrying" and outcome is not None:
            out.append(f"ended the task as {outcome} while the CLI still retries")
        retries = other.get("ApiRetry", [])
        if not retries:
            out.append("no ApiRetry signal (attempt/max/next delay)")
        else:
            last, retry = retries[-1], entry["retry"]
            seen = (getattr(last, "attempt", None), getattr(last, "max_retries", None))
            if seen != (retry["attempt"], retry["max_retries"]):
                out.append(f"ApiRetry attempt/max {seen} != {(retry['attempt'], retry['max_retries'])}")
            if "error" in retry and last.error != retry["error"]:
                out.append(f"ApiRetry error {last.error!r} != {retry['error']!r}")
            if "error_status" in retry and last.status != retry["error_status"]:
                out.append(f"ApiRetry status {last.status} != {retry['error_status']}")
            if "retry_delay_ms" in retry and last.delay_s != retry["retry_delay_ms"] / 1000:
                out.append(f"ApiRetry delay {last.delay_s} s != {retry['retry_delay_ms']} ms")
    if want == "quota":
        reports = other.get("QuotaReport", [])
        quota = entry["quota"]
        if not reports:
            out.append(f"quota {quota['status']} not kept as a gauge (no QuotaReport)")
        else:
            r = reports[-1]
            seen_q = (getattr(r, "status", None), getattr(r, "window", None), getattr(r, "utilization", None))
            if seen_q != (quota["status"], quota["rateLimitType"], quota.get("utilization")):
                out.append(f"QuotaReport {seen_q} != manifest")
    if want == "needs_input":
        asked = [a.prompt for a in got["asks"]]
        if entry["kind"] == "tui-screen" and not any(entry["question"] in q for q in asked):
            out.append(f"no NeedsInput for {entry['question']!r} (asked: {asked})")
        if got["ready"]:
            out.append("reported Ready while a menu waits for an answer")
        if entry.get("options"):
            parsed = [list(getattr(a, "options", None) or []) for a in got["asks"]]
            if not any(all(any(o in p for p in opts) for o in entry["options"]) for opts in parsed):
                out.append(f"menu options not parsed (got {parsed})")
    if want == "busy" and got["ready"]:
        out.append("reported Ready while busy")
    if want == "ready" and got["ready"] is False:
        out.append("not reported Ready")
    if entry.get("extra_usage") and not other.get("ExtraUsage"):
        out.append("'extra usage' not reported (no ExtraUsage)")
    return out


def _clock(text: str) -> tuple[int, int]:
    """(hour, minute) of a wall-clock time as Claude Code prints it ("7:50pm", "Aug 3 at 12am")."""
    m = re.search(r"(\d{1,2})(?::(\d{2}))?\s*([ap])m", text)
    assert m, f"no time in reset_text {text!r}"
    return int(m.group(1)) % 12 + (12 if m.group(3) == "p" else 0), int(m.group(2) or 0)


def _wall_time(epoch: float, zone: str) -> tuple[int, int]:
    when = datetime.fromtimestamp(epoch, ZoneInfo(zone))
    return when.hour, when.minute


def report() -> list[str]:
    lines = []
    for entry in ENTRIES:
        for chunk in (None, CHUNK):
            for problem in mismatches(entry, chunk):
                how = "whole" if chunk is None else f"{chunk}-byte chunks"
                lines.append(f"{entry['file']} ({how}): {problem}")
    return lines


@pytest.mark.parametrize("chunk", [None, CHUNK], ids=["whole", f"chunks-of-{CHUNK}"])
@pytest.mark.parametrize("entry", ENTRIES, ids=entry_id)
def test_corpus_conclusions(entry: dict[str, Any], chunk: int | None) -> None:
    """What the dialect concludes from a capture is what the manifest says a correct parser does."""
    assert mismatches(entry, chunk) == []


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    problems = report()
    for line in problems:
        print(line)
    print(f"{len(problems)} mismatch(es)")
