"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real swarm.

Each scenario starts a swarm (real bash workers in real PTYs, the `shell` profile), opens the URL
`shoal serve` prints, and drives the page like an operator. Playwright's sync API runs in one worker
thread per test; swarm-side calls hop back to trio with `trio.from_thread.run`. Waits are on page
conditions (Playwright's auto-waiting), never sleeps. Screenshots of the main views go to
test-artifacts/ (gitignored).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from swarmkit import swarm_config

from shoal.actors.http import dashboard_url

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 30_000

if not Path(CHROMIUM).exists():  # scripts/test installs it; a bare checkout may not have it
    pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)


class Bridge:
    """Lets the browser thread run swarm calls on the trio loop."""

    def __init__(self, swarm: Any) -> None:
        self.swarm = swarm

    def run(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args)

    def sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A synchronous swarm call, made on the trio thread (the swarm's state lives there)."""
        return trio.from_thread.run_sync(fn, *args)

    def config(self) -> Any:
        return self.sync(lambda: self.swarm.config)


Scenario = Callable[[Any, Bridge], None]


async def in_browser(swarm: Any, tmp_path: Path, scenario: Scenario) -> None:
    """Open the printed dashboard URL in a fresh chromium and run `scenario(page, bridge)`."""
    url = dashboard_url(*swarm.http_address, swarm.token)
    token = swarm.token
    profile_dir = tmp_path / "chromium-profile"

    def body() -> None:
        with sync_api.sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(profile_dir),
                executable_path=CHROMIUM,
                headless=True,
                args=ARGS,
                viewport={"width": 1400, "height": 860},
            )
            try:
                page = context.pages[0] if context.pages else context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                errors: list[str] = []
                requested: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                page.on("request", lambda req: requested.append(req.url))
                page.on("websocket", lambda ws: requested.append(ws.url))
                page.goto(url)
                page.wait_for_selector('#conn[data-state="open"]')
                scenario(page, Bridge(swarm))
                assert not errors, errors
                leaked = [u for u in requested if token in u]
                assert not leaked, f"the token went into a requested URL: {leaked}"
            finally:
                context.close()

    await trio.to_thread.run_sync(body)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def visible_rows(table: str) -> str:
    return f"#{table} .vrow:not([hidden])"


async def wait_worker_state(swarm: Any, worker_id: str, state: str) -> None:
    with swarm.events(["worker.state"]) as sub, trio.fail_after(TIMEOUT_MS / 1000):
        if any(w.id == worker_id and w.state == state for w in swarm.workers()):
            return
        async for event in sub:
            if event.data.get("worker") == worker_id and event.data.get("state") == state:
                return


async def cancel_unless_ended(swarm: Any, task_id: str) -> None:
    from shoal.protocols.errors import Conflict

    try:
        await swarm.cancel(task_id)
    except Conflict:
        assert (await swarm.get(task_id)).state in ("dead", "cancelled")


