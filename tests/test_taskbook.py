"""The task state machine and selection (pure: explicit times, no I/O)."""

from __future__ import annotations

import random

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.actors.taskbook import TaskBook, WorkerView, backoff_delay
from shoal.protocols.config import BackoffConfig, ModelsConfig, QueueConfig
from shoal.protocols.errors import Conflict, NotFound, ValidationError
from shoal.protocols.tasks import Outcome, TaskSpec, TaskState

T0 = 1_000_000.0


def book(**queue: object) -> TaskBook:
    models = queue.pop("models", None)
    cfg = QueueConfig(**queue)  # type: ignore[arg-type]
    return TaskBook(cfg, models if isinstance(models, ModelsConfig) else ModelsConfig(), rng=random.Random(1))


def spec(tid: str, **kw: object) -> TaskSpec:
    return TaskSpec(prompt=kw.pop("prompt", f"do {tid}"), id=tid, **kw)  # type: ignore[arg-type]


def worker(
    wid: str = "w1",
    model: str | None = "sonnet",
    caps: frozenset[str] | None = None,
    history: tuple[str, ...] = (),
    size: int = 10,
) -> WorkerView:
    return WorkerView(wid, model, caps, history, size)


def run_one(b: TaskBook, w: WorkerView, now: float = T0) -> str:
    tid = b.select(w)
    assert tid is not None
    b.claim(tid, w.id, w.model, now)
    return tid


# ---- submit and validation -----------------------------------------------------------------


def test_submit_states_and_generated_ids() -> None:
    b = book()
    a, c, gen = b.submit([spec("a"), spec("c", deps=("a",)), TaskSpec("no id")], T0)
    assert a.state is TaskState.READY
    assert c.state is TaskState.BLOCKED and c.reason is not None and "'a'" in c.reason
    assert gen.id and len(gen.id) == 32 and gen.state is TaskState.READY
    assert b.counts()[TaskState.READY] == 2 and len(b) == 3
    changes, events, ready = b.drain()
    assert [c.kind for c in changes if c.kind == "submit"] == ["submit"] * 3
    assert [t for t, _ in events].count("task.submitted") == 3
    assert set(ready) == {"a", gen.id}
    b.check()


def test_idempotent_submit_same_content_returns_existing() -> None:
    b = book()
    first = b.submit([spec("a", priority=3, metadata={"k": 1})], T0)[0]
    b.drain()
    again = b.submit([spec("a", priority=3, metadata={"k": 1})], T0 + 5)[0]
    assert again.created == first.created and len(b) == 1
    changes, events, _ = b.drain()
    assert changes == [] and events == []  # nothing new was recorded


def test_duplicate_id_with_different_content_is_a_conflict_naming_the_id() -> None:
    b = book()
    b.submit([spec("a", prompt="one")], T0)
    with pytest.raises(Conflict, match=r"'a'.*differs in: prompt"):
        b.submit([spec("a", prompt="two")], T0)
    with pytest.raises(Conflict, match="priority"):
        b.submit([spec("a", prompt="one", priority=9)], T0)
    assert b.get("a").prompt == "one"


def test_batch_is_atomic() -> None:
    b = book()
    with pytest.raises(ValidationError) as err:
        b.submit([spec("ok1"), spec("bad", priority=-1), spec("ok2")], T0)
    assert err.value.field == "tasks[1].priority"
    assert len(b) == 0 and b.drain() == ([], [], [])


@pytest.mark.parametrize(
    ("kw", "field", "text"),
    [
        ({"priority": -1}, "priority", "between 0"),
        ({"priority": 1.5}, "priority", "integer"),
        ({"priority": "3"}, "priority", "integer"),
        ({"priority": True}, "priority", "integer"),
        ({"model": "gpt-9"}, "model", "unknown model"),
        ({"deps": ("nope",)}, "deps", "unknown dependency id"),
        ({"deps": ("x",)}, "deps", "depends on itself"),
        ({"max_attempts": 0}, "max_attempts", "between 1"),
        ({"timeout_s": -2}, "timeout_s", "positive"),
        ({"timeout_s": float("nan")}, "timeout_s", "positive"),
        ({"metadata": {"k": object()}}, "metadata", "JSON"),
        ({"category": ""}, "category", "non-empty"),
        ({"prompt": ""}, "prompt", "empty"),
    ],
)
def test_bad_input_names_the_field(kw: dict[str, object], field: str, text: str) -> None:
    b = book()
    with pytest.raises(ValidationError, match=text) as err:
        b.submit([spec("x", **kw)], T0)
    assert err.value.field == field
    assert len(b) == 0


