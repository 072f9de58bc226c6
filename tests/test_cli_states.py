"""What `shoal status`, `shoal workers`, `shoal models`, `shoal tasks` and `shoal task` say about
parked or failing models, workers waiting on a question, and attempts that did not count."""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console
from test_cli import shoal, shoal_serve

from shoal.actors import cli


def render(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=200, highlight=False, soft_wrap=False).print(renderable)
    return out.getvalue()


def attempt(n: int, outcome: str | None) -> dict[str, Any]:
    return {"n": n, "worker": "w1", "model": "sonnet", "started": 1.0, "ended": 2.0, "outcome": outcome}


def test_rate_limited_and_interrupted_attempts_do_not_count() -> None:
    task = {"max_attempts": 3, "attempts": [attempt(1, "rate_limited"), attempt(2, "failed")]}
    task["attempts"] += [attempt(3, "rate_limited"), attempt(4, None)]
    assert cli.attempts_text(task) == "2/3 (+2 rate-limited)"  # it read 4/3 before
    task["attempts"].append(attempt(5, "interrupted"))
    assert cli.attempts_text(task) == "2/3 (+2 rate-limited, +1 interrupted)"
    # a manual retry starts the count again; the attempts before it are shown apart
    retried = {"max_attempts": 3, "retry_base": 3, "attempts": [attempt(n, "failed") for n in (1, 2, 3)]}
    retried["attempts"].append(attempt(4, None))
    assert cli.attempts_text(retried) == "1/3 (+3 before retry)"
    assert cli.attempts_text({"max_attempts": 3, "attempts": []}) == "0/3"


def test_tables_show_model_states_needs_input_and_counted_attempts() -> None:
    now = time.time()
    models = [
        {"name": "haiku", "state": "parked", "until": now + 59, "reason": "usage limit reached|123"},
        {"name": "sonnet", "state": "failing", "until": None, "reason": "4 of its last 7 attempts failed"},
        {"name": "opus", "state": "available", "until": None, "reason": None},
    ]
    waiting = {"worker": "w2", "task_id": "t9", "prompt": "Do you want to proceed?", "since": now - 65}
    status = {"state": "running", "workers": {"busy": 1}, "queue": {}, "models": models}
    status["needs_input"] = [waiting]
    text = " ".join(render(cli.status_table(status)).split())
    assert "needs input w2 (task t9) waiting 1m05s: Do you want to proceed?" in text
    assert "model haiku parked until " in text and "(in 5" in text and "usage limit reached|123" in text
    assert "model sonnet failing: 4 of its last 7 attempts failed" in text
    assert "model opus available" in text
    table = render(cli.models_table(models))
    assert "parked" in table and "until " in table and "failing" in table and "available" in table
    worker = {"id": "w2", "state": "busy", "task_id": "t9", "needs_input": "Do you want to proceed?"}
    worker["needs_input_since"] = now - 5
    assert "needs input (5s)" in render(cli.workers_table([worker, {"id": "w3", "state": "busy"}]))
    task = {"id": "t1", "state": "ready", "max_attempts": 3, "created": now, "prompt": "x"}
    task["attempts"] = [attempt(1, "rate_limited")]
    assert "0/3 (+1 rate-limited)" in render(cli.tasks_table([task]))
    assert "0/3 (+1 rate-limited)" in "".join(render(part) for part in cli.task_detail(task))


