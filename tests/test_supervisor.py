"""The OTP-style supervisor: restart types, strategies, intensity, shutdown order and timeouts, backoff."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import pytest
import trio

from shoal.protocols.config import BackoffConfig
from shoal.protocols.errors import Conflict, NotFound, ValidationError
from shoal.runtime.actor import ActorGone
from shoal.runtime.backoff import backoff_delay
from shoal.runtime.eventbus import EventBus
from shoal.runtime.supervisor import (
    ChildKilled,
    ChildSpec,
    ChildStartFailed,
    Supervisor,
    SupervisorEscalation,
    SupervisorEvent,
    WhichChildren,
)


class Boom(Exception):
    pass


class Recorder:
    """An `on_event` callback that keeps every event and wakes whoever waits for one."""

    def __init__(self) -> None:
        self.events: list[SupervisorEvent] = []
        self._changed = trio.Event()

    def __call__(self, event: SupervisorEvent) -> None:
        self.events.append(event)
        self._changed.set()
        self._changed = trio.Event()

    def kinds(self, child_id: str | None = None) -> list[str]:
        return [e.kind for e in self.events if child_id is None or e.child_id == child_id]

    def count(self, kind: str) -> int:
        return self.kinds().count(kind)

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            await self._changed.wait()


class Kid:
    """A child whose every incarnation starts, then waits for an order: "return" or "raise"."""

    def __init__(self, name: str, log: list[tuple[str, str]]) -> None:
        self.name = name
        self.log = log
        self.starts = 0
        self._orders: trio.MemorySendChannel[str] | None = None

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        self.starts += 1
        send, recv = trio.open_memory_channel[str](1)
        self._orders = send
        self.log.append(("start", self.name))
        task_status.started(f"{self.name}#{self.starts}")
        try:
            order = await recv.receive()
        except trio.Cancelled:
            self.log.append(("stop", self.name))
            raise
        if order == "raise":
            raise Boom(f"{self.name} crash {self.starts}")

    def order(self, what: str) -> None:
        assert self._orders is not None
        self._orders.send_nowait(what)


def kids(names: str, log: list[tuple[str, str]]) -> dict[str, Kid]:
    return {n: Kid(n, log) for n in names}


# -- start and stop order --------------------------------------------------------------------


async def test_children_start_in_order_and_stop_in_reverse() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("abc", log)
    sup = Supervisor("s", [ChildSpec(n, k.run) for n, k in ks.items()])
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(sup.run)
            assert log == [("start", "a"), ("start", "b"), ("start", "c")]
            infos = await sup.which_children()
            assert [(i.id, i.status, i.value, i.restarts) for i in infos] == [
                ("a", "running", "a#1", 0),
                ("b", "running", "b#1", 0),
                ("c", "running", "c#1", 0),
            ]
            await sup.stop()
            assert log[3:] == [("stop", "c"), ("stop", "b"), ("stop", "a")]
    with pytest.raises(ActorGone):
        await address.call(WhichChildren())


async def test_cancelling_the_parent_still_stops_children_in_reverse_order() -> None:
    """Children are shielded from the parent's cancellation so the supervisor can order it."""
    for _ in range(5):  # trio schedules simultaneous wake-ups in random order; make that count
        log: list[tuple[str, str]] = []
        ks = kids("abcd", log)
        sup = Supervisor("s", [ChildSpec(n, k.run) for n, k in ks.items()])
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                await nursery.start(sup.run)
                nursery.cancel_scope.cancel()
        assert log[4:] == [("stop", "d"), ("stop", "c"), ("stop", "b"), ("stop", "a")]