def config(tmp_path: Path, **sections: dict[str, Any]) -> Any:
    base: dict[str, dict[str, Any]] = {
        "http": {"enabled": True, "port": 0},
        "gateway": {"enabled": True, "port": 0},
        "workers": {"profile": "shell", "sample_interval_s": 0.5},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return swarm_config(tmp_path, **base)


# ---- scenarios --------------------------------------------------------------------------------------


async def test_open_the_url_shoal_serve_prints(tmp_path: Path, no_leaks: None) -> None:
    """The real service as an operator starts it: read the URL it prints, open it, run a task."""
    argv = [
        sys.executable, "-m", "shoal.actors.cli", "serve", "--state-dir", str(tmp_path / "state"),
        "--port", "0", "--http-port", "0", "--profile", "shell", "--max-workers", "1",
    ]  # fmt: skip
    proc = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout is not None
        printed = b""
        with trio.fail_after(30):
            while b"dashboard:" not in printed or not printed.endswith(b"\n"):
                chunk = await proc.stdout.receive_some()
                assert chunk, f"shoal serve ended early: {printed!r}"
                printed += chunk
        url = re.search(rb"dashboard: (\S+)", printed).group(1).decode()  # type: ignore[union-attr]
        assert "#token=" in url

        def body() -> None:
            with sync_api.sync_playwright() as pw:
                context = pw.chromium.launch_persistent_context(
                    str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=ARGS
                )
                try:
                    page = context.pages[0] if context.pages else context.new_page()
                    page.set_default_timeout(TIMEOUT_MS)
                    page.goto(url)
                    page.wait_for_selector('#conn[data-state="open"]')
                    assert "#" not in page.url
                    page.click('#tabs [data-tab="tasks"]')
                    page.click("#btn-new-task")
                    page.fill('#submit-form [name="prompt"]', "echo served")
                    page.fill('#submit-form [name="id"]', "served-1")
                    page.click("#submit-go")
                    page.wait_for_selector("#task-detail dd.state-done")
                    expect(page.locator("#task-detail")).to_contain_text("served")
                finally:
                    context.close()

        await trio.to_thread.run_sync(body)
    finally:
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            assert await proc.wait() == 0
        if proc.stdout is not None:
            await proc.stdout.aclose()


async def test_open_the_printed_url_and_see_workers_appear(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"max_workers": 3})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            # the token moved from the fragment to session storage; the address bar no longer has it
            assert "#" not in page.url
            assert page.evaluate("sessionStorage.getItem('shoal.token')") == swarm.token
            assert page.locator(visible_rows("workers-table")).count() == 0
            for i in range(3):
                bridge.run(swarm.submit, {"prompt": f"sleep 1; echo task-{i}", "id": f"t{i}"})
            expect(page.locator(visible_rows("workers-table"))).to_have_count(3)
            page.locator(visible_rows("workers-table")).first.click()
            page.wait_for_selector("#worker-detail h3")
            shot(page, "dashboard-workers")
            expect(page.locator("#summary")).to_contain_text("done 3")
            page.click('#tabs [data-tab="tasks"]')
            page.wait_for_selector(visible_rows("tasks-table"))
            assert page.locator(visible_rows("tasks-table")).count() == 3
            page.click('#tabs [data-tab="charts"]')
            page.wait_for_selector("#chart-throughput .uplot")
            # the charts come from swarm.series, whose annotations (scale events) are drawn on them
            kinds = page.evaluate("() => window.shoal.views.charts.series.annotations.map(a => a.kind)")
            assert "scale.up" in kinds
            shot(page, "dashboard-charts")

        await in_browser(swarm, tmp_path, scenario)


async def test_submit_a_task_from_the_page_and_watch_it_finish(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"max_workers": 1})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(swarm.submit, {"prompt": "sleep 0.3", "id": "before"})
            page.click('#tabs [data-tab="tasks"]')
            page.click("#btn-new-task")
            page.fill('#submit-form [name="prompt"]', "echo from-the-page")
            page.fill('#submit-form [name="id"]', "from-page")
            page.fill('#submit-form [name="priority"]', "5")
            page.fill('#submit-form [name="deps"]', "before")
            page.click("#submit-go")
            page.wait_for_selector("#task-detail h3:text-is('from-page')")
            page.wait_for_selector("#task-detail .deps >> text=before")
            page.wait_for_selector("#task-detail dd.state-done", timeout=TIMEOUT_MS)
            page.wait_for_selector("#task-detail .attempts >> text=done")
            shot(page, "dashboard-tasks")
            task = bridge.run(swarm.get, "from-page")
            assert task.state == "done" and task.priority == 5 and task.deps == ("before",)
            assert "from-the-page" in (task.result or "")
            # a bad value is refused by the page with the field named, and nothing is submitted
            page.click("#btn-new-task")
            page.fill('#submit-form [name="prompt"]', "x")
            page.fill('#submit-form [name="max_attempts"]', "0")
            page.click("#submit-go")
            page.wait_for_selector("#submit-error:has-text('max attempts')")

        await in_browser(swarm, tmp_path, scenario)