async def test_the_commands_against_a_served_swarm(tmp_path: Path) -> None:
    """The default demo profile through `shoal serve`: a parked model, a question, a failed task."""
    with shoal_serve(tmp_path / "state", "--max-workers", "3", "--no-dashboard") as served:
        # [[fail:reason]] fails the task: --wait exits non-zero (it said done, exit 0, before)
        failed = await shoal(served, "submit", "[[fail:reason]] x", "--max-attempts", "1", "--wait")
        assert failed.code == cli.EXIT_FAILED, failed.out + failed.err
        limited = await shoal(served, "submit", "[[ratelimit:+60]] x", "--model", "haiku", "--id", "lim")
        assert limited.code == 0, limited.err
        asked = await shoal(served, "submit", "[[ask]] may I?", "--id", "ask")
        assert asked.code == 0, asked.err
        models: list[dict[str, Any]] = []
        waiting: list[dict[str, Any]] = []
        with trio.fail_after(60):
            while not (
                any(m["name"] == "haiku" and m["state"] == "parked" for m in models) and waiting
            ):  # the CLI has no event wait; poll the status it prints
                status = (await shoal(served, "status", "--json")).json()
                models, waiting = status["models"], status["needs_input"]
        assert waiting[0]["task_id"] == "ask" and waiting[0]["prompt"] == "Do you want to proceed?"
        shown = await shoal(served, "models")
        assert shown.code == 0 and "parked" in shown.out and "usage limit reached" in shown.out
        workers = await shoal(served, "workers")
        assert "needs input" in workers.out
        status_text = (await shoal(served, "status")).out
        assert "needs input" in status_text and "Do you want to proceed?" in status_text
        assert "model haiku" in status_text and "parked until" in status_text
        tasks = await shoal(served, "tasks")
        assert "0/3 (+1 rate-limited)" in tasks.out
        assert "0/3 (+1 rate-limited)" in (await shoal(served, "task", "lim")).out
        await shoal(served, "cancel", "lim")
        await shoal(served, "cancel", "ask")


def test_tables_show_retrying_workers_quota_and_the_cost_of_each_attempt() -> None:
    now = time.time()
    retrying = {"attempt": 3, "max_retries": 10, "delay_s": 8.0, "next_at": now + 8.2, "status": 529}
    worker = {"id": "w4", "state": "busy", "task_id": "t2", "retrying": {**retrying, "error": "overloaded"}}
    assert "retrying 3/10, next in 8 s" in render(cli.workers_table([worker]))
    quota = {"seven_day": {"status": "allowed_warning", "utilization": 0.92, "resets_at": now + 7260}}
    sonnet = {"name": "sonnet", "state": "available", "until": None, "reason": None, "quota": quota}
    sonnet |= {"prefer_fallback": True, "retrying": 2}
    paused = {"name": "opus", "state": "parked", "until": None, "reason": "extra usage (pause): Now using"}
    table = " ".join(render(cli.models_table([sonnet, paused])).split())
    assert "QUOTA" in table and "seven_day 92% (warning, resets in 2h0" in table
    assert "prefer fallback" in table and "2 retrying" in table
    assert "parked" in table and "until resumed" in table and "extra usage (pause)" in table
    status = {"state": "running", "workers": {}, "queue": {}, "models": [sonnet, paused]}
    status["retrying"] = [{"worker": "w4", "task_id": "t2", **retrying, "error": "overloaded"}]
    text = " ".join(render(cli.status_table(status)).split())
    assert "retrying w4 (task t2) retrying 3/10, next in 8 s · 529 overloaded" in text
    assert "model sonnet available · seven_day 92% (warning" in text
    assert "model opus parked until resumed: extra usage (pause)" in text
    failed = attempt(1, "failed") | {"reason": "Reached maximum number of turns (40)"}
    failed["usage"] = {"cost_usd": 0.492, "input_tokens": 2800, "output_tokens": 7}
    task = {"id": "t3", "state": "dead", "max_attempts": 1, "created": now, "prompt": "x"}
    task["attempts"] = [failed]
    detail = " ".join("".join(render(part) for part in cli.task_detail(task)).split())
    assert "COST" in detail and "$0.4920" in detail and "2800 in / 7 out" in detail
    assert "Reached maximum number of turns (40)" in detail


async def test_models_pause_and_resume_through_the_cli(tmp_path: Path) -> None:
    with shoal_serve(tmp_path / "state", "--max-workers", "1", "--no-dashboard") as served:
        paused = await shoal(served, "models", "pause", "haiku", "--reason", "budget review")
        assert paused.code == 0 and "paused until `shoal models resume haiku`" in paused.out, paused.err
        shown = " ".join((await shoal(served, "models")).out.split())
        assert "haiku parked" in shown and "until resumed: budget review" in shown
        resumed = await shoal(served, "models", "resume", "haiku", "--json")
        assert resumed.code == 0 and resumed.json()["parked"] is False, resumed.err
        again = await shoal(served, "models", "resume", "haiku")
        assert again.code != 0 and "not parked" in again.err
        missing = await shoal(served, "models", "resume")
        assert missing.code == cli.EXIT_USAGE and "needs a MODEL" in missing.err
