"""Alert rules over the swarm's events, delivered as `alert.*` events and to webhooks.

The rule engine (`RuleEngine`) is sans-IO: it is fed events and the time, and answers which alerts
fire or resolve. Every rule is a *condition that holds or not* (a count inside a sliding window is a
condition too), so one mechanism gives every kind its `for_s` (hold this long before firing), its
cool-down (minimum time between two firings of the same alert) and its resolution (the condition
stopped holding). `AlertActor` feeds the engine from an `EventBus` subscription and a tick, publishes
`alert.fired` / `alert.resolved`, and POSTs each to the configured webhooks (JSON body, HMAC-SHA256
signature header, retries with backoff, `alert.delivery_failed` when a delivery gives up). Delivery runs
in its own tasks with a cap on deliveries in flight, so a slow or dead receiver never slows the swarm:
the bus subscription is bounded too (a slow reader drops events, it never blocks publishers).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import trio

from ..protocols.config import AlertRule, BackoffConfig, SwarmConfig, WebhookConfig, unstructure
from ..protocols.errors import Conflict
from ..runtime.eventbus import Event, EventBus, Subscription

log = logging.getLogger("shoal.alerts")

SIGNATURE_HEADER = "X-Shoal-Signature"
EVENT_HEADER = "X-Shoal-Event"
DELIVERY_HEADER = "X-Shoal-Delivery"
USER_AGENT = "shoal-alerts/0.1"

# topics the engine needs; alert.* is left out so the actor never reacts to its own events
WATCHED_TOPICS = ("worker.*", "task.dead", "swarm.*", "scale.*", "queue.store_*", "model.*")

# In a cluster every node hears every node's events, so each would fire each alert: one node fires
# those (`leads`), except the rules about a node's own parts, which each node fires for itself from
# its own events (another node's halt or store failure is that node's alert)
NODE_LOCAL_KINDS = frozenset({"breaker_tripped", "store_failed"})
_NODE_LOCAL_TOPICS = ("swarm.", "queue.store_")

_GONE_STATES = frozenset({"stopped", "crashed"})
_NOT_COUNTED_AT_MAX = frozenset({"stopped", "crashed", "stopping"})

DEFAULT_RETRY_BACKOFF = BackoffConfig(min_s=1.0, max_s=60.0, factor=2.0, jitter=0.1, reset_after_s=0.0)


def rule_name(rule: AlertRule) -> str:
    return rule.name or rule.kind


def redact_url(url: str) -> str:
    """Show where a webhook points without its secrets (paths and queries often carry tokens)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<invalid url>"
    if ":" in host:
        host = f"[{host}]"
    tail = "/…" if parts.path not in ("", "/") or parts.query else "/"
    return f"{parts.scheme}://{host}{port}{tail}"