def test_bad_ids_and_non_specs() -> None:
    b = book()
    for bad in ("", "a\nb", "x" * 201):
        with pytest.raises(ValidationError) as err:
            b.submit([TaskSpec("p", id=bad)], T0)
        assert err.value.field == "id"
    with pytest.raises(ValidationError, match="task spec"):
        b.submit([{"prompt": "dict"}], T0)


def test_oversized_prompt_uses_the_configured_limit() -> None:
    b = book(max_prompt_bytes=10)
    b.submit([spec("fits", prompt="x" * 10)], T0)
    with pytest.raises(ValidationError, match=r"11 bytes, over the limit of 10 \(queue.max_prompt_bytes\)"):
        b.submit([spec("big", prompt="é" * 5 + "x")], T0)  # 11 bytes in UTF-8


def test_dependency_cycles_are_refused() -> None:
    b = book()
    with pytest.raises(ValidationError, match=r"dependency cycle \(-> means depends on\): a -> c -> b -> a"):
        b.submit([spec("a", deps=("c",)), spec("b", deps=("a",)), spec("c", deps=("b",))], T0)
    assert len(b) == 0
    # deps on later tasks of the same batch are fine when acyclic
    tasks = b.submit([spec("late", deps=("early",)), spec("early")], T0)
    assert [t.state for t in tasks] == [TaskState.BLOCKED, TaskState.READY]


# ---- dependencies --------------------------------------------------------------------------


def test_dependants_become_ready_as_dependencies_finish() -> None:
    b = book()
    b.submit([spec("a"), spec("b"), spec("c", deps=("a", "b"))], T0)
    w = worker()
    for _ in range(2):
        tid = run_one(b, w)
        b.finish(tid, 1, Outcome.DONE, T0 + 1, result="ok")
        b.check()
    assert b.get("c").state is TaskState.READY
    assert b.select(w) == "c"


@pytest.mark.parametrize("how", ["dead", "cancelled", "skipped"])
def test_dependants_of_a_failed_dependency_fail_with_that_reason(how: str) -> None:
    b = book()
    b.submit(
        [
            spec("a", max_attempts=1),
            spec("b", deps=("a",)),
            spec("c", deps=("b",)),
            spec("d", deps=("a",), run_on_dep_failure=True),
        ],
        T0,
    )
    if how == "dead":
        run_one(b, worker())
        b.finish("a", 1, Outcome.FAILED, T0 + 1, reason="boom")
    elif how == "cancelled":
        b.cancel("a", T0 + 1)
    else:
        b.cancel("a", T0 + 1, skip=True)
    assert b.get("a").state.value == how
    assert b.get("b").state is TaskState.DEAD and b.get("b").reason == f"dependency 'a' {how}"
    assert b.get("c").state is TaskState.DEAD and b.get("c").reason == "dependency 'b' dead"
    assert b.get("d").state is TaskState.READY  # it said it runs anyway
    topics = [t for t, _ in b.drain()[1]]
    assert topics.count("task.dead") == 2 + (how == "dead")
    b.check()


def test_submitting_against_an_already_dead_dependency() -> None:
    b = book()
    b.submit([spec("a")], T0)
    b.cancel("a", T0)
    (t,) = b.submit([spec("b", deps=("a",))], T0)
    assert t.state is TaskState.DEAD and t.reason == "dependency 'a' cancelled"


def test_manual_retry_of_a_dead_task_revives_its_dependants() -> None:
    b = book()
    b.submit([spec("a", max_attempts=1), spec("b", deps=("a",)), spec("c", deps=("b",))], T0)
    run_one(b, worker())
    b.finish("a", 1, Outcome.FAILED, T0 + 1, reason="boom")
    with pytest.raises(Conflict, match="dependency 'a' is dead"):
        b.retry("b", T0 + 2)
    t = b.retry("a", T0 + 2)
    assert t.state is TaskState.READY
    assert b.get("b").state is TaskState.BLOCKED and b.get("c").state is TaskState.BLOCKED
    b.check()
    run_one(b, worker())
    assert b.finish("a", 2, Outcome.DONE, T0 + 3, result="fine")
    assert b.get("b").state is TaskState.READY


# ---- selection -----------------------------------------------------------------------------


