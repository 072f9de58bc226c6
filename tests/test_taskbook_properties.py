"""Property-based tests of the task state machine: random operation sequences (including crashes
and recovery through the real SQLite schema) never lose a task or break an invariant.

Retention runs as one more operation. A shadow book that never evicts gets the same operations: on
every task the evicting book still holds, the two must agree exactly (an eviction never changes how
dependencies resolve), and the shadow may hold more only of finished tasks. One difference is by
design: a retry revives the dependants its failure killed only while they are kept, so the shadow is
told not to revive what the other book has evicted."""

from __future__ import annotations

import random
import sqlite3

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from shoal.actors.store import apply_changes, load_tasks, migrate
from shoal.actors.taskbook import TaskBook, WorkerView
from shoal.protocols.config import BackoffConfig, ModelsConfig, QueueConfig
from shoal.protocols.errors import Conflict, ValidationError
from shoal.protocols.tasks import TERMINAL_STATES, Outcome, Task, TaskSpec, TaskState

CATEGORIES = [None, "code", "test", "docs"]
MODELS = [None, "haiku", "sonnet", "opus"]
WORKERS = [
    WorkerView("w0", "sonnet", None, ("code", "code")),
    WorkerView("w1", "haiku", frozenset({"test", "docs"}), ("test",)),
    WorkerView("w2", "opus", frozenset({"code"}), ()),
    WorkerView("w3", None, frozenset(), ("docs", "code", "docs")),
]
QCFG = QueueConfig(
    affinity_bonus=2,
    model_failure_limit=2,
    retry_backoff=BackoffConfig(min_s=1, max_s=8, factor=2, jitter=0.5),
    keep_finished_s=12,
    keep_finished=3,
)
SHADOW_QCFG = attrs.evolve(QCFG, keep_finished_s=0, keep_finished=0)  # keeps every task
MCFG = ModelsConfig(category_models={"docs": "haiku"}, fallback={"haiku": ("sonnet",)})


def open_db() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, ":memory:")
    return conn


class TaskBookMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.book = TaskBook(QCFG, MCFG, rng=random.Random(0))
        self.shadow = TaskBook(SHADOW_QCFG, MCFG, rng=random.Random(0))
        self.db = open_db()
        self.shadow_db = open_db()
        self.evicted: set[str] = set()
        self.now = 1000.0
        self.acked: set[str] = set()
        self.results: dict[str, str] = {}
        self.counter = 0

    # ---- helpers -------------------------------------------------------------------------------

    def persist(self) -> None:
        for book, db in ((self.book, self.db), (self.shadow, self.shadow_db)):
            changes, _events, _ready = book.drain()
            db.execute("BEGIN")
            apply_changes(db, changes)
            db.execute("COMMIT")

    def tasks(self, state: TaskState | None = None) -> list[Task]:
        out: list[Task] = []
        cursor = None
        while True:
            page, cursor = self.book.list_tasks(state, 1000, cursor)
            out.extend(page)
            if cursor is None:
                return out

    def forget_in_shadow(self) -> None:
        """A retry revives only kept dependants: the shadow must not revive evicted ones either."""
        for tid in self.evicted:
            rec = self.shadow._recs.get(tid)
            if rec is not None and rec.dep_failure is not None:
                rec.dep_failure = "(evicted)"

    def pick(self, data: st.DataObject, state: TaskState | None = None) -> Task | None:
        tasks = self.tasks(state)
        return data.draw(st.sampled_from(tasks)) if tasks else None

    # ---- rules ---------------------------------------------------------------------------------

    @rule(data=st.data(), n=st.integers(1, 3))
    def submit(self, data: st.DataObject, n: int) -> None:
        existing = list(self.acked)
        specs = []
        new_ids = []
        for _ in range(n):
            self.counter += 1
            tid = f"t{self.counter}"
            pool = existing + new_ids
            deps = tuple(data.draw(st.lists(st.sampled_from(pool), max_size=2, unique=True))) if pool else ()
            specs.append(
                TaskSpec(
                    prompt=f"p{self.counter}",
                    id=tid,
                    category=data.draw(st.sampled_from(CATEGORIES)),
                    priority=data.draw(st.integers(0, 2)),
                    deps=deps,
                    model=data.draw(st.sampled_from(MODELS)),
                    max_attempts=data.draw(st.integers(1, 3)),
                    run_on_dep_failure=data.draw(st.booleans()),
                )
            )
            new_ids.append(tid)
        if data.draw(st.booleans()) and existing:  # sometimes a cycle-free re-submit of an old id
            old = self.book.get(data.draw(st.sampled_from(existing)))
            specs.append(TaskSpec(prompt=old.prompt + "!", id=old.id))
        before = len(self.book)
        try:
            self.shadow.submit(specs, self.now)
            shadow_ok = True
        except (ValidationError, Conflict):
            shadow_ok = False
        try:
            tasks = self.book.submit(specs, self.now)
        except (ValidationError, Conflict):
            assert len(self.book) == before  # atomic: nothing half-added
            assert not shadow_ok
            return
        assert shadow_ok
        self.acked.update(t.id for t in tasks)
        self.persist()

    @rule(w=st.sampled_from(WORKERS))
    def worker_takes(self, w: WorkerView) -> None:
        tid = self.book.select(w)
        ready = [t for t in self.tasks(TaskState.READY) if self.book.can_take(w, t.id)]
        for t in self.tasks(TaskState.READY):
            if self.book.can_take(w, t.id) and t.worker is None:
                assert t.model is None or t.model == w.model
                assert w.capabilities is None or t.category is None or t.category in w.capabilities
        if not ready:
            assert tid is None
            return
        order = {t.id: i for i, t in enumerate(self.tasks())}
        mine = [t for t in ready if t.worker == w.id]
        if mine:
            best = max(mine, key=lambda t: (t.priority, -order[t.id]))
        else:
            best = max(ready, key=lambda t: (self.book.score(w, t.id), -order[t.id]))
        assert tid == best.id, (tid, best.id)
        assert self.shadow.select(w) == tid
        self.shadow.claim(tid, w.id, w.model, self.now)
        a = self.book.claim(tid, w.id, w.model, self.now)
        assert a.attempt == len(self.book.get(tid).attempts)
        self.persist()

    @rule(data=st.data(), outcome=st.sampled_from(list(Outcome)))
    def attempt_ends(self, data: st.DataObject, outcome: Outcome) -> None:
        t = self.pick(data, TaskState.RUNNING)
        if t is None:
            return
        n = t.attempts[-1].n
        assert self.shadow.finish(t.id, n, outcome, self.now, result=f"r-{t.id}-{n}", reason="x")
        ok = self.book.finish(t.id, n, outcome, self.now, result=f"r-{t.id}-{n}", reason="x")
        assert ok
        if outcome is Outcome.DONE:
            self.results[t.id] = f"r-{t.id}-{n}"
        self.persist()

    @rule(data=st.data(), n=st.integers(0, 5))
    def stale_report(self, data: st.DataObject, n: int) -> None:
        t = self.pick(data)
        if t is None:
            return
        current = self.book.is_current(t.id, n)
        before = self.book.get(t.id)
        assert self.shadow.finish(t.id, n, Outcome.DONE, self.now, result="stale?") == current
        ok = self.book.finish(t.id, n, Outcome.DONE, self.now, result="stale?")
        assert ok == current
        if not ok:
            assert self.book.get(t.id) == before
        else:
            self.results[t.id] = "stale?"
        self.persist()

    @rule(data=st.data(), op=st.sampled_from(["cancel", "skip", "retry", "boost", "assign"]))
    def operator(self, data: st.DataObject, op: str) -> None:
        t = self.pick(data)
        if t is None:
            return
        priority = data.draw(st.integers(0, 9))
        worker = data.draw(st.sampled_from(WORKERS)).id
        refused = []
        for book in (self.shadow, self.book):
            try:
                if op == "cancel":
                    book.cancel(t.id, self.now)
                elif op == "skip":
                    book.cancel(t.id, self.now, skip=True)
                elif op == "retry":
                    book.retry(t.id, self.now)
                elif op == "boost":
                    book.boost(t.id, priority, self.now)
                else:
                    book.assign(t.id, worker, self.now)
                refused.append(False)
            except Conflict:
                assert book.get(t.id).state == t.state  # a refused operation changes nothing
                refused.append(True)
        assert refused[0] == refused[1]
        self.persist()

    @rule(dt=st.floats(0.1, 20))
    def time_passes(self, dt: float) -> None:
        self.now += dt
        released = self.book.release_due(self.now)
        assert self.shadow.release_due(self.now) == released
        for tid in released:
            assert self.book.get(tid).state is TaskState.READY
        self.shadow.unpark_due(self.now)
        self.book.unpark_due(self.now)
        nxt = self.book.next_deadline()
        assert nxt is None or nxt > self.now
        self.persist()

    @rule(model=st.sampled_from(["haiku", "sonnet", "opus"]), dt=st.floats(1, 30))
    def rate_limited(self, model: str, dt: float) -> None:
        self.shadow.park(model, self.now + dt)
        self.book.park(model, self.now + dt)

    @rule(w=st.sampled_from(WORKERS))
    def worker_dies(self, w: WorkerView) -> None:
        assert self.shadow.worker_gone(w.id, self.now) == self.book.worker_gone(w.id, self.now)
        assert self.book.running_on(w.id) == [] and self.book.targets_of(w.id) == []
        self.persist()

    @precondition(lambda self: len(self.book) > 0)
    @rule()
    def crash_and_recover(self) -> None:
        self.persist()
        before = {t.id: t for t in self.tasks()}
        fresh = TaskBook(QCFG, MCFG, rng=random.Random(1))
        recovered = fresh.restore(load_tasks(self.db), self.now)
        assert set(recovered) == {tid for tid, t in before.items() if t.state is TaskState.RUNNING}
        after = {t.id: fresh.get(t.id) for t in before.values()}
        assert set(after) == set(before)
        for tid, t in before.items():
            a = after[tid]
            assert len(a.attempts) == len(t.attempts) and a.result == t.result
            if t.state is TaskState.RUNNING:
                # READY again, unless a dependency it ran past (run_on_dep_failure) was retried
                # meanwhile: READY always means every dependency is settled
                settled = all(
                    before[d].state is TaskState.DONE
                    or (t.run_on_dep_failure and before[d].state in TERMINAL_STATES)
                    for d in t.deps
                )
                assert a.state is (TaskState.READY if settled else TaskState.BLOCKED), (tid, a.state)
                assert a.attempts[-1].outcome is Outcome.INTERRUPTED
            elif t.worker is None:
                assert a == t, tid
            else:  # manual assignments do not survive a restart
                assert a.state == t.state and a.worker is None
        assert not self.evicted & set(fresh.ids())  # nothing evicted comes back
        self.book = fresh
        self.shadow = TaskBook(SHADOW_QCFG, MCFG, rng=random.Random(1))
        self.shadow.restore(load_tasks(self.shadow_db), self.now)
        self.forget_in_shadow()
        self.persist()

    @rule(limit=st.integers(1, 4), dt=st.sampled_from([0.0, 5.0, 20.0]))
    def evict(self, limit: int, dt: float) -> None:
        """One retention step (as the queue runs them), checked against the rules."""
        self.time_passes(dt)
        before = {t.id: t for t in self.tasks()}
        ids = self.book.evict(self.now, limit)
        assert len(ids) <= limit and len(set(ids)) == len(ids)
        for tid in ids:
            assert before[tid].state in TERMINAL_STATES
            assert tid not in self.book
        if not self.book.eviction_due(self.now):  # the step finished: the limits hold
            keep_n, keep_s = QCFG.keep_finished, QCFG.keep_finished_s
            left = [t for t in self.tasks() if t.state in TERMINAL_STATES]
            for t in left:
                needed = any(d.state is not TaskState.DONE and t.id in d.deps for d in self.tasks())
                assert needed or (len(left) <= keep_n and t.updated + keep_s > self.now), t.id
        self.evicted.update(ids)
        self.forget_in_shadow()
        self.acked.difference_update(ids)
        for tid in ids:
            self.results.pop(tid, None)
        if ids:
            with pytest.raises(ValidationError, match=f"'{ids[0]}'.*evicted"):
                self.book.submit([TaskSpec("late", id="late-dependant", deps=(ids[0],))], self.now)
        self.persist()

    # ---- invariants ----------------------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        self.book.check()
        self.shadow.check()

    @invariant()
    def eviction_changes_nothing_else(self) -> None:
        mine = {t.id: t for t in self.tasks()}
        for t in self.shadow.list_tasks(None, 10_000)[0]:
            if t.id in mine:
                assert mine[t.id] == t, t.id
            else:
                assert t.id in self.evicted and t.state in TERMINAL_STATES, t.id
        assert set(mine) | self.evicted >= set(self.shadow.ids())

    @invariant()
    def nothing_lost(self) -> None:
        ids = set(self.book.ids())
        assert self.acked <= ids
        assert sum(self.book.counts().values()) == len(ids)

    @invariant()
    def results_recorded_once(self) -> None:
        for tid, result in self.results.items():
            t = self.book.get(tid)
            if t.state is TaskState.DONE:
                assert t.result == result
                assert sum(1 for a in t.attempts if a.outcome is Outcome.DONE) == 1
            else:  # a done task can only leave DONE through nothing: it stays done
                raise AssertionError(f"{tid} left done: {t.state}")

    @invariant()
    def terminal_tasks_have_no_open_attempt(self) -> None:
        for t in self.tasks():
            if t.state in TERMINAL_STATES:
                assert not t.attempts or t.attempts[-1].ended is not None

    def teardown(self) -> None:
        self.db.close()
        self.shadow_db.close()


TaskBookMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_task_book_state_machine = TaskBookMachine.TestCase