def sign(secret: str, body: bytes) -> str:
    """The `X-Shoal-Signature` value: `sha256=` + hex HMAC-SHA256 of the exact body bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """What a receiver does: recompute and compare in constant time."""
    return header is not None and hmac.compare_digest(sign(secret, body), header)


# ---- the rule engine (sans-IO) -----------------------------------------------------------------


@attrs.define
class _RuleState:
    """Book-keeping for one (rule, key) pair, e.g. (model_rate_limited, "opus")."""

    pending_since: float | None = None  # monotonic time the condition started holding
    pending_wall: float | None = None
    alert_id: str | None = None  # set while firing
    fired_at: float | None = None  # monotonic time of the last firing (cool-down)
    fired_wall: float | None = None
    summary: str = ""  # the condition's, as it fired
    details: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class Transition:
    """An alert fired or resolved: the event topic and its payload (also the webhook's `alert`)."""

    topic: str  # "alert.fired" | "alert.resolved"
    payload: dict[str, Any]


class RuleEngine:
    """Derives the swarm's alertable conditions from events and decides firings and resolutions.

    `now` is monotonic seconds (trio's clock, so tests drive it with `autojump_clock`); `wall` is epoch
    seconds for the payloads.
    """

    def __init__(self) -> None:
        self.workers: dict[str, str] = {}  # live worker id -> state
        self.halted: dict[str, Any] | None = None  # swarm.halted data while halted
        self.store_failed: dict[str, Any] | None = None  # queue.store_failed data until recovered
        self.asking: dict[str, dict[str, Any]] = {}  # worker -> its worker.needs_input data, until answered
        self.dead_times: deque[tuple[float, str]] = deque()  # (now, task id) of task.dead
        self.crash_times: deque[tuple[float, str]] = deque()  # (now, worker id) of worker.crashed
        # model -> (reported at, limited until or None when the report gave no reset time, data)
        self.limited: dict[str, tuple[float, float | None, dict[str, Any]]] = {}
        # model -> (parked until, monotonic, data) for a retry storm's back-off
        self.storms: dict[str, tuple[float, dict[str, Any]]] = {}
        # (model, window) -> (expires at, monotonic or None, data) of an allowed_warning quota report
        self.quota_warnings: dict[tuple[str, str], tuple[float | None, dict[str, Any]]] = {}
        # model -> (reported at, monotonic; data) of "now using extra usage", until the model resumes
        self.extra_usage: dict[str, tuple[float, dict[str, Any]]] = {}
        self._states: dict[tuple[AlertRule, str | None], _RuleState] = {}
        self._max_window = 0.0

    # -- feeding

    def observe(self, event: Event, now: float, wall: float | None = None) -> None:
        """Update the derived state from one event."""
        topic, data = event.topic, event.data
        if event.remote and topic.startswith(_NODE_LOCAL_TOPICS):
            return  # another node's halt or store: its own alerts (NODE_LOCAL_KINDS)
        wall = event.ts if wall is None else wall
        if topic.startswith("worker."):
            wid = data.get("worker") or data.get("id")
            if not isinstance(wid, str):
                return
            if topic == "worker.needs_input":
                self.asking[wid] = dict(data)
            elif topic in ("worker.answered", "worker.state", "worker.crashed", "worker.exited"):
                self.asking.pop(wid, None)  # answered, or the screen moved on
            if topic == "worker.crashed":
                self.crash_times.append((now, wid))
                self.workers.pop(wid, None)
            elif topic == "worker.exited":
                self.workers.pop(wid, None)
            elif topic == "worker.spawned":
                self.workers.setdefault(wid, str(data.get("state") or "starting"))
            elif topic == "worker.state":
                state = str(data.get("state") or "")
                if state in _GONE_STATES:
                    self.workers.pop(wid, None)
                elif state:
                    self.workers[wid] = state
            elif topic == "worker.rate_limited":
                model = data.get("model")
                if isinstance(model, str) and model:
                    reset_at = data.get("reset_at")
                    until: float | None = None
                    if isinstance(reset_at, int | float) and not isinstance(reset_at, bool):
                        until = now + max(0.0, float(reset_at) - wall)
                    self.limited[model] = (now, until, dict(data))
        elif topic == "task.dead":
            tid = data.get("task_id") or data.get("id") or ""
            self.dead_times.append((now, str(tid)))
        elif topic == "swarm.halted":
            self.halted = dict(data)
        elif topic in ("swarm.resumed", "swarm.started"):
            self.halted = None
        elif topic == "queue.store_failed":
            self.store_failed = dict(data)
        elif topic == "queue.store_recovered":
            self.store_failed = None
        elif topic.startswith("model."):
            self._observe_model(topic, data, now, wall)

    def _observe_model(self, topic: str, data: Mapping[str, Any], now: float, wall: float) -> None:
        model = data.get("model")
        if not isinstance(model, str) or not model:
            return
        if topic == "model.retry_storm":
            until = data.get("until")
            if isinstance(until, int | float) and not isinstance(until, bool):
                self.storms[model] = (now + max(0.0, float(until) - wall), dict(data))
        elif topic == "model.quota":
            key = (model, str(data.get("window") or "?"))
            if data.get("status") == "allowed_warning":
                reset = data.get("resets_at")
                expires = None
                if isinstance(reset, int | float) and not isinstance(reset, bool):
                    expires = now + max(0.0, float(reset) - wall)
                self.quota_warnings[key] = (expires, dict(data))
            else:
                self.quota_warnings.pop(key, None)
        elif topic == "model.extra_usage":
            self.extra_usage[model] = (now, dict(data))
        elif topic == "model.unparked":
            self.storms.pop(model, None)
            if data.get("reason"):  # an operator resumed it: the extra-usage pause is over
                self.extra_usage.pop(model, None)

    def sync_workers(self, workers: Mapping[str, str]) -> None:
        """Replace the worker view with an authoritative one (id -> state), e.g. after dropped events."""
        self.workers = {wid: st for wid, st in workers.items() if st not in _GONE_STATES}
        self.asking = {wid: asked for wid, asked in self.asking.items() if wid in self.workers}

    # -- conditions

    def _prune(self, now: float, rules: Iterable[AlertRule]) -> None:
        horizon = max((r.window_s for r in rules), default=0.0)
        while self.dead_times and self.dead_times[0][0] < now - horizon:
            self.dead_times.popleft()
        while self.crash_times and self.crash_times[0][0] < now - horizon:
            self.crash_times.popleft()

    def _conditions(
        self, rule: AlertRule, now: float, max_workers: int
    ) -> dict[str | None, tuple[str, dict[str, Any]]]:
        """Keys for which the rule's condition holds now, each with a summary and details."""
        kind = rule.kind
        if kind == "at_max_workers":
            live = sum(1 for s in self.workers.values() if s not in _NOT_COUNTED_AT_MAX)
            if max_workers > 0 and live >= max_workers:
                return {
                    None: (
                        f"swarm at max workers ({live}/{max_workers})",
                        {"workers": live, "max": max_workers},
                    )
                }
        elif kind == "all_idle":
            active = [s for s in self.workers.values() if s not in _NOT_COUNTED_AT_MAX and s != "paused"]
            if active and all(s == "idle" for s in active):
                return {None: (f"all {len(active)} workers idle", {"workers": len(active)})}
        elif kind in ("task_dead", "crash_rate"):
            times = self.dead_times if kind == "task_dead" else self.crash_times
            recent = [subject for (t, subject) in times if t >= now - rule.window_s]
            if len(recent) >= rule.threshold:
                n = len(recent)
                if kind == "task_dead":
                    what = "task dead-lettered" if n == 1 else "tasks dead-lettered"
                else:
                    what = "worker crash" if n == 1 else "worker crashes"
                label = "ids" if kind == "task_dead" else "workers"
                return {
                    None: (
                        f"{len(recent)} {what} in {rule.window_s:g} s",
                        {"count": len(recent), "window_s": rule.window_s, label: recent[-20:]},
                    )
                }
        elif kind == "breaker_tripped":
            if self.halted is not None:
                reason = self.halted.get("reason") or "unknown reason"
                return {None: (f"swarm halted: {reason}", {"halt": self.halted})}
        elif kind == "store_failed":
            if self.store_failed is not None:
                error = self.store_failed.get("error") or "unknown error"
                return {None: (f"task store cannot write: {error}", {"store": self.store_failed})}
        elif kind == "needs_input":
            return {
                wid: (f"worker {wid} waits for an answer: {asked.get('prompt') or 'a question'}", asked)
                for wid, asked in self.asking.items()
            }
        elif kind == "retry_storm":
            storms: dict[str | None, tuple[str, dict[str, Any]]] = {}
            for model, (storm_end, data) in list(self.storms.items()):
                if now >= storm_end:
                    del self.storms[model]
                    continue
                storms[model] = (
                    f"model {model} backed off: {len(data.get('workers') or ())} workers retrying "
                    f"({data.get('error')}), parked {data.get('park_s')} s",
                    {k: data.get(k) for k in ("model", "workers", "error", "park_s", "until", "level")},
                )
            return storms
        elif kind == "quota_warning":
            warnings: dict[str | None, tuple[str, dict[str, Any]]] = {}
            for (model, window), (expires, data) in list(self.quota_warnings.items()):
                if expires is not None and now >= expires:
                    del self.quota_warnings[(model, window)]
                    continue
                util = data.get("utilization")
                used = (
                    f" at {util:.0%}" if isinstance(util, int | float) and not isinstance(util, bool) else ""
                )
                warnings[f"{model}:{window}"] = (
                    f"model {model} near its {window} limit{used}",
                    {
                        k: data.get(k)
                        for k in ("model", "window", "status", "utilization", "resets_at", "overage")
                    },
                )
            return warnings
        elif kind == "extra_usage":
            extra: dict[str | None, tuple[str, dict[str, Any]]] = {}
            for model, (at, data) in list(self.extra_usage.items()):
                policy = data.get("policy")
                if policy == "continue" and now >= at + rule.window_s:
                    continue  # nothing waits on an operator: the alert lasts one window
                action = {"pause": "paused until resumed", "stop": "stopped until resumed"}.get(
                    str(policy), "continuing"
                )
                extra[model] = (
                    f"model {model} is using extra usage ({action})",
                    {k: data.get(k) for k in ("model", "message", "policy", "worker", "task_id")},
                )
            return extra
        elif kind == "model_rate_limited":
            out: dict[str | None, tuple[str, dict[str, Any]]] = {}
            for model, (reported, until, data) in self.limited.items():
                # a limit without a reset time is taken to last one window of the rule
                if now < (until if until is not None else reported + rule.window_s):
                    reset = data.get("reset_at")
                    out[model] = (f"model {model} rate-limited", {"model": model, "reset_at": reset})
            return out
        return {}

    def _expire_limits(self, now: float, rules: Iterable[AlertRule]) -> None:
        window = max((r.window_s for r in rules if r.kind == "model_rate_limited"), default=0.0)
        for model, (reported, until, _data) in list(self.limited.items()):
            if now >= (until if until is not None else reported + window):
                del self.limited[model]

    # -- decisions

    def evaluate(
        self, rules: Iterable[AlertRule], now: float, wall: float, max_workers: int
    ) -> list[Transition]:
        rules = tuple(dict.fromkeys(rules))  # identical rules would fire twice: keep one
        self._prune(now, rules)
        out: list[Transition] = []
        live_keys: set[tuple[AlertRule, str | None]] = set()
        for rule in rules:
            holding = self._conditions(rule, now, max_workers)
            for key, (summary, details) in holding.items():
                sk = (rule, key)
                live_keys.add(sk)
                st = self._states.setdefault(sk, _RuleState())
                if st.pending_since is None:
                    st.pending_since, st.pending_wall = now, wall
                st.details = details
                if st.alert_id is not None:
                    continue
                held_long_enough = now - st.pending_since >= rule.for_s
                cooled = st.fired_at is None or now - st.fired_at >= rule.cooldown_s
                if held_long_enough and cooled:
                    st.alert_id = uuid.uuid4().hex
                    st.fired_at, st.fired_wall = now, wall
                    st.summary = summary
                    out.append(
                        Transition("alert.fired", self._payload(rule, key, st, "firing", summary, wall))
                    )
        for sk, st in list(self._states.items()):
            rule, key = sk
            if sk in live_keys:
                continue
            if st.alert_id is not None:
                summary = f"{rule_name(rule)} resolved" + (f" ({key})" if key else "")
                payload = self._payload(rule, key, st, "resolved", summary, wall)
                payload["resolved_at"] = wall
                payload["duration_s"] = round(wall - (st.fired_wall or wall), 3)
                out.append(Transition("alert.resolved", payload))
                st.alert_id = None
            st.pending_since = st.pending_wall = None
            if rule not in rules or st.fired_at is None or now - st.fired_at >= rule.cooldown_s:
                del self._states[sk]  # nothing left to remember (no cool-down running)
        self._expire_limits(now, rules)
        return out

    def _payload(
        self, rule: AlertRule, key: str | None, st: _RuleState, status: str, summary: str, wall: float
    ) -> dict[str, Any]:
        return {
            "id": st.alert_id,
            "status": status,
            "rule": rule_name(rule),
            "kind": rule.kind,
            "key": key,
            "summary": summary,
            "details": st.details,
            "since": st.pending_wall,
            "fired_at": st.fired_wall,
            "ts": wall,
            "config": unstructure(rule),
        }

    def fired_payloads(self, wall: float) -> list[Transition]:
        """The `alert.fired` transitions of the alerts firing now, as they fired (a cluster's node
        that takes over the alerts publishes those it holds that the one before it did not)."""
        return [
            Transition("alert.fired", self._payload(rule, key, st, "firing", st.summary, wall))
            for (rule, key), st in self._states.items()
            if st.alert_id is not None
        ]

    def firing(self) -> list[dict[str, Any]]:
        """The alerts firing now (rule, key, id, since)."""
        return [
            {
                "id": st.alert_id,
                "rule": rule_name(rule),
                "kind": rule.kind,
                "key": key,
                "fired_at": st.fired_wall,
            }
            for (rule, key), st in self._states.items()
            if st.alert_id is not None
        ]


# ---- the actor ---------------------------------------------------------------------------------


def _backoff_delay(cfg: BackoffConfig, n: int) -> float:
    return float(min(cfg.max_s, cfg.min_s * cfg.factor**n) * (1.0 + cfg.jitter * random.random()))


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class AlertActor:
    """Runs the rule engine on the swarm's events and delivers what it decides.

    `config_getter` is read on every evaluation, so rules and webhooks are hot-configurable.
    `metrics_getter` (optional) returns the MetricsActor: when this actor's own subscription had to
    drop events (it was too slow), the engine's worker view is rebuilt from the MetricsActor's
    `workers` mapping (id -> (state, model)) on the next tick instead of staying wrong.
    `leads` (a cluster): whether this node is the one that fires the cluster's alerts now; the
    others evaluate the same rules (their `firing()` shows the same) but publish and deliver only
    NODE_LOCAL_KINDS, so one crash storm is one page, not one a node.
    """

    def __init__(
        self,
        config_getter: Callable[[], SwarmConfig],
        bus: EventBus,
        metrics_getter: Callable[[], Any] | None = None,
        *,
        leads: Callable[[], bool] | None = None,
        retry_backoff: BackoffConfig = DEFAULT_RETRY_BACKOFF,
        tick_s: float = 1.0,
        max_in_flight: int = 256,
        subscription_size: int = 10_000,
    ) -> None:
        self._config_getter = config_getter
        self._bus = bus
        self._metrics_getter = metrics_getter
        self._leads = leads
        self._published: set[str] = set()  # (a cluster) ids of the alerts this node fired, not resolved
        self._led = True  # whether it led at the last evaluation
        self._backoff = retry_backoff
        self._tick_s = tick_s
        self._max_in_flight = max_in_flight
        self._sub_size = subscription_size
        self.engine = RuleEngine()
        self._client: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self._sub: Subscription | None = None
        self._in_flight = 0
        self.stats: dict[str, int] = {
            "fired": 0,
            "resolved": 0,
            "delivered": 0,
            "failed": 0,
            "retries": 0,
            "left_to_another_node": 0,
        }
        self.recent: deque[dict[str, Any]] = deque(maxlen=100)  # last alert payloads, newest last

    # -- public

    def firing(self) -> list[dict[str, Any]]:
        return self.engine.firing()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # loopback receivers never go through an environment proxy
        mounts: dict[str, httpx.AsyncBaseTransport | None] = {
            "all://127.0.0.1": None,
            "all://localhost": None,
            "all://[::1]": None,
        }
        async with (
            httpx.AsyncClient(headers={"User-Agent": USER_AGENT}, mounts=mounts) as client,
            trio.open_nursery() as nursery,
        ):
            self._client, self._nursery = client, nursery
            sub = self._sub = self._bus.subscribe(WATCHED_TOPICS, size=self._sub_size, outage=True)
            try:
                nursery.start_soon(self._tick_loop)
                task_status.started()
                with sub:
                    async for event in sub:
                        self.engine.observe(event, trio.current_time())
                        self._evaluate()
            finally:
                self._client = self._nursery = self._sub = None
                nursery.cancel_scope.cancel()

    async def send_test(self) -> dict[str, Any]:
        """Publish `alert.test` and POST it once (no retries) to every webhook; report each result."""
        if self._client is None:
            raise Conflict("alerts are not running")
        wall = time.time()
        payload: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "status": "test",
            "rule": "test",
            "kind": "test",
            "key": None,
            "summary": "Test alert from Shoal: webhook delivery works",
            "details": {},
            "since": wall,
            "fired_at": wall,
            "ts": wall,
        }
        self._bus.publish("alert.test", payload)
        hooks = self._config_getter().alerts.webhooks
        results: list[dict[str, Any]] = [{} for _ in hooks]

        async def one(i: int, hook: WebhookConfig) -> None:
            results[i] = await self._deliver(i, hook, "alert.test", payload, retries=0)

        async with trio.open_nursery() as nursery:
            for i, hook in enumerate(hooks):
                nursery.start_soon(one, i, hook)
        ok = sum(1 for r in results if r["ok"])
        return {"id": payload["id"], "webhooks": results, "delivered": ok, "failed": len(results) - ok}

    # -- internals

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(self._tick_s)
            sub = self._sub
            if sub is not None and sub.take_dropped()[0]:
                log.warning("alerts: events were dropped; rebuilding the worker view from the metrics")
                self._resync()
            self._evaluate()

    def _resync(self) -> None:
        if self._metrics_getter is None:
            return
        try:
            workers = getattr(self._metrics_getter(), "workers", None)
        except Exception:  # the metrics are a repair source here; the events stay authoritative
            log.debug("alerts: metrics unavailable for a resync", exc_info=True)
            return
        if isinstance(workers, Mapping):
            self.engine.sync_workers(
                {str(k): str(v[0] if isinstance(v, tuple | list) else v) for k, v in workers.items()}
            )

    def _evaluate(self) -> None:
        config = self._config_getter()
        transitions = self.engine.evaluate(
            config.alerts.rules, trio.current_time(), time.time(), config.scaling.max_workers
        )
        if self._leads is not None:
            transitions = self._cluster_share(transitions, self._leads())
        for tr in transitions:
            self.stats["fired" if tr.topic == "alert.fired" else "resolved"] += 1
            self.recent.append({"topic": tr.topic, **tr.payload})
            log.warning("%s %s: %s", tr.topic, tr.payload["rule"], tr.payload["summary"])
            self._bus.publish(tr.topic, tr.payload)
            self._dispatch(tr.topic, tr.payload, config.alerts.webhooks)

    def _cluster_share(self, transitions: list[Transition], leads: bool) -> list[Transition]:
        """This node's part of a cluster's transitions: the leading node fires, whoever fired an
        alert resolves it, a node that takes over also fires what it holds that no node fired (the
        leading node is gone), and NODE_LOCAL_KINDS are every node's own."""
        took_over, self._led = leads and not self._led, leads
        if took_over:
            new = {t.payload["id"] for t in transitions}
            held = [
                t
                for t in self.engine.fired_payloads(time.time())
                if t.payload["kind"] not in NODE_LOCAL_KINDS
                and t.payload["id"] not in self._published
                and t.payload["id"] not in new
            ]
            transitions = held + transitions
        mine: list[Transition] = []
        for tr in transitions:
            alert_id, fired = tr.payload["id"], tr.topic == "alert.fired"
            if tr.payload["kind"] in NODE_LOCAL_KINDS:
                mine.append(tr)
            elif not (leads if fired else alert_id in self._published):
                self.stats["left_to_another_node"] += 1
            else:
                (self._published.add if fired else self._published.discard)(alert_id)
                mine.append(tr)
        return mine

    def _dispatch(self, topic: str, payload: dict[str, Any], hooks: tuple[WebhookConfig, ...]) -> None:
        nursery = self._nursery
        if nursery is None:
            return
        for i, hook in enumerate(hooks):
            if self._in_flight >= self._max_in_flight:
                self._report_failure(i, hook, payload, 0, "too many deliveries in flight; dropped")
                continue
            self._in_flight += 1
            nursery.start_soon(self._deliver_counted, i, hook, topic, payload)

    async def _deliver_counted(
        self, index: int, hook: WebhookConfig, topic: str, payload: dict[str, Any]
    ) -> None:
        try:
            await self._deliver(index, hook, topic, payload, retries=hook.max_retries)
        finally:
            self._in_flight -= 1

    async def _deliver(
        self, index: int, hook: WebhookConfig, topic: str, payload: dict[str, Any], *, retries: int
    ) -> dict[str, Any]:
        """POST one alert to one webhook, retrying transient failures; never raises."""
        target = redact_url(hook.url)
        result: dict[str, Any] = {"webhook": index, "url": target, "ok": False, "attempts": 0}
        scheme = urlsplit(hook.url).scheme if "://" in hook.url else ""
        if scheme not in ("http", "https"):
            result["error"] = f"alerts.webhooks[{index}].url: must be an http(s) URL"
            self._report_failure(index, hook, payload, 0, result["error"])
            return result
        client = self._client
        if client is None:
            result["error"] = "alerts are not running"
            return result
        body = json.dumps(
            {"type": topic, "alert": payload, "sent_at": time.time()}, separators=(",", ":"), default=str
        ).encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: topic,
            DELIVERY_HEADER: uuid.uuid4().hex,
        }
        if hook.secret:
            headers[SIGNATURE_HEADER] = sign(hook.secret, body)
        error = "not attempted"
        for attempt in range(retries + 1):
            result["attempts"] = attempt + 1
            wait: float | None = None
            try:
                with trio.fail_after(hook.timeout_s):
                    response = await client.post(
                        hook.url, content=body, headers=headers, timeout=hook.timeout_s
                    )
            except trio.TooSlowError:
                error = f"timed out after {hook.timeout_s:g} s"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            else:
                result["status"] = response.status_code
                if 200 <= response.status_code < 300:
                    result["ok"] = True
                    result.pop("error", None)
                    self.stats["delivered"] += 1
                    return result
                error = f"HTTP {response.status_code}"
                if response.status_code < 500 and response.status_code not in (408, 425, 429):
                    break  # the receiver refused this request; sending it again will not help
                wait = _retry_after(response)
            if attempt < retries:
                self.stats["retries"] += 1
                delay = _backoff_delay(self._backoff, attempt)
                if wait is not None:
                    delay = min(max(delay, wait), self._backoff.max_s)
                log.info("alerts: delivery to %s failed (%s); retry in %.2f s", target, error, delay)
                await trio.sleep(delay)
        result["error"] = error
        self._report_failure(index, hook, payload, result["attempts"], error)
        return result

    def _report_failure(
        self, index: int, hook: WebhookConfig, payload: dict[str, Any], attempts: int, error: str
    ) -> None:
        self.stats["failed"] += 1
        log.error("alerts: delivery of %s to %s failed: %s", payload.get("rule"), redact_url(hook.url), error)
        self._bus.publish(
            "alert.delivery_failed",
            {
                "alert_id": payload.get("id"),
                "rule": payload.get("rule"),
                "webhook": index,
                "url": redact_url(hook.url),
                "attempts": attempts,
                "error": error,
            },
        )