def test_priority_first_then_oldest() -> None:
    b = book()
    b.submit([spec("low", priority=1), spec("high1", priority=5), spec("high2", priority=5)], T0)
    w = worker()
    assert [run_one(b, w) for _ in range(3)] == ["high1", "high2", "low"]
    assert b.select(w) is None


def test_affinity_beats_lower_priority_by_the_configured_bonus() -> None:
    b = book(affinity_bonus=3)
    b.submit([spec("code", category="code", priority=5), spec("test", category="test", priority=3)], T0)
    fresh = worker()
    tested = worker("w2", history=("test",))
    assert b.select(fresh) == "code"  # 5 > 3
    assert b.select(tested) == "test"  # 3 + 3 > 5
    assert b.score(tested, "test") == 6
    # exactly the bonus: a tie, broken by age (code is older)
    b.boost("code", 6, T0)
    assert b.select(tested) == "code"
    # the bonus is per matching recent category
    assert b.select(worker("w3", history=("test", "test"))) == "test"


def test_capabilities_filter_and_null_category_passes_every_filter() -> None:
    b = book()
    b.submit(
        [
            spec("docs", category="docs", priority=9),
            spec("any", priority=1),
            spec("code", category="code", priority=5),
        ],
        T0,
    )
    coder = worker(caps=frozenset({"code"}))
    nothing = worker("w2", caps=frozenset())
    assert b.select(coder) == "code"
    assert b.select(nothing) == "any"  # a task without category goes to anyone
    assert b.select(worker("w3", caps=None)) == "docs"
    assert not b.can_take(coder, "docs") and b.can_take(coder, "any")
    run_one(b, coder)
    run_one(b, coder)
    assert b.select(coder) is None


def test_history_is_capped() -> None:
    b = book(affinity_bonus=1, history_size=3)
    b.submit([spec("old", category="old", priority=2), spec("new", category="new", priority=2)], T0)
    w = worker(history=("old",) * 7 + ("new",) * 3, size=3)
    assert w.history == ("new", "new", "new") and w.affinity == {"new": 3}
    assert b.select(w) == "new"


def test_model_pin_and_category_models() -> None:
    models = ModelsConfig(category_models={"review": "opus"})
    b = book(models=models)
    b.submit(
        [
            spec("pinned", model="haiku", priority=9),
            spec("review", category="review", priority=8),
            spec("free", priority=1),
        ],
        T0,
    )
    assert b.ready_by_model() == {"haiku": 1, "opus": 1, None: 1}
    assert b.select(worker(model="sonnet")) == "free"
    assert b.select(worker(model="opus")) == "review"
    assert b.select(worker(model="haiku")) == "pinned"
    assert b.select(worker(model=None)) == "free"


def test_parked_model_pinned_tasks_wait_soft_routed_fall_back() -> None:
    models = ModelsConfig(category_models={"review": "opus"}, fallback={"opus": ("sonnet",)})
    b = book(models=models)
    b.submit([spec("hard", model="opus", priority=9), spec("soft", category="review", priority=5)], T0)
    sonnet, opus = worker("s", "sonnet"), worker("o", "opus")
    assert b.select(sonnet) is None
    b.park("opus", T0 + 60)
    assert b.select(opus) is None  # a parked model's workers take nothing
    assert b.select(sonnet) == "soft"  # fallback for soft routing; the hard pin waits
    assert b.select(worker("h", "haiku")) is None  # not in the fallback chain
    assert b.next_deadline() == T0 + 60
    assert b.unpark_due(T0 + 59) == [] and b.unpark_due(T0 + 60) == ["opus"]
    assert b.select(opus) == "hard"


def test_failure_memory_avoids_a_model_when_another_can_take_it() -> None:
    b = book(models=ModelsConfig(escalate=False), model_failure_limit=2)
    b.submit([spec("t", max_attempts=5)], T0)
    sonnet, haiku = worker("s", "sonnet"), worker("h", "haiku")
    for n in (1, 2):
        b.claim("t", "s", "sonnet", T0)
        b.finish("t", n, Outcome.FAILED, T0, reason="nope")
        b.release_due(T0 + 1000)
    assert b.get("t").failed_models == {"sonnet": 2}
    assert b.select(sonnet) is None and b.select(haiku) == "t"
    b.claim("t", "h", "haiku", T0)
    b.finish("t", 3, Outcome.FAILED, T0)
    b.release_due(T0 + 1000)
    assert b.select(haiku) == "t"  # one failure on haiku: not yet avoided
    b.claim("t", "h", "haiku", T0)
    b.finish("t", 4, Outcome.FAILED, T0)
    b.release_due(T0 + 1000)
    assert b.select(haiku) is None and b.select(worker("o", "opus")) == "t"