async def test_task_actions_boost_cancel_retry_assign(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"min_workers": 3, "max_workers": 3})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(swarm.submit, {"prompt": "sleep 60", "id": "gate"})
            bridge.run(swarm.submit, {"prompt": "echo later", "id": "waiter", "deps": ["gate"]})
            page.click('#tabs [data-tab="tasks"]')
            page.click("#task-states [data-state='blocked']")
            row = page.locator(visible_rows("tasks-table")).filter(has_text="waiter")
            expect(row).to_contain_text("gate")  # "waits on" names the unmet dependency
            row.click()
            page.wait_for_selector("#task-detail .deps >> text=gate")
            page.fill('#task-detail [aria-label="new priority"]', "7")
            page.click("#btn-task-boost")
            expect(page.locator("#task-detail .kv")).to_contain_text("priority7")
            assert bridge.run(swarm.get, "waiter").priority == 7
            page.click("#btn-task-cancel")
            page.wait_for_selector("#task-detail dd.state-cancelled")
            page.click("#btn-task-retry")
            page.wait_for_selector("#task-detail dd.state-blocked")
            # assign: every worker is busy; "pick" goes to the worker of "second", and when the
            # worker of "first" frees up first it must leave "pick" alone
            bridge.run(swarm.submit, {"prompt": "sleep 60", "id": "first"})
            bridge.run(swarm.submit, {"prompt": "sleep 60", "id": "second"})
            page.click("#task-states [data-state='running']")
            expect(page.locator(visible_rows("tasks-table"))).to_have_count(3)
            free_first = bridge.run(swarm.get, "first").worker
            target = bridge.run(swarm.get, "second").worker
            bridge.run(swarm.submit, {"prompt": "echo assigned", "id": "pick"})
            page.fill("#task-find-id", "pick")
            page.click("#task-find button")
            page.wait_for_selector("#task-detail h3:text-is('pick')")
            page.select_option('#task-detail [aria-label="worker"]', target)
            page.click("#btn-task-assign")
            page.wait_for_selector("#toasts >> text=pick assigned to")
            bridge.run(swarm.cancel, "first")
            bridge.run(wait_worker_state, swarm, free_first, "idle")
            assert bridge.run(swarm.get, "pick").state == "ready"
            bridge.run(swarm.cancel, "second")
            page.wait_for_selector("#task-detail dd.state-done")
            assert bridge.run(swarm.get, "pick").attempts[-1].worker == target

        await in_browser(swarm, tmp_path, scenario)


async def test_a_state_chosen_while_the_task_list_loads_is_loaded_once_that_answer_is_back(
    tmp_path: Path,
) -> None:
    # the task list reloads on a state chip and on task events; a reload asked while one was in
    # flight was dropped, so the table showed the earlier state's tasks under the chip chosen until
    # some later event (the full suite once saw 1 running task of 3 for 30 s). The answer to one
    # tasks.list is held here while another chip is chosen.
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"min_workers": 0, "max_workers": 0})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(swarm.submit, {"prompt": "stays ready", "id": "r1"})
            page.click('#tabs [data-tab="tasks"]')
            page.click("#task-states [data-state='ready']")
            expect(page.locator(visible_rows("tasks-table"))).to_have_count(1)
            page.evaluate(
                """() => {
                    const rpc = window.shoal.rpc;
                    const call = rpc.call.bind(rpc);
                    rpc.call = (method, params) => {
                        if (method !== "tasks.list" || window.held) return call(method, params);
                        window.held = new Promise((resolve) => { window.release = resolve; });
                        return window.held.then(() => call(method, params));
                    };
                }"""
            )
            page.click("#task-states [data-state='done']")  # its tasks.list answer is held
            page.wait_for_function("() => !!window.release")
            page.click("#task-states [data-state='ready']")  # asked while that one is in flight
            page.evaluate("() => window.release()")
            expect(page.locator("#task-states [data-state='ready']")).to_have_attribute(
                "aria-pressed", "true"
            )
            expect(page.locator(visible_rows("tasks-table"))).to_have_count(1)
            expect(page.locator(visible_rows("tasks-table"))).to_contain_text("r1")

        await in_browser(swarm, tmp_path, scenario)


