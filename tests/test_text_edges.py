"""Text that cannot be encoded as UTF-8 (a lone surrogate: valid JSON, and what argv bytes that are
not UTF-8 become) is refused where it enters, naming the field, and never breaks a shared resource:
the store, the wire, the metrics exposition, the alerts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from swarmkit import swarm_config

from shoal.actors.alerts import RuleEngine
from shoal.actors.metrics import MetricsActor
from shoal.actors.tree import open_swarm
from shoal.protocols import rpc
from shoal.protocols.config import AlertRule, SwarmConfig, config_from_dict, patch_config
from shoal.protocols.errors import ValidationError
from shoal.protocols.tasks import TaskSpec
from shoal.protocols.text import check_text, find_bad_text, wire_safe
from shoal.runtime.eventbus import Event, EventBus

BAD = "\ud800"


def test_check_text_names_the_first_bad_field() -> None:
    params = {"tasks": [{"prompt": "ok"}, {"prompt": "ok", "deps": ["a", "b" + BAD]}]}
    with pytest.raises(ValidationError) as info:
        check_text(params, "params")
    assert info.value.field == "params.tasks[1].deps[1]"
    assert "lone surrogate U+D800 at character 1" in str(info.value)
    with pytest.raises(ValidationError, match=r"^params\.metadata: has a key that is not valid"):
        check_text({"metadata": {BAD: 1}}, "params")
    with pytest.raises(ValidationError, match=r"^task\.prompt: is not valid"):
        check_text(TaskSpec("x" + BAD), "task")  # attrs instances too (the embedding API)
    assert find_bad_text({"a": ["fine", "é", 3, None]}) is None
    with pytest.raises(ValidationError, match="NUL character at character 2"):
        check_text({"k": "ab\x00"}, nul=True)
    check_text({"k": "ab\x00"})  # NUL is refused only where asked
    deep: Any = "ok"
    for _ in range(100_000):  # no recursion: nesting cannot overflow the stack
        deep = [deep]
    assert find_bad_text(deep) is None


def test_dumps_always_gives_text_the_wire_can_carry() -> None:
    text = rpc.dumps({"reason": "bad " + BAD, "é": "ü"})
    text.encode("utf-8")  # no UnicodeEncodeError
    assert json.loads(text) == {"reason": "bad " + BAD, "é": "ü"}  # the escape is the same character
    assert wire_safe("plain") == "plain"


def test_a_bad_request_id_or_method_is_an_invalid_request() -> None:
    (reply,) = rpc.parse(json.dumps({"jsonrpc": "2.0", "method": "swarm.status", "id": BAD})).items
    assert isinstance(reply, dict) and reply["error"]["data"] == {"field": "id"} and reply["id"] is None
    (reply,) = rpc.parse(json.dumps({"jsonrpc": "2.0", "method": "x" + BAD, "id": 1})).items
    assert isinstance(reply, dict) and reply["error"]["data"] == {"field": "method"}


def test_configuration_strings_are_checked_naming_the_key() -> None:
    with pytest.raises(ValidationError) as info:
        config_from_dict({"profiles": {"p": {"argv": ["agent", "--x" + BAD]}}})
    assert info.value.field == "profiles.p.argv[1]"
    with pytest.raises(ValidationError, match=r"^profiles\.p\.env\.K: contains a NUL"):
        config_from_dict({"profiles": {"p": {"argv": ["agent"], "env": {"K": "a\x00b"}}}})
    with pytest.raises(ValidationError, match=r"^alerts\.webhooks\[0\]\.secret"):
        patch_config(SwarmConfig(), {"alerts": {"webhooks": [{"url": "http://h/", "secret": BAD}]}})


async def test_the_embedding_api_refuses_bad_text_and_the_swarm_goes_on(tmp_path: Path) -> None:
    config = swarm_config(tmp_path, scaling={"max_workers": 0})
    async with open_swarm(config) as swarm:
        with pytest.raises(ValidationError, match=r"^task\.prompt: is not valid Unicode"):
            await swarm.submit({"prompt": "hi" + BAD, "id": "a"})
        with pytest.raises(ValidationError, match=r"^tasks\[1\]\.id"):
            await swarm.submit_many([{"prompt": "ok"}, TaskSpec("ok", id=BAD)])
        with pytest.raises(ValidationError, match=r"^task\.prompt: contains a NUL"):
            await swarm.submit({"prompt": "a\x00b"})
        with pytest.raises(ValidationError, match=r"^id: "):
            await swarm.get(BAD)
        with pytest.raises(ValidationError, match=r"^result: "):
            await swarm.complete("a", 1, "done", result=BAD)
        with pytest.raises(ValidationError, match=r"^partial\.scaling"):
            await swarm.config_patch({"scaling": {BAD: 1}})
        with pytest.raises(ValidationError, match=r"^reason: "):
            await swarm.halt(BAD)
        task = await swarm.submit({"prompt": "still fine", "id": "b"})
        assert (await swarm.get("b")) == task
        assert (await swarm.queue_stats()).store_broken is None


def test_metric_labels_and_alerts_carry_any_text() -> None:
    """Defence in depth: a value that slipped past the edges still renders and alerts."""
    m = MetricsActor(EventBus(), SwarmConfig, lambda: 0.0)
    m.handle(Event(1, 0.0, "task.submitted", {"task_id": "t", "category": "c" + BAD, "model": None}))
    assert "c\\\\ud800" in m.prometheus_text().decode("utf-8")
    eng = RuleEngine()
    rule = AlertRule(kind="store_failed", cooldown_s=0)
    eng.observe(Event(1, 0.0, "queue.store_failed", {"error": "disk full", "retry_in_s": 1.0}), 0.0)
    [fired] = eng.evaluate([rule], 0.0, 0.0, 8)
    assert fired.payload["summary"] == "task store cannot write: disk full"
    eng.observe(Event(2, 0.0, "queue.store_recovered", {"reason": "ok"}), 5.0)
    assert [t.topic for t in eng.evaluate([rule], 5.0, 5.0, 8)] == ["alert.resolved"]


def test_cli_submit_refuses_argv_that_is_not_utf8(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 on the command line arrive as lone surrogates (surrogateescape):
    one line naming the field, exit 2, before any connection is tried."""
    env = {**os.environ, "SHOAL_URL": "ws://127.0.0.1:9/", "SHOAL_TOKEN": "x"}
    proc = subprocess.run(
        [sys.executable, "-m", "shoal.actors.cli", "submit", b"bad \xff prompt"],
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    err = proc.stderr.decode("utf-8", "replace").strip()
    assert proc.returncode == 2, err
    assert "task.prompt: is not valid Unicode text" in err and len(err.splitlines()) == 1