def test_failure_memory_when_every_model_failed_avoids_none() -> None:
    b = book(models=ModelsConfig(known=("sonnet",), default="sonnet", escalate=False), model_failure_limit=1)
    b.submit([spec("t")], T0)
    b.claim("t", "s", "sonnet", T0)
    b.finish("t", 1, Outcome.FAILED, T0)
    b.release_due(T0 + 1000)
    assert b.select(worker("s", "sonnet")) == "t"


def test_escalation_routes_a_failing_task_to_the_next_stronger_model() -> None:
    b = book(model_failure_limit=2)
    b.submit([spec("t", max_attempts=9)], T0)
    for n in (1, 2):
        b.claim("t", "s", "sonnet", T0)
        b.finish("t", n, Outcome.TIMEOUT, T0)
        b.release_due(T0 + 1000)
    assert b.ready_by_model() == {"opus": 1}
    assert b.select(worker("s", "sonnet")) is None and b.select(worker("h", "haiku")) is None
    assert b.select(worker("o", "opus")) == "t"


def test_manual_assignment_only_for_that_worker_and_first() -> None:
    b = book()
    b.submit([spec("urgent", priority=100), spec("mine", priority=0)], T0)
    b.assign("mine", "w2", T0)
    assert b.select(worker("w1")) == "urgent"
    assert b.select(worker("w2")) == "mine"  # ahead of higher priority work
    assert not b.can_take(worker("w1"), "mine")
    b.check()
    assert b.worker_gone("w2", T0) == ["mine"]
    assert b.get("mine").worker is None and b.select(worker("w3", caps=frozenset())) == "urgent"
    b.check()


# ---- outcomes, retry, dead letter ----------------------------------------------------------


def test_retry_backoff_then_dead_letter() -> None:
    backoff = BackoffConfig(min_s=1.0, max_s=60.0, factor=2.0, jitter=0.1)
    b = book(retry_backoff=backoff, model_failure_limit=10)  # no escalation in the way
    b.submit([spec("t", max_attempts=3)], T0)
    w = worker()
    now = T0
    for n in (1, 2):
        run_one(b, w, now)
        b.finish("t", n, Outcome.FAILED, now, reason="exit 1")
        t = b.get("t")
        assert t.state is TaskState.FAILED and t.not_before is not None
        delay = t.not_before - now
        assert 2 ** (n - 1) <= delay <= 2 ** (n - 1) * 1.1
        assert b.select(w) is None and b.release_due(t.not_before - 0.001) == []
        assert b.next_deadline() == t.not_before
        assert b.release_due(t.not_before) == ["t"]
        now = t.not_before
    run_one(b, w, now)
    b.finish("t", 3, Outcome.FAILED, now, reason="still broken")
    t = b.get("t")
    assert t.state is TaskState.DEAD and t.reason == "attempts exhausted (3/3): still broken"
    assert [a.outcome for a in t.attempts] == [Outcome.FAILED, Outcome.FAILED, Outcome.FAILED]
    events = [e for e in b.drain()[1] if e[0] == "task.failed"]
    assert [e[1]["will_retry"] for e in events] == [True, True, False]
    b.check()


def test_a_first_crash_runs_again_at_once_and_later_crashes_back_off() -> None:
    b = book(retry_backoff=BackoffConfig(min_s=1.0, max_s=60.0, factor=2.0, jitter=0.0))
    b.submit([spec("t", max_attempts=3)], T0)
    w = worker()
    run_one(b, w, T0)
    b.finish("t", 1, Outcome.CRASHED, T0, reason="worker died")
    assert b.select(w) == "t"  # ready again at once: recovery must not wait a backoff
    run_one(b, w, T0)
    b.finish("t", 2, Outcome.CRASHED, T0, reason="worker died again")
    t = b.get("t")
    assert t.state is TaskState.FAILED and t.not_before is not None and t.not_before > T0
    b.check()


def test_max_attempts_omitted_takes_the_queue_default() -> None:
    b = book(default_max_attempts=5)
    b.submit([TaskSpec(prompt="p", id="d")], T0)
    assert b.get("d").max_attempts == 5