async def test_shutdown_gives_each_child_its_timeout_then_abandons_it(autojump_clock: object) -> None:
    at: dict[str, float] = {}

    async def polite(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await trio.sleep_forever()
        finally:
            at["polite"] = trio.current_time()

    def cleanup_taking(name: str, seconds: float) -> Callable[..., Awaitable[None]]:
        async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            task_status.started()
            try:
                await trio.sleep_forever()
            finally:
                with trio.CancelScope(shield=True):
                    await trio.sleep(seconds)
                at[name] = trio.current_time()

        return child

    rec = Recorder()
    sup = Supervisor(
        "s",
        [
            ChildSpec("polite", polite),
            ChildSpec("slow", cleanup_taking("slow", 3.0), shutdown_s=5.0),
            ChildSpec("stubborn", cleanup_taking("stubborn", 100.0), shutdown_s=2.0),
        ],
        on_event=rec,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        t0 = trio.current_time()
        await sup.stop()
        stop_returned = trio.current_time() - t0
    # reverse order: stubborn is given 2 s and abandoned; slow is cancelled at +2 and takes 3 s;
    # only then is polite cancelled. run() itself returns once the stubborn child has ended.
    assert stop_returned == pytest.approx(5.0)
    assert at["slow"] - t0 == pytest.approx(5.0)
    assert at["polite"] - t0 == pytest.approx(5.0)
    assert at["stubborn"] - t0 == pytest.approx(100.0)
    assert trio.current_time() - t0 == pytest.approx(100.0)
    assert sup.abandoned == ["stubborn"]
    tail = [(e.kind, e.child_id) for e in rec.events if e.kind in ("stopped", "shutdown_timeout")]
    assert tail == [("shutdown_timeout", "stubborn"), ("stopped", "slow"), ("stopped", "polite")]


async def test_cancelled_while_a_child_is_starting_does_not_hang(autojump_clock: object) -> None:
    """The child reports started only after the parent was cancelled: it must not end up shielded."""
    log: list[tuple[str, str]] = []
    first = Kid("a", log)
    reached_started = False

    async def slow_start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal reached_started
        with trio.CancelScope(shield=True):
            await trio.sleep(10.0)
        reached_started = True
        task_status.started()
        await trio.sleep(1000.0)  # were it shielded now, run() would end only at t=1010

    sup = Supervisor("s", [ChildSpec("a", first.run), ChildSpec("slow", slow_start)])
    with trio.move_on_after(1.0):
        await sup.run()
    assert trio.current_time() == pytest.approx(10.0)
    assert reached_started
    assert log == [("start", "a"), ("stop", "a")]


# -- restart types and strategies ------------------------------------------------------------


@pytest.mark.parametrize(
    ("restart", "order", "restarted"),
    [
        ("permanent", "return", True),
        ("permanent", "raise", True),
        ("transient", "return", False),
        ("transient", "raise", True),
        ("temporary", "return", False),
        ("temporary", "raise", False),
    ],
)
async def test_restart_type_decides_whether_an_exit_is_restarted(
    restart: str, order: str, restarted: bool
) -> None:
    log: list[tuple[str, str]] = []
    kid = Kid("k", log)
    rec = Recorder()
    sup = Supervisor("s", [ChildSpec("k", kid.run, restart=restart)], on_event=rec)  # type: ignore[arg-type]
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            kid.order(order)
            await rec.until(lambda: "exited" in rec.kinds())
            children = await sup.which_children()  # answered after the exit was fully handled
            await sup.stop()
    exited = next(e for e in rec.events if e.kind == "exited")
    if order == "raise":
        assert isinstance(exited.error, Boom)
    else:
        assert exited.error is None
    if restarted:
        assert kid.starts == 2
        assert [(c.id, c.value, c.restarts) for c in children] == [("k", "k#2", 1)]
        assert sup.restarts == 1
    else:
        assert kid.starts == 1
        assert children == []
        assert "restarting" not in rec.kinds()


async def test_one_for_one_restarts_only_the_crashed_child() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("abc", log)
    rec = Recorder()
    sup = Supervisor("s", [ChildSpec(n, k.run) for n, k in ks.items()], on_event=rec)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ks["b"].order("raise")
            await rec.until(lambda: rec.count("started") == 4)
            assert log[3:] == [("start", "b")]
            assert [k.starts for k in ks.values()] == [1, 2, 1]
            await sup.stop()


async def test_one_for_all_stops_the_others_in_reverse_and_restarts_all_in_order() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("abc", log)
    rec = Recorder()
    specs = [ChildSpec(n, k.run) for n, k in ks.items()]
    sup = Supervisor("s", specs, strategy="one_for_all", on_event=rec)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ks["b"].order("raise")
            await rec.until(lambda: rec.count("started") == 6)
            assert log[3:] == [
                ("stop", "c"),
                ("stop", "a"),
                ("start", "a"),
                ("start", "b"),
                ("start", "c"),
            ]
            values = [c.value for c in await sup.which_children()]
            assert values == ["a#2", "b#2", "c#2"]
            await sup.stop()


async def test_rest_for_one_restarts_the_crashed_child_and_those_started_after_it() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("abcd", log)
    rec = Recorder()
    specs = [ChildSpec(n, k.run) for n, k in ks.items()]
    sup = Supervisor("s", specs, strategy="rest_for_one", on_event=rec)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ks["b"].order("raise")
            await rec.until(lambda: rec.count("started") == 7)
            # a (started before b) keeps running; d and c stop in reverse, then b, c, d start in order
            assert log[4:] == [
                ("stop", "d"),
                ("stop", "c"),
                ("start", "b"),
                ("start", "c"),
                ("start", "d"),
            ]
            values = [c.value for c in await sup.which_children()]
            assert values == ["a#1", "b#2", "c#2", "d#2"]
            ks["d"].order("raise")  # the last child: nothing after it to restart
            await rec.until(lambda: rec.count("started") == 8)
            assert log[9:] == [("start", "d")]
            await sup.stop()


async def test_kill_child_is_a_crash_its_policy_acts_on_and_which_children_tells_it() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("ab", log)
    rec = Recorder()
    sup = Supervisor("s", [ChildSpec(n, k.run) for n, k in ks.items()], on_event=rec, max_restarts=1)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await sup.kill_child("b", "injected by the test")
            await rec.until(lambda: rec.count("started") == 3)
            exited = [e for e in rec.events if e.kind == "exited"]
            assert isinstance(exited[0].error, ChildKilled)
            assert exited[0].error.reason == "injected by the test"
            info = {c.id: c for c in await sup.which_children()}
            assert info["b"].restarts == 1 and info["b"].last_error is not None
            assert "injected by the test" in info["b"].last_error and info["b"].last_crash_at is not None
            assert info["a"].restarts == 0 and info["a"].last_error is None
            with pytest.raises(NotFound):
                await sup.kill_child("nope")
            await sup.stop()
    # a second kill within the period exceeds max_restarts=1: escalation names the killed child
    sup2 = Supervisor("s2", [ChildSpec("a", kids("a", [])["a"].run)], max_restarts=0)
    escalation = pytest.RaisesExc(
        SupervisorEscalation, check=lambda e: e.child_id == "a" and isinstance(e.error, ChildKilled)
    )
    with trio.fail_after(5), pytest.RaisesGroup(escalation):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup2.run)
            await sup2.kill_child("a", "gone")
            await trio.sleep_forever()


async def test_one_for_all_drops_temporary_siblings_and_ignores_unrestarted_exits() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("atbx", log)
    rec = Recorder()
    specs = [
        ChildSpec("a", ks["a"].run),
        ChildSpec("t", ks["t"].run, restart="temporary"),
        ChildSpec("b", ks["b"].run),
        ChildSpec("x", ks["x"].run, restart="transient"),
    ]
    sup = Supervisor("s", specs, strategy="one_for_all", on_event=rec)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            ks["x"].order("return")  # transient, normal exit: no restart, siblings untouched
            await rec.until(lambda: "exited" in rec.kinds())
            assert [c.id for c in await sup.which_children()] == ["a", "t", "b"]
            assert log[4:] == []
            ks["a"].order("raise")
            await rec.until(lambda: rec.count("started") == 6)
            assert log[4:] == [
                ("stop", "b"),
                ("stop", "t"),
                ("start", "a"),
                ("start", "b"),
            ]
            assert [c.id for c in await sup.which_children()] == ["a", "b"]
            assert ks["t"].starts == 1
            await sup.stop()


# -- restart intensity and escalation --------------------------------------------------------


async def crash_after_start(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
    task_status.started()
    raise Boom("crash")


async def test_intensity_exceeded_stops_everyone_and_escalates_with_history() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("ab", log)
    crashes = 0

    async def crasher(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal crashes
        task_status.started()
        crashes += 1
        raise Boom(f"crash {crashes}")

    specs = [ChildSpec("a", ks["a"].run), ChildSpec("bad", crasher), ChildSpec("b", ks["b"].run)]
    sup = Supervisor("core", specs, max_restarts=2, period_s=5.0)
    with trio.fail_after(5), pytest.raises(SupervisorEscalation) as err:
        await sup.run()
    esc = err.value
    assert esc.supervisor == "core"
    assert esc.child_id == "bad"
    assert [r.child_id for r in esc.history] == ["bad", "bad", "bad"]
    assert [str(r.error) for r in esc.history] == ["crash 1", "crash 2", "crash 3"]
    assert esc.__cause__ is esc.history[-1].error
    assert "more than 2 restarts within 5 s" in str(esc)
    assert crashes == 3  # two restarts allowed, the third exit escalates instead
    assert log == [("start", "a"), ("start", "b"), ("stop", "b"), ("stop", "a")]


async def test_escalation_lands_in_the_parent_nursery() -> None:
    sup = Supervisor("inner", [ChildSpec("bad", crash_after_start)], max_restarts=1, period_s=5.0)
    with (
        trio.fail_after(5),
        pytest.RaisesGroup(pytest.RaisesExc(SupervisorEscalation, check=lambda e: e.child_id == "bad")),
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            await trio.sleep_forever()


async def test_restarts_spread_beyond_the_period_never_escalate(autojump_clock: object) -> None:
    async def crash_after_6s(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(6.0)
        raise Boom("late crash")

    rec = Recorder()
    sup = Supervisor("s", [ChildSpec("k", crash_after_6s)], max_restarts=1, period_s=5.0, on_event=rec)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await rec.until(lambda: rec.count("started") == 6)
        await sup.stop()
    assert sup.restarts == 5
    assert "escalated" not in rec.kinds()


async def test_a_restart_that_fails_to_start_counts_as_a_crash() -> None:
    starts = 0

    async def flaky(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        nonlocal starts
        starts += 1
        if starts > 1:
            raise Boom(f"cannot start {starts}")
        task_status.started()
        raise Boom("first run crashed")

    sup = Supervisor("s", [ChildSpec("f", flaky)], max_restarts=2, period_s=5.0)
    with trio.fail_after(5), pytest.raises(SupervisorEscalation) as err:
        await sup.run()
    errors = [r.error for r in err.value.history]
    assert str(errors[0]) == "first run crashed"
    assert all(isinstance(e, ChildStartFailed) and e.child_id == "f" for e in errors[1:])
    assert isinstance(errors[-1], ChildStartFailed)
    assert str(errors[-1].error) == "cannot start 3"
    assert starts == 3


# -- backoff between restarts ----------------------------------------------------------------


async def test_backoff_delays_between_restarts_are_exact_with_seeded_jitter(autojump_clock: object) -> None:
    cfg = BackoffConfig(min_s=1.0, max_s=8.0, factor=2.0, jitter=0.5, reset_after_s=60.0)
    starts: list[float] = []

    async def crasher(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        starts.append(trio.current_time())
        task_status.started()
        raise Boom("again")

    rec = Recorder()
    sup = Supervisor(
        "s",
        [ChildSpec("c", crasher, backoff=cfg)],
        max_restarts=100,
        period_s=1000.0,
        rng=random.Random(99),
        on_event=rec,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await rec.until(lambda: len(starts) == 6)
        await sup.stop()
    draws = random.Random(99)
    expected = [min(8.0, 2.0**n) * (1 + 0.5 * draws.random()) for n in range(6)]
    assert [e.delay for e in rec.events if e.kind == "restarting"] == expected[: rec.count("restarting")]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert gaps == pytest.approx(expected[:5], abs=1e-9)


async def test_backoff_resets_after_stable_uptime(autojump_clock: object) -> None:
    cfg = BackoffConfig(min_s=1.0, max_s=100.0, factor=2.0, jitter=0.0, reset_after_s=60.0)
    uptimes = iter([0.0, 0.0, 0.0, 61.0, 0.0])

    async def child(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await trio.sleep(next(uptimes, 1000.0))
        raise Boom("down")

    rec = Recorder()
    sup = Supervisor("s", [ChildSpec("c", child, backoff=cfg)], max_restarts=100, period_s=10.0, on_event=rec)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await rec.until(lambda: rec.count("restarting") == 5)
        await sup.stop()
    delays = [e.delay for e in rec.events if e.kind == "restarting"]
    assert delays == [1.0, 2.0, 4.0, backoff_delay(cfg, 0), 2.0]  # up 61 s: back to the first delay


async def test_a_pending_restart_does_not_delay_shutdown(autojump_clock: object) -> None:
    cfg = BackoffConfig(min_s=1000.0, max_s=1000.0, jitter=0.0)
    rec = Recorder()
    sup = Supervisor("s", [ChildSpec("c", crash_after_start, backoff=cfg)], on_event=rec)
    async with trio.open_nursery() as nursery:
        await nursery.start(sup.run)
        await rec.until(lambda: "restarting" in rec.kinds())
        t0 = trio.current_time()
        assert [c.status for c in await sup.which_children()] == ["waiting"]
        await sup.stop()
    assert trio.current_time() == t0
    assert rec.count("started") == 1


# -- dynamic children, start failures, bad input ---------------------------------------------


async def test_start_child_and_terminate_child_at_run_time() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("ab", log)

    async def refuses(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise Boom("no")

    async def never_ready(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        return

    sup = Supervisor("dyn")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup.run)
            assert await sup.start_child(ChildSpec("a", ks["a"].run)) == "a#1"
            assert await sup.start_child(ChildSpec("b", ks["b"].run)) == "b#1"
            with pytest.raises(Conflict, match="'a'"):
                await sup.start_child(ChildSpec("a", ks["a"].run))
            with pytest.raises(ChildStartFailed) as err:
                await sup.start_child(ChildSpec("r", refuses))
            assert err.value.child_id == "r"
            assert isinstance(err.value.__cause__, Boom)
            with pytest.raises(ChildStartFailed, match="without calling"):
                await sup.start_child(ChildSpec("n", never_ready))
            await sup.terminate_child("a")
            assert log == [("start", "a"), ("start", "b"), ("stop", "a")]
            assert [c.id for c in await sup.which_children()] == ["b"]
            with pytest.raises(NotFound):
                await sup.terminate_child("a")
            await sup.stop()
    assert log[-1] == ("stop", "b")
    assert ks["a"].starts == 1  # terminated, not restarted


async def test_a_child_failing_its_first_start_fails_run_and_stops_the_started_ones() -> None:
    log: list[tuple[str, str]] = []
    ks = kids("ac", log)

    async def refuses(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        raise Boom("bad config")

    specs = [ChildSpec("a", ks["a"].run), ChildSpec("bad", refuses), ChildSpec("c", ks["c"].run)]
    sup = Supervisor("s", specs)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            with pytest.raises(ChildStartFailed) as err:
                await nursery.start(sup.run)
    assert err.value.child_id == "bad"
    assert log == [("start", "a"), ("stop", "a")]
    assert ks["c"].starts == 0


def test_bad_specs_and_settings_name_the_field() -> None:
    async def noop(*, task_status: object = None) -> None:
        pass

    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: ChildSpec("", noop), "child_spec.id"),
        (lambda: ChildSpec("x", 42), "child_spec.start"),  # type: ignore[arg-type]
        (lambda: ChildSpec("x", noop, restart="sometimes"), "child_spec.restart"),  # type: ignore[arg-type]
        (lambda: ChildSpec("x", noop, shutdown_s=-1), "child_spec.shutdown_s"),
        (lambda: ChildSpec("x", noop, backoff={"min_s": 1}), "child_spec.backoff"),  # type: ignore[arg-type]
        (lambda: Supervisor("s", strategy="simple_one_for_one"), "strategy"),  # type: ignore[arg-type]
        (lambda: Supervisor("s", max_restarts=-1), "max_restarts"),
        (lambda: Supervisor("s", period_s=0), "period_s"),
    ]
    for make, field in cases:
        with pytest.raises(ValidationError) as err:
            make()
        assert err.value.field == field
    with pytest.raises(Conflict):
        Supervisor("s", [ChildSpec("x", noop), ChildSpec("x", noop)])


async def test_unknown_messages_are_refused_and_the_supervisor_goes_on() -> None:
    sup = Supervisor("s")
    with pytest.raises(ActorGone):
        await sup.which_children()  # not running yet
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(sup.run)
            with pytest.raises(ValidationError) as err:
                await address.call("hello")
            assert err.value.field == "message"
            assert await sup.which_children() == []
            await sup.stop()
    with pytest.raises(Conflict):
        await sup.run()


async def test_two_supervisors_with_two_buses_do_not_see_each_other() -> None:
    log: list[tuple[str, str]] = []
    one, two = Kid("w", log), Kid("w", log)  # same child id in both
    bus1, bus2 = EventBus(), EventBus()
    sub1, sub2 = bus1.subscribe("supervisor.*"), bus2.subscribe("supervisor.*")
    sup1 = Supervisor("one", [ChildSpec("w", one.run)], bus=bus1)
    sup2 = Supervisor("two", [ChildSpec("w", two.run)], bus=bus2)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(sup1.run)
            await nursery.start(sup2.run)
            one.order("raise")
            seen = []
            async for event in sub1:
                seen.append(event.topic)
                if seen.count("supervisor.started") == 2:
                    break
            assert seen == [
                "supervisor.started",
                "supervisor.exited",
                "supervisor.restarting",
                "supervisor.started",
            ]
            assert [c.value for c in await sup2.which_children()] == ["w#1"]
            await sup1.stop()
            await sup2.stop()
    events2 = []
    while True:
        try:
            events2.append(sub2.receive_nowait())
        except trio.WouldBlock:
            break
    assert [e.topic for e in events2] == ["supervisor.started", "supervisor.stopped"]
    assert {e.data["supervisor"] for e in events2} == {"two"}
    assert (one.starts, two.starts) == (2, 1)
    assert bus1.last_seq == 5 and bus2.last_seq == 2
