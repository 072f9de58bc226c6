"""The dashboard answers menus (issue 16): a worker waiting on a question shows it with one button
per option; a click answers it through workers.answer. Real chromium, a real swarm, the fake agent's
model picker in a real PTY (see test_dashboard_browser.py for the harness)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_dashboard_browser import Bridge, config, expect, in_browser, shot, visible_rows

pytestmark = pytest.mark.browser


async def test_a_question_is_answered_with_a_button_per_option(tmp_path: Path) -> None:
    from shoal.actors.tree import open_swarm

    cfg = config(tmp_path, workers={"profile": "fake"}, scaling={"max_workers": 1})
    async with open_swarm(cfg) as swarm:

        def scenario(page: Any, bridge: Bridge) -> None:
            bridge.run(swarm.submit, {"id": "pick", "prompt": "[[picker]] choose"})
            row = page.locator(visible_rows("workers-table")).filter(has_text="pick")
            expect(row.locator(".state-needs_input")).to_have_text("needs input")
            row.click()
            box = page.locator("#worker-answer")
            expect(box.locator(".question")).to_have_text("Select model")
            buttons = box.locator("button[data-choice]")
            expect(buttons).to_have_count(3)
            expect(buttons.nth(1)).to_contain_text("2. Opus")
            shot(page, "dashboard-answer")
            buttons.nth(1).click()
            expect(page.locator("#toasts")).to_contain_text("answered 2. Opus")
            expect(box).to_be_hidden()
            done = bridge.run(swarm.wait, "pick")
            assert done.state == "done" and done.result.endswith("Done: choose"), done
            expect(page.locator("#summary")).not_to_contain_text("needs input")

        await in_browser(swarm, tmp_path, scenario)
