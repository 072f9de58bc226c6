"""Alert rules (fire, hold, cool down, resolve) and webhook delivery to a real local HTTP receiver."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve

from shoal.actors.alerts import (
    SIGNATURE_HEADER,
    AlertActor,
    RuleEngine,
    redact_url,
    sign,
    verify_signature,
)
from shoal.actors.metrics import MetricsActor
from shoal.actors.tree import leads_alerts
from shoal.protocols.config import (
    AlertRule,
    AlertsConfig,
    BackoffConfig,
    ScalingConfig,
    SwarmConfig,
    WebhookConfig,
    patch_config,
)
from shoal.protocols.errors import ValidationError
from shoal.runtime.eventbus import Event, EventBus

FAST = BackoffConfig(min_s=0.01, max_s=0.05, factor=2.0, jitter=0.0, reset_after_s=0.0)


def ev(topic: str, **data: Any) -> Event:
    return Event(0, 1000.0, topic, data)


# ---- the pure rule engine -------------------------------------------------------------------------


def test_crash_rate_fires_at_threshold_then_resolves_when_window_passes() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="crash_rate", threshold=3, window_s=60, cooldown_s=0)
    for t, w in ((0.0, "w1"), (10.0, "w2")):
        eng.observe(ev("worker.crashed", worker=w), t)
        assert eng.evaluate([rule], t, 1000 + t, 8) == []
    eng.observe(ev("worker.crashed", worker="w3"), 20.0)
    [fired] = eng.evaluate([rule], 20.0, 1020.0, 8)
    assert fired.topic == "alert.fired"
    assert fired.payload["details"]["count"] == 3
    assert fired.payload["details"]["workers"] == ["w1", "w2", "w3"]
    assert eng.evaluate([rule], 59.0, 1059.0, 8) == []  # still firing: no repeat
    [resolved] = eng.evaluate([rule], 61.0, 1061.0, 8)  # the first crash left the window
    assert resolved.topic == "alert.resolved"
    assert resolved.payload["id"] == fired.payload["id"]
    assert eng.firing() == []


def test_cooldown_holds_back_a_second_firing() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="task_dead", threshold=1, window_s=10, cooldown_s=100)
    eng.observe(ev("task.dead", task_id="t1"), 0.0)
    assert [t.topic for t in eng.evaluate([rule], 0.0, 0.0, 8)] == ["alert.fired"]
    assert [t.topic for t in eng.evaluate([rule], 11.0, 11.0, 8)] == ["alert.resolved"]
    eng.observe(ev("task.dead", task_id="t2"), 20.0)
    assert eng.evaluate([rule], 20.0, 20.0, 8) == []  # cooling down
    eng.observe(ev("task.dead", task_id="t3"), 99.0)
    assert eng.evaluate([rule], 99.0, 99.0, 8) == []
    [again] = eng.evaluate([rule], 100.0, 100.0, 8)  # cool-down over and t3 still in the window
    assert again.topic == "alert.fired"
    assert again.payload["details"]["ids"] == ["t3"]


def test_at_max_workers_needs_the_condition_for_for_s() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="at_max_workers", for_s=120, cooldown_s=0)
    for w in ("a", "b"):
        eng.observe(ev("worker.spawned", worker=w), 0.0)
    assert eng.evaluate([rule], 0.0, 0.0, 2) == []
    assert eng.evaluate([rule], 119.0, 119.0, 2) == []
    [fired] = eng.evaluate([rule], 120.0, 120.0, 2)
    assert fired.payload["summary"] == "swarm at max workers (2/2)"
    eng.observe(ev("worker.state", worker="b", state="stopped"), 130.0)
    [resolved] = eng.evaluate([rule], 130.0, 130.0, 2)
    assert resolved.topic == "alert.resolved" and resolved.payload["duration_s"] == 10.0


def test_condition_that_breaks_before_for_s_never_fires() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="all_idle", for_s=60, cooldown_s=0)
    eng.observe(ev("worker.state", worker="a", state="idle"), 0.0)
    assert eng.evaluate([rule], 0.0, 0.0, 8) == []
    eng.observe(ev("worker.state", worker="a", state="busy"), 30.0)
    assert eng.evaluate([rule], 30.0, 30.0, 8) == []
    eng.observe(ev("worker.state", worker="a", state="idle"), 40.0)
    assert eng.evaluate([rule], 40.0, 40.0, 8) == []
    assert eng.evaluate([rule], 99.0, 99.0, 8) == []  # only 59 s idle since it came back
    assert [t.topic for t in eng.evaluate([rule], 100.0, 100.0, 8)] == ["alert.fired"]


def test_all_idle_ignores_paused_workers_and_needs_one_idle() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="all_idle", cooldown_s=0)
    eng.observe(ev("worker.state", worker="a", state="paused"), 0.0)
    assert eng.evaluate([rule], 0.0, 0.0, 8) == []  # nobody idle, nobody working
    eng.observe(ev("worker.state", worker="b", state="idle"), 1.0)
    assert [t.topic for t in eng.evaluate([rule], 1.0, 1.0, 8)] == ["alert.fired"]


def test_exited_workers_leave_the_view() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="all_idle", cooldown_s=0)
    eng.observe(ev("worker.state", worker="a", state="idle"), 0.0)
    eng.observe(ev("worker.state", worker="b", state="busy"), 0.0)
    assert eng.evaluate([rule], 0.0, 0.0, 8) == []
    eng.observe(ev("worker.exited", worker="b", crashed=False), 1.0)
    assert [t.topic for t in eng.evaluate([rule], 1.0, 1.0, 8)] == ["alert.fired"]
    assert eng.workers == {"a": "idle"}


def test_breaker_tripped_carries_reason_and_resolves_on_resume() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="breaker_tripped", cooldown_s=0)
    eng.observe(ev("swarm.halted", reason="crash storm", evidence={"crashes": 12}), 0.0)
    [fired] = eng.evaluate([rule], 0.0, 0.0, 8)
    assert fired.payload["summary"] == "swarm halted: crash storm"
    assert fired.payload["details"]["halt"]["evidence"] == {"crashes": 12}
    eng.observe(ev("swarm.resumed"), 5.0)
    assert [t.topic for t in eng.evaluate([rule], 5.0, 5.0, 8)] == ["alert.resolved"]


def test_model_rate_limited_is_per_model_and_ends_at_reset() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="model_rate_limited", cooldown_s=0)
    eng.observe(ev("worker.rate_limited", worker="a", model="opus", reset_at=1100.0), 0.0, wall=1000.0)
    eng.observe(ev("worker.rate_limited", worker="b", model="opus", reset_at=1100.0), 0.0, wall=1000.0)
    eng.observe(ev("worker.rate_limited", worker="c", model="haiku", reset_at=1030.0), 0.0, wall=1000.0)
    fired = eng.evaluate([rule], 0.0, 1000.0, 8)
    assert sorted(t.payload["key"] for t in fired) == ["haiku", "opus"]  # one per model, not per worker
    resolved = eng.evaluate([rule], 31.0, 1031.0, 8)
    assert [(t.topic, t.payload["key"]) for t in resolved] == [("alert.resolved", "haiku")]
    assert [t.payload["key"] for t in eng.evaluate([rule], 101.0, 1101.0, 8)] == ["opus"]


def test_needs_input_fires_per_worker_after_for_s_and_resolves_when_answered() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="needs_input", for_s=60, cooldown_s=0)
    asked = {"worker": "w1", "task_id": "t1", "prompt": "Select model", "options": ["Opus", "Haiku"]}
    eng.observe(ev("worker.needs_input", **asked), 0.0)
    eng.observe(ev("worker.needs_input", worker="w2", prompt="Do you want to proceed?"), 0.0)
    assert eng.evaluate([rule], 0.0, 1000.0, 8) == []
    assert eng.evaluate([rule], 30.0, 1030.0, 8) == []  # a human may still be on it
    eng.observe(ev("worker.state", worker="w2", state="idle"), 40.0)  # the screen moved on
    [fired] = eng.evaluate([rule], 61.0, 1061.0, 8)
    assert fired.topic == "alert.fired" and fired.payload["key"] == "w1"
    assert fired.payload["summary"] == "worker w1 waits for an answer: Select model"
    assert fired.payload["details"]["options"] == ["Opus", "Haiku"]
    eng.observe(ev("worker.answered", worker="w1", by="human", choice=1), 70.0)
    assert [(t.topic, t.payload["key"]) for t in eng.evaluate([rule], 70.0, 1070.0, 8)] == [
        ("alert.resolved", "w1")
    ]


def test_a_rate_limit_without_reset_time_lasts_one_window() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="model_rate_limited", window_s=60, cooldown_s=0)
    eng.observe(ev("worker.rate_limited", worker="a", model="haiku", reset_at=None), 0.0, wall=1000.0)
    assert [t.payload["key"] for t in eng.evaluate([rule], 0.0, 1000.0, 8)] == ["haiku"]
    assert eng.evaluate([rule], 59.0, 1059.0, 8) == []
    assert [t.topic for t in eng.evaluate([rule], 60.0, 1060.0, 8)] == ["alert.resolved"]
    assert eng.limited == {}


def test_removed_rule_forgets_its_state_and_identical_rules_fire_once() -> None:
    eng = RuleEngine()
    rule = AlertRule(kind="breaker_tripped", cooldown_s=1000)
    eng.observe(ev("swarm.halted", reason="x"), 0.0)
    assert len(eng.evaluate([rule, rule], 0.0, 0.0, 8)) == 1
    assert [t.topic for t in eng.evaluate([], 1.0, 1.0, 8)] == ["alert.resolved"]
    assert eng.firing() == []


def test_signature_and_redaction() -> None:
    body = b'{"a":1}'
    sig = sign("s3cret", body)
    assert sig.startswith("sha256=") and len(sig) == 7 + 64
    assert verify_signature("s3cret", body, sig)
    assert not verify_signature("other", body, sig)
    assert not verify_signature("s3cret", body + b" ", sig)
    assert redact_url("https://hooks.example.com/services/T0/B0/XXXX?k=1") == "https://hooks.example.com/…"
    assert redact_url("http://127.0.0.1:9000/") == "http://127.0.0.1:9000/"


def test_alert_rule_config_is_validated_with_the_field_named() -> None:
    with pytest.raises(ValidationError) as info:
        patch_config(SwarmConfig(), {"alerts": {"rules": [{"kind": "nope"}]}})
    assert "alerts.rules" in info.value.field
    with pytest.raises(ValidationError) as info:
        patch_config(SwarmConfig(), {"alerts": {"rules": [{"kind": "crash_rate", "threshold": 0}]}})
    assert info.value.field.startswith("alerts.rules")


# ---- the actor on a real EventBus ---------------------------------------------------------------


@attrs.define
class Holder:
    config: SwarmConfig

    def get(self) -> SwarmConfig:
        return self.config


def config_with(
    rules: list[AlertRule], hooks: list[WebhookConfig] | None = None, max_workers: int = 8
) -> SwarmConfig:
    return SwarmConfig(
        scaling=ScalingConfig(max_workers=max_workers),
        alerts=AlertsConfig(rules=tuple(rules), webhooks=tuple(hooks or ())),
    )


async def next_topic(sub: Any, topic: str) -> Event:
    async for event in sub:
        if event.topic == topic:
            return event  # type: ignore[no-any-return]
    raise AssertionError("subscription ended")


async def test_actor_fires_and_resolves_on_the_bus_with_virtual_time(autojump_clock: trio.abc.Clock) -> None:
    bus = EventBus()
    holder = Holder(config_with([AlertRule(kind="all_idle", for_s=600, cooldown_s=0)]))
    actor = AlertActor(holder.get, bus)
    watch = bus.subscribe(["alert.*"])
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        start = trio.current_time()
        bus.publish("worker.state", {"worker": "w1", "state": "idle"})
        with trio.fail_after(700):
            fired = await next_topic(watch, "alert.fired")
        assert trio.current_time() - start >= 600  # held for for_s (10 minutes) first
        assert fired.data["kind"] == "all_idle"
        assert actor.firing()[0]["id"] == fired.data["id"]
        bus.publish("worker.state", {"worker": "w1", "state": "busy"})
        with trio.fail_after(5):
            resolved = await next_topic(watch, "alert.resolved")
        assert resolved.data["id"] == fired.data["id"]
        assert actor.stats["fired"] == 1 and actor.stats["resolved"] == 1
        nursery.cancel_scope.cancel()


async def test_rules_are_hot_configurable(autojump_clock: trio.abc.Clock) -> None:
    bus = EventBus()
    holder = Holder(config_with([]))
    actor = AlertActor(holder.get, bus)
    watch = bus.subscribe(["alert.*"])
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("swarm.halted", {"reason": "crash storm"})
        with trio.move_on_after(30):
            await next_topic(watch, "alert.fired")
            raise AssertionError("no rule configured, yet an alert fired")
        holder.config = config_with([AlertRule(kind="breaker_tripped")])
        with trio.fail_after(5):
            fired = await next_topic(watch, "alert.fired")
        assert fired.data["summary"] == "swarm halted: crash storm"
        nursery.cancel_scope.cancel()


async def test_dropped_events_are_repaired_from_the_metrics(autojump_clock: trio.abc.Clock) -> None:
    bus = EventBus()
    holder = Holder(config_with([AlertRule(kind="all_idle", cooldown_s=0)]))
    metrics = MetricsActor(bus, holder.get, time.time)
    actor = AlertActor(holder.get, bus, lambda: metrics, subscription_size=1)
    watch = bus.subscribe(["alert.*"])
    async with trio.open_nursery() as nursery:
        await nursery.start(metrics.run)
        await nursery.start(actor.run)
        # no checkpoint in between: the alert actor's one-slot subscription keeps "w0 busy" and drops
        # the rest, so only the repair from the metrics' worker view can see that all are idle
        for state in ("busy", "idle"):
            for i in range(5):
                bus.publish("worker.state", {"worker": f"w{i}", "state": state})
        with trio.fail_after(10):
            fired = await next_topic(watch, "alert.fired")
        assert fired.data["summary"] == "all 5 workers idle"
        assert actor.engine.workers == {f"w{i}": "idle" for i in range(5)}
        nursery.cancel_scope.cancel()


# ---- webhooks to a real local receiver -------------------------------------------------------------


@attrs.define
class Receiver:
    """A real HTTP server (hypercorn) recording what it receives; answers from a script of statuses."""

    statuses: list[int] = attrs.field(factory=list)  # consumed per request; 200 when empty
    hang: bool = False
    requests: list[tuple[dict[str, str], bytes]] = attrs.field(factory=list)
    arrived: trio.Event = attrs.field(factory=trio.Event)
    url: str = ""

    async def app(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((headers, body))
        self.arrived.set()
        self.arrived = trio.Event()
        if self.hang:
            await trio.sleep_forever()
        status = self.statuses.pop(0) if self.statuses else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    cfg = HyperConfig()
    cfg.bind = ["127.0.0.1:0"]
    cfg.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(serve, rec.app, cfg)
        rec.url = binds[0] + "/hook/secret-path"
        yield rec
        nursery.cancel_scope.cancel()


async def wait_requests(rec: Receiver, n: int) -> None:
    while len(rec.requests) < n:
        await rec.arrived.wait()


async def test_webhook_signed_and_retried_after_a_500(receiver: Receiver) -> None:
    receiver.statuses = [500, 503]
    bus = EventBus()
    hook = WebhookConfig(url=receiver.url, secret="s3cret", max_retries=3, timeout_s=5)
    holder = Holder(config_with([AlertRule(kind="breaker_tripped")], [hook]))
    actor = AlertActor(holder.get, bus, retry_backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("swarm.halted", {"reason": "crash storm", "evidence": {"crashes": 11}})
        with trio.fail_after(10):
            await wait_requests(receiver, 3)
        bodies = {body for _, body in receiver.requests}
        assert len(bodies) == 1  # the same signed body each time
        for headers, body in receiver.requests:
            assert verify_signature("s3cret", body, headers[SIGNATURE_HEADER.lower()])
            assert headers["content-type"] == "application/json"
            assert headers["x-shoal-event"] == "alert.fired"
        doc = json.loads(receiver.requests[-1][1])
        assert doc["type"] == "alert.fired"
        assert doc["alert"]["kind"] == "breaker_tripped"
        assert doc["alert"]["details"]["halt"]["evidence"] == {"crashes": 11}
        while actor.stats["delivered"] < 1:  # the third answer (200) is counted just after it is sent
            await trio.lowlevel.checkpoint()
        assert actor.stats["retries"] == 2 and actor.stats["failed"] == 0
        nursery.cancel_scope.cancel()


async def test_delivery_failure_is_reported_after_retries(receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    bus = EventBus()
    watch = bus.subscribe(["alert.*"])
    hooks = [WebhookConfig(url=receiver.url, max_retries=2, timeout_s=5)]
    actor = AlertActor(Holder(config_with([AlertRule(kind="task_dead")], hooks)).get, bus, retry_backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("task.dead", {"task_id": "t1"})
        with trio.fail_after(10):
            failed = await next_topic(watch, "alert.delivery_failed")
        assert failed.data["attempts"] == 3
        assert failed.data["error"] == "HTTP 500"
        assert failed.data["rule"] == "task_dead"
        assert "secret-path" not in failed.data["url"]  # the event does not leak the hook's path
        assert len(receiver.requests) == 3
        nursery.cancel_scope.cancel()


async def test_a_client_error_is_not_retried(receiver: Receiver) -> None:
    receiver.statuses = [404]
    bus = EventBus()
    watch = bus.subscribe(["alert.delivery_failed"])
    hooks = [WebhookConfig(url=receiver.url, max_retries=5, timeout_s=5)]
    actor = AlertActor(Holder(config_with([AlertRule(kind="task_dead")], hooks)).get, bus, retry_backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("task.dead", {"task_id": "t1"})
        with trio.fail_after(10):
            failed = await next_topic(watch, "alert.delivery_failed")
        assert failed.data["attempts"] == 1 and failed.data["error"] == "HTTP 404"
        nursery.cancel_scope.cancel()


async def test_unreachable_and_invalid_webhooks_are_reported() -> None:
    with trio.socket.socket() as s:  # a port nobody listens on
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bus = EventBus()
    watch = bus.subscribe(["alert.delivery_failed"])
    hooks = [
        WebhookConfig(url=f"http://127.0.0.1:{port}/", max_retries=1, timeout_s=5),
        WebhookConfig(url="ftp://example.com/", max_retries=1),
    ]
    actor = AlertActor(Holder(config_with([AlertRule(kind="task_dead")], hooks)).get, bus, retry_backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("task.dead", {"task_id": "t1"})
        with trio.fail_after(10):
            got = {e.data["webhook"]: e.data for e in [await watch.receive(), await watch.receive()]}
        assert got[0]["attempts"] == 2 and "ConnectError" in got[0]["error"]
        assert got[1]["error"] == "alerts.webhooks[1].url: must be an http(s) URL"
        nursery.cancel_scope.cancel()


async def test_a_hanging_receiver_never_blocks_alerts(receiver: Receiver) -> None:
    receiver.hang = True
    bus = EventBus()
    watch = bus.subscribe(["alert.*"])
    hooks = [WebhookConfig(url=receiver.url, max_retries=0, timeout_s=0.5)]
    rules = [AlertRule(kind="task_dead", cooldown_s=0, window_s=1), AlertRule(kind="breaker_tripped")]
    actor = AlertActor(Holder(config_with(rules, hooks)).get, bus, retry_backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("task.dead", {"task_id": "t1"})
        with trio.fail_after(10):
            await wait_requests(receiver, 1)  # the receiver now holds that delivery
            bus.publish("swarm.halted", {"reason": "storm"})
            while True:  # the second alert is published while the first delivery still hangs
                event = await watch.receive()
                if event.topic == "alert.fired" and event.data["kind"] == "breaker_tripped":
                    break
            failed = await next_topic(watch, "alert.delivery_failed")
        assert failed.data["error"] == "timed out after 0.5 s"
        nursery.cancel_scope.cancel()


async def test_send_test_reports_each_webhook(receiver: Receiver) -> None:
    receiver.statuses = [200, 500]
    bus = EventBus()
    watch = bus.subscribe(["alert.*"])
    hooks = [
        WebhookConfig(url=receiver.url, secret="k", max_retries=5),
        WebhookConfig(url=receiver.url + "?second", max_retries=5),
    ]
    actor = AlertActor(Holder(config_with([], hooks)).get, bus, retry_backoff=FAST)
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        with trio.fail_after(10):
            report = await actor.send_test()
        assert report["delivered"] == 1 and report["failed"] == 1
        assert sorted(r["ok"] for r in report["webhooks"]) == [False, True]
        assert len(receiver.requests) == 2  # a test is sent once: no retries
        assert (await watch.receive()).topic == "alert.test"
        signed = [h for h, _ in receiver.requests if SIGNATURE_HEADER.lower() in h]
        assert len(signed) == 1 and signed[0]["x-shoal-event"] == "alert.test"
        nursery.cancel_scope.cancel()


# ---- a cluster: one page, not one a node -------------------------------------------------------------


def test_another_nodes_halt_or_store_failure_is_not_this_nodes_alert() -> None:
    # in a cluster every node hears every node's events: a halt or a store failure is the alert of
    # the node it happened on (each fires its own); another node's worker crash counts here as ever
    eng = RuleEngine()
    rules = [AlertRule(kind="breaker_tripped"), AlertRule(kind="store_failed"), AlertRule(kind="crash_rate")]
    eng.observe(Event(1, 1000.0, "swarm.halted", {"reason": "storm"}, remote=True), 0.0)
    eng.observe(Event(2, 1000.0, "queue.store_failed", {"error": "down"}, remote=True), 0.0)
    assert eng.evaluate(rules, 0.0, 0.0, 8) == []
    eng.observe(Event(3, 1000.0, "worker.crashed", {"worker": "b:w1"}, remote=True), 1.0)
    eng.observe(Event(4, 1000.0, "swarm.halted", {"reason": "mine"}), 1.0)
    fired = {t.payload["kind"] for t in eng.evaluate(rules, 1.0, 1.0, 8)}
    assert fired == {"crash_rate", "breaker_tripped"}


async def test_a_node_that_does_not_lead_fires_only_its_own_halt_and_store_alerts(
    autojump_clock: trio.abc.Clock,
) -> None:
    bus = EventBus()
    rules = [AlertRule(kind="task_dead", cooldown_s=0), AlertRule(kind="store_failed", cooldown_s=0)]
    holder = Holder(config_with(rules))
    leading = [False]
    actor = AlertActor(holder.get, bus, leads=lambda: leading[0])
    watch = bus.subscribe(["alert.*"])
    async with trio.open_nursery() as nursery:
        await nursery.start(actor.run)
        bus.publish("task.dead", {"task_id": "t1"})
        bus.publish("queue.store_failed", {"error": "disk full"})
        with trio.fail_after(5):
            fired = await next_topic(watch, "alert.fired")
        assert fired.data["kind"] == "store_failed"  # its own store: its alert
        with trio.move_on_after(30):
            await next_topic(watch, "alert.fired")
            raise AssertionError("a node that does not lead fired the cluster's alert")
        assert actor.stats["left_to_another_node"] == 1 and actor.firing()  # evaluated all the same
        # the leading node died: this one leads now, fires what it holds that it did not fire (the
        # dead letter: at its next evaluation, a tick at most), and later resolves it
        leading[0] = True
        with trio.fail_after(5):
            taken = await next_topic(watch, "alert.fired")
        assert taken.data["kind"] == "task_dead" and taken.data["details"]["ids"] == ["t1"]
        with trio.fail_after(rules[0].window_s + 30):
            resolved = await next_topic(watch, "alert.resolved")
        assert resolved.data["kind"] == "task_dead" and resolved.data["id"] == taken.data["id"]
        leading[0] = False  # a node with a lower id is back: it fires what comes next, not this one
        bus.publish("task.dead", {"task_id": "t2"})
        with trio.move_on_after(30):
            await next_topic(watch, "alert.fired")
            raise AssertionError("a node that no longer leads fired")
        nursery.cancel_scope.cancel()


def test_the_live_node_first_by_id_leads_the_alerts() -> None:
    @attrs.frozen
    class Row:
        id: str
        alive: bool

    @attrs.frozen
    class Shared:
        node_id: str
        nodes: tuple[Row, ...]
        shared: bool = True

    assert leads_alerts(None)  # no store yet, or SQLite: the node is its own cluster
    assert leads_alerts(Shared("b", ()))  # nodes not known yet
    both = (Row("b", True), Row("a", True))
    assert leads_alerts(Shared("a", both)) and not leads_alerts(Shared("b", both))
    assert leads_alerts(Shared("b", (Row("a", False), Row("b", True))))