def test_rate_limits_and_interruptions_do_not_count() -> None:
    b = book()
    b.submit([spec("t", max_attempts=1)], T0)
    w = worker()
    for n, outcome in enumerate([Outcome.RATE_LIMITED, Outcome.INTERRUPTED, Outcome.RATE_LIMITED], 1):
        run_one(b, w)
        b.finish("t", n, outcome, T0)
        assert b.get("t").state is TaskState.READY
    run_one(b, w)
    b.finish("t", 4, Outcome.DONE, T0, result="made it")
    assert b.get("t").result == "made it"
    b.check()


def test_stale_and_duplicate_completions_are_refused() -> None:
    b = book()
    b.submit([spec("t")], T0)
    w = worker()
    run_one(b, w)
    assert not b.finish("t", 2, Outcome.DONE, T0, result="from the future")
    assert not b.finish("nope", 1, Outcome.DONE, T0)
    assert b.finish("t", 1, Outcome.DONE, T0, result="first")
    assert not b.finish("t", 1, Outcome.DONE, T0, result="second")
    assert b.get("t").result == "first" and b.stale_reports == 3
    b.check()


def test_backoff_delay_is_capped() -> None:
    cfg = BackoffConfig(min_s=1.0, max_s=10.0, factor=10.0, jitter=0.0)
    rng = random.Random(0)
    assert [backoff_delay(cfg, n, rng) for n in (1, 2, 3, 5000)] == [1.0, 10.0, 10.0, 10.0]


# ---- operator controls ---------------------------------------------------------------------


def test_cancel_skip_boost_assign_retry_conflicts() -> None:
    b = book()
    b.submit([spec("a"), spec("b"), spec("c")], T0)
    w = worker()
    assert b.cancel("a", T0) is None
    for op in (lambda: b.cancel("a", T0), lambda: b.boost("a", 5, T0), lambda: b.assign("a", "w1", T0)):
        with pytest.raises(Conflict, match="'a'"):
            op()
    run_one(b, w)  # b
    assert b.cancel("b", T0, skip=True) == "w1"  # the caller interrupts that worker
    t = b.get("b")
    assert t.state is TaskState.SKIPPED and t.attempts[-1].outcome is Outcome.CANCELLED
    assert not b.finish("b", 1, Outcome.DONE, T0, result="late")  # its report is now stale
    with pytest.raises(Conflict, match="cannot retry task 'c': it is ready"):
        b.retry("c", T0)
    with pytest.raises(NotFound):
        b.boost("zzz", 1, T0)
    with pytest.raises(ValidationError):
        b.boost("c", -5, T0)
    assert b.retry("a", T0).state is TaskState.READY
    b.check()


def test_boost_reorders_ready_tasks() -> None:
    b = book()
    b.submit([spec("a", priority=5), spec("b", priority=1)], T0)
    assert b.boost("b", 10, T0).priority == 10
    assert b.select(worker()) == "b"
    assert ("task.boosted", {"task_id": "b", "priority": 10}) in b.drain()[1]


def test_worker_gone_crashes_its_attempt() -> None:
    b = book()
    b.submit([spec("t")], T0)
    run_one(b, worker("w9"))
    assert b.running_on("w9") == ["t"]
    assert b.worker_gone("w9", T0 + 1) == ["t"]
    t = b.get("t")
    # a first crash sends the task straight back to the queue (counted, no backoff)
    assert t.state is TaskState.READY and t.attempts[0].outcome is Outcome.CRASHED
    assert b.running_on("w9") == []
    b.check()


def test_list_pagination_and_filter() -> None:
    b = book()
    b.submit([spec(f"t{i:02d}", deps=("t00",) if i % 2 else ()) for i in range(10)], T0)
    page, cursor = b.list_tasks(limit=4)
    assert [t.id for t in page] == ["t00", "t01", "t02", "t03"] and cursor is not None
    page2, cursor2 = b.list_tasks(limit=4, cursor=cursor)
    assert [t.id for t in page2] == ["t04", "t05", "t06", "t07"]
    page3, cursor3 = b.list_tasks(limit=4, cursor=cursor2)
    assert [t.id for t in page3] == ["t08", "t09"] and cursor3 is None
    blocked, _ = b.list_tasks(TaskState.BLOCKED, limit=100)
    assert [t.id for t in blocked] == ["t01", "t03", "t05", "t07", "t09"]
    with pytest.raises(ValidationError) as err:
        b.list_tasks(cursor="garbage")
    assert err.value.field == "cursor"
    with pytest.raises(ValidationError):
        b.list_tasks(limit=0)
    with pytest.raises(ValidationError):
        b.list_tasks(state="nonsense")  # type: ignore[arg-type]