async def test_pause_and_resume_a_worker(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"min_workers": 1, "max_workers": 1})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            row = page.locator(visible_rows("workers-table")).first
            row.locator(".state-idle").wait_for()
            row.click()
            page.click("#btn-pause")
            row.locator(".state-paused").wait_for()
            assert bridge.sync(swarm.workers)[0].state == "paused"
            page.click("#btn-resume-worker")
            row.locator(".state-idle").wait_for()
            assert bridge.sync(swarm.workers)[0].state == "idle"

        await in_browser(swarm, tmp_path, scenario)


async def test_change_max_workers_in_the_form_and_see_the_swarm_scale(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"max_workers": 1})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            for i in range(4):
                bridge.run(swarm.submit, {"prompt": "sleep 30", "id": f"long{i}"})
            expect(page.locator("#workers-table .vrow:not([hidden]) .state-busy")).to_have_count(1)
            page.click('#tabs [data-tab="settings"]')
            field = page.locator('[name="scaling.max_workers"]')
            field.fill("-1")  # checked as you type: the page refuses before the server sees it
            page.wait_for_selector('[name="scaling.max_workers"].invalid')
            assert page.locator("#settings-apply").is_disabled()
            field.fill("3")
            page.click("#settings-apply")
            page.wait_for_selector("#toasts >> text=configuration applied")
            assert bridge.config().scaling.max_workers == 3
            shot(page, "dashboard-settings")
            page.click('#tabs [data-tab="workers"]')
            expect(page.locator("#workers-table .vrow:not([hidden]) .state-busy")).to_have_count(3)
            # a value the server refuses (min above max) comes back with the field named
            page.click('#tabs [data-tab="settings"]')
            page.locator('[name="scaling.min_workers"]').fill("9")
            page.wait_for_selector('[name="scaling.min_workers"].invalid')
            assert bridge.config().scaling.min_workers == 0

        await in_browser(swarm, tmp_path, scenario)


async def test_halted_banner_after_a_crash_storm_and_resume(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    cfg = config(
        tmp_path,
        scaling={"max_workers": 3},
        supervision={"breaker": {"crash_rate_max": 3, "crash_window_s": 60}},
    )
    async with open_swarm(cfg) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            assert page.locator("#halt-banner").is_hidden()
            for i in range(3):  # each kills its bash: three crashes trip the breaker
                bridge.run(swarm.submit, {"prompt": "kill -9 $$", "id": f"crash{i}", "max_attempts": 1})
            page.wait_for_selector("#halt-banner", state="visible")
            assert page.locator('#swarm-state[data-state="halted"]').count() == 1
            reason = page.locator("#halt-reason").inner_text()
            assert reason and reason == bridge.run(swarm.status)["reason"]
            shot(page, "dashboard-halted")
            # the operator removes the poison before resuming (it would crash again); a task may
            # have died already, which is fine
            for i in range(3):
                bridge.run(cancel_unless_ended, swarm, f"crash{i}")
            page.click("#btn-resume")
            page.wait_for_selector("#halt-banner", state="hidden")
            page.wait_for_selector('#swarm-state[data-state="running"]')
            assert bridge.run(swarm.status)["state"] == "running"

        await in_browser(swarm, tmp_path, scenario)


async def test_attach_to_a_worker_and_see_typed_input_echoed(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"min_workers": 1, "max_workers": 1})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            row = page.locator(visible_rows("workers-table")).first
            row.locator(".state-idle").wait_for()
            row.click()
            page.click("#btn-attach")
            page.wait_for_selector(".term-wrap .xterm-rows")
            page.click(".term-wrap")
            page.keyboard.type("echo typed-$((6*7))\n")
            # the shell echoes the keystrokes and runs the line: both come back through the attach stream
            expect(page.locator(".term-wrap .xterm-rows")).to_contain_text("typed-42")
            assert "echo typed-$((6*7))" in page.locator(".term-wrap .xterm-rows").inner_text()
            shot(page, "dashboard-terminal")
            page.click("#btn-detach")
            page.wait_for_selector("#btn-attach", state="visible")

        await in_browser(swarm, tmp_path, scenario)