# ---- recovery ------------------------------------------------------------------------------


def test_restore_from_changes_recovers_running_tasks() -> None:
    from shoal.actors.taskbook import StoredTask

    b = book()
    b.submit([spec("done"), spec("run"), spec("wait", deps=("run",))], T0)
    w = worker()
    run_one(b, w)
    b.finish("done", 1, Outcome.DONE, T0 + 1, result="r")
    run_one(b, w, T0 + 2)
    # rebuild the stored rows from the last change of each task (what the store keeps)
    rows: dict[str, StoredTask] = {}
    attempts: dict[str, dict[int, object]] = {}
    statics = {}
    for c in b.drain()[0]:
        if c.static is not None:
            statics[c.task_id] = c.static
        if c.attempt is not None:
            attempts.setdefault(c.task_id, {})[c.attempt.n] = c.attempt
        rows[c.task_id] = StoredTask(
            c.task_id,
            statics[c.task_id],
            c.state,
            c.priority,
            c.reason,
            c.result,
            c.not_before,
            c.worker,
            c.updated,
            c.failed_models,
            c.usage,
            c.retry_base,
            c.dep_failure,
            tuple(attempts.get(c.task_id, {}).values()),  # type: ignore[arg-type]
        )
    fresh = book()
    assert fresh.restore(rows.values(), T0 + 10) == ["run"]
    run = fresh.get("run")
    assert run.state is TaskState.READY
    assert run.attempts[0].outcome is Outcome.INTERRUPTED and run.attempts[0].ended == T0 + 10
    assert fresh.get("done").result == "r" and fresh.get("wait").state is TaskState.BLOCKED
    fresh.check()
    assert attrs.asdict(fresh.get("done")) == attrs.asdict(b.get("done"))
    # the next submit continues the sequence: oldest-first stays right
    fresh.submit([spec("later")], T0 + 11)
    assert [t.id for t in fresh.list_tasks()[0]][-1] == "later"


def test_escalation_keeps_a_stronger_category_model() -> None:
    models = ModelsConfig(category_models={"review": "opus"}, fallback={"opus": ("haiku",)})
    b = book(models=models, model_failure_limit=1)
    b.submit([spec("r", category="review", max_attempts=5)], T0)
    b.park("opus", T0 + 10)
    b.claim("r", "h", "haiku", T0)  # ran on the fallback model and failed there
    b.finish("r", 1, Outcome.FAILED, T0)
    b.release_due(T0 + 100)
    b.unpark_due(T0 + 100)
    assert b.ready_by_model() == {"opus": 1}  # back to opus, not merely "one stronger than haiku"
    b.claim("r", "o", "opus", T0 + 100)
    b.finish("r", 2, Outcome.FAILED, T0 + 100)
    b.release_due(T0 + 1000)
    assert b.ready_by_model() == {None: 1}  # failed on opus too, nothing stronger: anyone but those
    assert b.select(worker("o", "opus")) is None and b.select(worker("h", "haiku")) is None
    assert b.select(worker("s", "sonnet")) == "r"


def test_a_lane_picks_the_first_task_of_the_nodes_lane_near_the_head_never_a_lower_priority() -> None:
    # a cluster node selects within its lane (TaskBook.set_lane): every node's book holds the same
    # ready tasks in the same order, and without lanes workers of several nodes turning idle at
    # once all pick the head (and all compare-and-sets but one lose)
    book = TaskBook()
    book.submit([TaskSpec(prompt=f"t{i}", id=f"t{i}") for i in range(10)], 0.0)
    book.submit([TaskSpec(prompt="urgent", id="urgent", priority=5)], 0.0)
    book.drain()
    view = WorkerView("w1", None)
    assert book.select(view) == "urgent"
    mine = {"t3", "t7"}
    book.set_lane(lambda tid: tid in mine)  # set with tasks ready already: its heaps are built
    # a task of higher priority is taken whatever its lane: a lane never reorders priorities
    assert book.select(view) == "urgent"
    book.claim("urgent", "w1", None, 1.0)
    book.drain()
    assert book.select(view) == "t3"  # the first of this node's lane
    book.claim("t3", "w1", None, 1.0)
    assert book.select(view) == "t7"
    book.set_lane(lambda tid: tid == "t0")
    assert book.select(view) == "t0"  # the head, when it is the node's
    book.set_lane(lambda tid: False)
    assert book.select(view) == "t0"  # no task of its lane: the head
    book.set_lane(None)
    assert book.select(view) == "t0"
    # the lanes left the ready index intact: every task is still selectable in order
    order = []
    for _ in range(9):
        tid = book.select(view)
        assert tid is not None
        order.append(tid)
        book.claim(tid, "w1", None, 2.0)
        book.drain()
    assert order == [f"t{i}" for i in range(10) if i != 3]


def test_a_lane_task_submitted_more_than_the_skew_after_the_head_waits_its_turn() -> None:
    # a node whose lane's head fell behind (its node slow or busy) is taken from by the others:
    # a lane reorders tasks of equal priority by at most LANE_SKEW_S of submission time
    from shoal.actors.taskbook_select import LANE_SKEW_S

    book = TaskBook()
    for i in range(4):
        book.submit([TaskSpec(prompt=f"t{i}", id=f"t{i}")], i * LANE_SKEW_S * 0.75)
    book.drain()
    view = WorkerView("w1", None)
    book.set_lane(lambda tid: tid == "t1")  # 0.75 skews after the head
    assert book.select(view) == "t1"
    book.set_lane(lambda tid: tid == "t2")  # 1.5 skews after it: the head goes first
    assert book.select(view) == "t0"
    book.claim("t0", "w1", None, 5.0)
    book.drain()
    assert book.select(view) == "t2"  # now 0.75 skews after the head (t1)
    # a task made ready later joins the lane's heap as it is indexed
    book.set_lane(lambda tid: tid in ("t2", "late"))
    book.claim("t2", "w1", None, 5.0)
    book.submit([TaskSpec(prompt="late", id="late")], 2.5 * LANE_SKEW_S * 0.75)
    book.drain()
    assert book.select(view) == "t1"  # late: 2.5 - 1 = 1.5 skews after the head
    book.claim("t1", "w1", None, 6.0)
    book.drain()
    assert book.select(view) == "late"  # 2.5 - 3: before the head (t3)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 2), st.integers(0, 8)), min_size=1, max_size=300),
    st.sets(st.integers(0, 299)),
    st.sets(st.integers(0, 299)),
    st.booleans(),
)
def test_a_lane_pick_is_the_first_live_task_of_the_lane_as_a_full_sort_finds_it(
    tasks: list[tuple[int, int]], taken: set[int], lane_ids: set[int], lane_first: bool
) -> None:
    # the lane's own heaps against a sort of the whole bucket: the first live task of the lane of
    # the head's priority, if submitted at most LANE_SKEW_S after the head; else the head. The lane
    # is set before the tasks are submitted or after (its heaps built then), past claimed entries.
    from shoal.actors.taskbook_select import LANE_SKEW_S

    book = TaskBook()
    in_lane = {f"t{i}" for i in lane_ids}
    if lane_first:
        book.set_lane(lambda tid: tid in in_lane)
    created = {i: quarter * LANE_SKEW_S / 4 for i, (_p, quarter) in enumerate(tasks)}
    for i, (priority, _q) in sorted(enumerate(tasks), key=lambda it: created[it[0]]):
        book.submit([TaskSpec(prompt=f"t{i}", id=f"t{i}", priority=priority)], created[i])
    book.drain()
    n = len(tasks)
    for i in sorted(taken):
        if i < n:
            book.claim(f"t{i}", f"w{i}", None, 10.0)
    book.drain()
    if not lane_first:
        book.set_lane(lambda tid: tid in in_lane)
    live = [i for i in range(n) if i not in taken]
    view = WorkerView("w", None)
    pick = book.select(view)
    if not live:
        assert pick is None
        return
    order = sorted(live, key=lambda i: (-tasks[i][0], created[i], i))  # priority, then submission
    head = order[0]
    lane = [i for i in order if tasks[i][0] == tasks[head][0] and f"t{i}" in in_lane]
    want = lane[0] if lane and created[lane[0]] - created[head] <= LANE_SKEW_S else head
    assert pick == f"t{want}"
    book.set_lane(None)
    assert book.select(view) == f"t{head}"  # the index is whole: without a lane, the head