async def test_alert_rules_form_and_live_alerts(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    async with open_swarm(config(tmp_path, scaling={"max_workers": 1})) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            page.click('#tabs [data-tab="alerts"]')
            page.click("#btn-add-rule")
            rule = page.locator("#alert-rules .rule-row").last
            rule.locator('[name="kind"]').select_option("task_dead")
            rule.locator('[name="cooldown_s"]').fill("0")
            page.click("#alerts-apply")
            page.wait_for_selector("#toasts >> text=alert rules applied")
            assert [r.kind for r in bridge.config().alerts.rules] == ["task_dead"]
            bridge.run(swarm.submit, {"prompt": "false", "id": "doomed", "max_attempts": 1})
            page.wait_for_selector("#alert-list .fired")
            assert "task_dead" in page.locator("#alert-list").inner_text()
            page.wait_for_selector("#tab-count-alerts:text-is('1')")
            shot(page, "dashboard-alerts")

        await in_browser(swarm, tmp_path, scenario)


async def test_model_states_needs_input_attempts_and_the_cancelled_count(tmp_path: Path) -> None:
    """The fake agent (the default demo profile): a usage limit parks haiku, a permission prompt
    makes a worker wait for input; the page shows both, counts attempts apart, and integer ticks."""
    from shoal.actors.tree import open_swarm

    cfg = config(tmp_path, workers={"profile": "fake"}, scaling={"max_workers": 3})
    async with open_swarm(cfg) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(
                swarm.submit, {"id": "lim", "prompt": "[[ratelimit:+60]] over quota", "model": "haiku"}
            )
            bridge.run(swarm.submit, {"id": "ask", "prompt": "[[ask]] may I?"})
            # the header: one chip per model; haiku parked, the limit's message on hover
            chip = page.locator('#model-states [data-model="haiku"]')
            expect(chip).to_have_attribute("data-state", "parked")
            expect(chip).to_contain_text("haiku parked until")
            assert "usage limit reached" in (chip.get_attribute("title") or "")
            expect(page.locator('#model-states [data-model="sonnet"]')).to_have_attribute(
                "data-state", "available"
            )
            # the worker waiting on the permission prompt reads "needs input", not busy
            row = page.locator(visible_rows("workers-table")).filter(has_text="ask")
            expect(row.locator(".state-needs_input")).to_have_text("needs input")
            expect(page.locator("#summary")).to_contain_text("needs input 1")
            row.click()
            expect(page.locator("#worker-detail .kv")).to_contain_text("Do you want to proceed? (waiting")
            shot(page, "dashboard-needs-input")
            # tasks: the rate-limited attempt does not count; the waiting task's ETA says why it waits
            page.click('#tabs [data-tab="tasks"]')
            page.click("#task-states [data-state='']")
            lim = page.locator(visible_rows("tasks-table")).filter(has_text=re.compile(r"^lim"))
            expect(lim).to_contain_text("0/3 (+1 rate-limited)")
            asking = page.locator(visible_rows("tasks-table")).filter(has_text=re.compile(r"^ask"))
            expect(asking).to_contain_text("needs input")
            assert "0 ms" not in asking.inner_text()
            page.fill("#task-find-id", "ask")
            page.click("#task-find button")
            page.wait_for_selector("#task-detail h3:text-is('ask')")
            expect(page.locator("#task-detail .kv")).to_contain_text("Do you want to proceed?")
            # the header counts cancelled tasks
            bridge.run(swarm.cancel, "lim")
            expect(page.locator("#summary")).to_contain_text("cancelled 1")
            # the queue-depth chart counts in whole, distinct ticks (it read 0, 1, 1, 1, 2)
            page.click('#tabs [data-tab="charts"]')
            page.wait_for_selector("#chart-queue .uplot")
            page.wait_for_function("() => (window.shoal.views.charts.ticks.queue || []).length >= 2")
            ticks = page.evaluate("() => window.shoal.views.charts.ticks.queue")
            assert len(set(ticks)) == len(ticks) and all(re.fullmatch(r"[\d,]+", t) for t in ticks), ticks

        await in_browser(swarm, tmp_path, scenario)


async def test_the_capacity_chip_names_the_limit_that_holds_the_swarm_back(tmp_path: Path) -> None:
    """Issue 14 item 4: workers costing 200 MiB, 450 MiB above the free-memory floor (a meminfo file
    the test writes): the header says memory holds the swarm back, with the figures on hover; once
    memory is freed, max_workers does."""
    from swarmkit import fake_profile

    from shoal.actors.tree import open_swarm

    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {(512 + 450) * 1024} kB\n")
    cfg = config(
        tmp_path,
        workers={"profile": "big", "profiles": {"big": fake_profile(memory_mb=200)}},
        scaling={"max_workers": 4, "predictive": False},
        node={"min_free_memory_mb": 512, "meminfo_path": str(meminfo)},
    )
    async with open_swarm(cfg) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(swarm.submit_many, [{"id": f"h{i}", "prompt": "[[hang]]"} for i in range(8)])
            chip = page.locator("#capacity")
            expect(chip).to_have_attribute("data-held", "memory")
            expect(chip).to_have_text("held back by memory")
            title = chip.get_attribute("title") or ""
            assert "962 MiB free, floor 512 MiB" in title and "a big worker: 200 MiB (config)" in title, title
            assert "6 more workers wanted" in title, title
            shot(page, "dashboard-capacity")
            tmp = meminfo.with_suffix(".tmp")
            tmp.write_text(f"MemAvailable: {(512 + 4000) * 1024} kB\n")
            tmp.replace(meminfo)
            expect(chip).to_have_attribute("data-held", "max_workers")
            expect(chip).to_have_text("held back by max_workers")
            expect(page.locator("#summary")).to_contain_text("workers 4")

        await in_browser(swarm, tmp_path, scenario)


async def test_retrying_workers_quota_and_a_model_paused_for_extra_usage(tmp_path: Path) -> None:
    """Issue 16 on the page: a worker whose agent retries the API reads "retrying 1/10, next in …",
    the model chip shows the quota used (each window on hover), and extra usage parks a model
    "until resumed" until the operator resumes it."""
    from shoal.actors.tree import open_swarm

    cfg = config(tmp_path, workers={"profile": "fake-stream"}, scaling={"max_workers": 3})
    async with open_swarm(cfg) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(
                swarm.submit,
                {"id": "near", "prompt": "[[quota:allowed_warning,0.93,seven_day]] hi", "model": "sonnet"},
            )
            chip = page.locator('#model-states [data-model="sonnet"]')
            expect(chip).to_contain_text("sonnet available · 93%")
            expect(chip).to_have_attribute("data-quota", "warning")
            assert "quota seven_day: 93% allowed_warning" in (chip.get_attribute("title") or "")
            bridge.run(
                swarm.submit, {"id": "busy", "prompt": "[[retry:3,529,4]] slow API", "model": "sonnet"}
            )
            row = page.locator(visible_rows("workers-table")).filter(has_text="busy")
            expect(row.locator(".state-retrying")).to_contain_text(
                re.compile(r"retrying \d+/10, next in \d+ s")
            )
            row.click()
            expect(page.locator("#worker-detail .kv")).to_contain_text("529 overloaded")
            shot(page, "dashboard-retrying")
            bridge.run(swarm.submit, {"id": "spend", "prompt": "[[extra_usage]] hi", "model": "opus"})
            opus = page.locator('#model-states [data-model="opus"]')
            expect(opus).to_contain_text("opus parked until resumed")
            assert "shoal models resume opus" in (opus.get_attribute("title") or "")
            bridge.run(swarm.resume_model, "opus")
            expect(opus).to_have_attribute("data-state", "available")
            # a failed attempt's cost is shown with it (the turn limit: error_max_turns)
            bridge.run(swarm.submit, {"id": "turns", "prompt": "[[maxturns:40]] x", "max_attempts": 1})
            page.click('#tabs [data-tab="tasks"]')
            page.fill("#task-find-id", "turns")
            page.click("#task-find button")
            page.wait_for_selector("#task-detail h3:text-is('turns')")
            expect(page.locator("#task-detail table.attempts")).to_contain_text("$0.4920")
            expect(page.locator("#task-detail table.attempts")).to_contain_text(
                "Reached maximum number of turns (40)"
            )

        await in_browser(swarm, tmp_path, scenario)


async def test_a_worktree_tasks_change_its_check_diff_and_merge(tmp_path: Path) -> None:
    from test_worktree import make_repo, sh_git

    from shoal.actors.tree import open_swarm
    from shoal.protocols.config import unstructure
    from shoal.protocols.profiles import BUILTIN_PROFILES

    repo = make_repo(tmp_path / "repo", {"app.py": "print('v1')\n"})
    coder = {
        **unstructure(BUILTIN_PROFILES["shell"]),
        "workspace": {
            "mode": "worktree",
            "repo": str(repo),
            "verify": "test -f ok.txt && echo check-ok",
            "artifacts": ["ok.txt", "report/*.md"],
        },
    }
    cfg = config(
        tmp_path, workers={"profile": "coder", "profiles": {"coder": coder}}, scaling={"max_workers": 1}
    )
    async with open_swarm(cfg) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(
                swarm.submit, {"id": "good", "prompt": "echo ok > ok.txt; echo \"print('v2')\" > app.py"}
            )
            bridge.run(swarm.submit, {"id": "bad", "prompt": "echo no > other.txt", "max_attempts": 1})
            bridge.run(swarm.wait, "good")
            bridge.run(swarm.wait, "bad")
            page.click('#tabs [data-tab="tasks"]')
            page.locator(visible_rows("tasks-table")).filter(has_text="good").click()
            page.wait_for_selector("#task-change >> text=shoal/good")
            expect(page.locator("#task-change")).to_contain_text("2 (+2 −1)")
            expect(page.locator("#task-change .state-done")).to_contain_text("passed")
            page.click("#btn-task-diff")
            expect(page.locator("#task-diff .diff-add").first).to_be_visible()
            expect(page.locator("#task-diff")).to_contain_text("+print('v2')")
            expect(page.locator("#task-diff .diff-del")).to_contain_text("-print('v1')")
            page.locator("#task-diff").scroll_into_view_if_needed()
            shot(page, "dashboard-diff")  # docs/dashboard-diff.png is this screenshot
            expect(page.locator("#task-artifacts")).to_contain_text("ok.txt 3 bytes")
            expect(page.locator("#task-artifacts")).to_contain_text("missing: nothing matched report/*.md")
            with page.expect_download() as got:
                page.locator("#task-artifacts .link").filter(has_text="ok.txt").click()
            assert Path(got.value.path()).read_text() == "ok\n" and got.value.suggested_filename == "ok.txt"
            page.fill('#task-detail [aria-label="merge into"]', "main")
            page.click("#btn-task-merge")
            page.wait_for_selector(".toast >> text=shoal/good merged")
            assert bridge.sync(lambda: sh_git(repo, "show", "main:ok.txt")) == "ok\n"

            page.locator(visible_rows("tasks-table")).filter(has_text="bad").click()
            page.wait_for_selector("#task-change >> text=shoal/bad")
            expect(page.locator("#task-change .state-failed")).to_contain_text("failed (exit 1)")
            assert page.locator("#btn-task-merge").is_disabled()  # only a done task's change merges

        await in_browser(swarm, tmp_path, scenario)
