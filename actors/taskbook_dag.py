"""The TaskBook's dependency graph: how a task's dependencies decide its state.

A task that may run is BLOCKED while a dependency has not succeeded, READY once every one has, and
DEAD when one ends dead, cancelled or skipped (unless `run_on_dep_failure`). A task that ends
settles its dependants in one iterative cascade (`_terminal`); a manual retry revives the dependants
its failure had killed (`_revive_dependants`). Each record counts its unmet dependencies (`unmet`)
and the dependants that still need it (`needed`: retention keeps it while that is not zero). Cycles
are refused at submit, where the only new edges appear.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from typing import Any

import attrs

from ..protocols.errors import ValidationError
from ..protocols.tasks import FAILED_DEP_STATES, TERMINAL_STATES, Attempt, Task, TaskState
from .taskbook_continue import continues
from .taskbook_records import _BLOCKED, _READY, TERMINAL_TOPICS, _Rec
from .taskbook_select import ReadyIndex


class DagBook(ReadyIndex):
    """The graph (`_dependants`, each record's `deps`) and the transitions it drives."""

    # ---- the graph ---------------------------------------------------------------------------------

    def _add(self, rec: _Rec) -> None:
        self._recs[rec.id] = rec
        self._order.append(rec.seq, rec.id)
        self._counts[rec.state] += 1
        for d in rec.deps:
            self._dependants.setdefault(d, {})[rec.id] = None

    def _link(self, rec: _Rec) -> None:
        """Count `rec` as needing its dependencies (once all of a batch is added: a task may depend
        on a later one in the same submit)."""
        if rec.state is TaskState.DONE:
            return
        for d in rec.deps:
            dep = self._recs.get(d)
            if dep is not None:
                dep.needed += 1

    def _unneed(self, rec: _Rec) -> None:
        """`rec` succeeded or left the book: its dependencies may become evictable."""
        for d in rec.deps:
            dep = self._recs.get(d)
            if dep is None or dep.needed <= 0:
                continue
            dep.needed -= 1
            if dep.needed == 0 and dep.held and dep.state in TERMINAL_STATES:
                dep.held = False  # it waited for this: back in line, at its own finish time
                heapq.heappush(self._finished, (dep.finished, dep.seq, dep.id))

    def _check_cycles(self, graph: Mapping[str, tuple[str, ...]]) -> None:
        """Refuse a dependency cycle among new tasks (old tasks cannot depend on new ones)."""
        state: dict[str, int] = {}  # 1 visiting, 2 done
        for root in graph:
            if state.get(root):
                continue
            stack: list[tuple[str, int]] = [(root, 0)]
            path: list[str] = []
            while stack:
                node, i = stack.pop()
                if i == 0:
                    state[node] = 1
                    path.append(node)
                deps = [d for d in graph.get(node, ()) if d in graph]
                if i < len(deps):
                    stack.append((node, i + 1))
                    nxt = deps[i]
                    if state.get(nxt) == 1:
                        cycle = [*path[path.index(nxt) :], nxt]
                        raise ValidationError(
                            "deps", f"dependency cycle (-> means depends on): {' -> '.join(cycle)}"
                        )
                    if not state.get(nxt):
                        stack.append((nxt, 0))
                else:
                    state[node] = 2
                    path.pop()

    # ---- dependencies decide the state -------------------------------------------------------------

    def _dep_status(self, rec: _Rec) -> tuple[int, tuple[str, str] | None]:
        """(unmet count, (id, state) of a failed dependency that dooms it) for a task's deps."""
        unmet = 0
        for d in rec.deps:
            dep = self._recs.get(d)
            if dep is None:  # only after damage to the store: treat as a failed dependency
                if rec.run_on_dep_failure:
                    continue
                return unmet, (d, "missing")
            if dep.state is TaskState.DONE:
                continue
            if dep.state in FAILED_DEP_STATES:
                if rec.run_on_dep_failure:
                    continue
                return unmet, (d, dep.state.value)
            unmet += 1
        return unmet, None

    def _settle_deps(
        self, rec: _Rec, now: float, kind: str | None = None, attempt: Attempt | None = None
    ) -> None:
        """Put a task that may run (new, revived, retried, or back from an attempt) in BLOCKED, READY
        or DEAD according to its deps: READY always means every dependency is settled, even after
        an operator retried a dependency that had failed."""
        unmet, doomed = self._dep_status(rec)
        rec.unmet = unmet
        if doomed is not None:
            self._dep_dead(rec, doomed, now, attempt)
        elif unmet:
            rec.reason = self._blocked_reason(rec)
            self._set_state(rec, _BLOCKED, now)
            self._change(kind or "block", rec, attempt)
        else:
            rec.reason = None
            self._set_state(rec, _READY, now)
            self._change(kind or "ready", rec, attempt)
            self._event_ready(rec)

    def _blocked_reason(self, rec: _Rec) -> str:
        waiting = [
            d for d in rec.deps if (dep := self._recs.get(d)) is None or dep.state is not TaskState.DONE
        ]
        shown = ", ".join(repr(d) for d in waiting[:5]) + (
            f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        )
        return f"waiting for dependencies: {shown}"

    def _snap(self, rec: _Rec) -> Task:
        task = rec.snapshot()
        if rec.state is _BLOCKED:  # name the dependencies it still waits for, as of now
            task = attrs.evolve(task, reason=self._blocked_reason(rec))
        return task

    def _event_ready(self, rec: _Rec) -> None:
        self._event(
            "task.ready",
            {"task_id": rec.id, "category": rec.category, "priority": rec.priority, "model": rec.route[0]},
        )

    def _dep_dead(
        self, rec: _Rec, doomed: tuple[str, str], now: float, attempt: Attempt | None = None
    ) -> None:
        rec.dep_failure = doomed[0]
        self._terminal(rec, TaskState.DEAD, f"dependency {doomed[0]!r} {doomed[1]}", now, "dead", attempt)

    def _terminal(
        self,
        rec: _Rec,
        state: TaskState,
        reason: str | None,
        now: float,
        kind: str,
        attempt: Attempt | None = None,
    ) -> None:
        """Move a task into a terminal state and settle its dependants (iteratively)."""
        # dead -> skipped changes nothing for dependants: they were settled when it died
        settled_already = rec.state in FAILED_DEP_STATES and state in FAILED_DEP_STATES
        rec.reason = reason
        rec.not_before = None
        self._set_state(rec, state, now)
        self._clear_target(rec)
        self._change(kind, rec, attempt)
        if state is TaskState.DONE:  # done stays done: its dependencies have served it
            self._unneed(rec)
        data: dict[str, Any] = {
            "task_id": rec.id,
            "reason": reason,
            "model": attempt.model if attempt else rec.model,
            "category": rec.category,
        }
        if state is TaskState.DONE:
            data["attempt"] = attempt.n if attempt else None
            data["worker"] = attempt.worker if attempt else None
            if attempt is not None and attempt.ended is not None:
                data["run_s"] = round(attempt.ended - attempt.started, 6)
            if rec.usage:  # tokens and cost the agent reported (stream-json): cost per model
                data["usage"] = dict(rec.usage)
                if "cost_usd" in rec.usage:
                    data["cost_usd"] = rec.usage["cost_usd"]
        self._event(TERMINAL_TOPICS[state], data)
        stack = [] if settled_already else [rec]
        while stack:
            r = stack.pop()
            for did in self._dependants.get(r.id, ()):
                d = self._recs[did]
                if d.state is not _BLOCKED:
                    continue
                if r.state is TaskState.DONE or d.run_on_dep_failure:
                    d.unmet -= 1
                    if r is rec and state is TaskState.DONE and attempt is not None:
                        self._target_continuation(d, r.id, attempt.worker, d.unmet > 0)
                    if d.unmet <= 0:
                        d.reason = None
                        self._set_state(d, _READY, now)
                        self._change("ready", d)
                        self._event_ready(d)
                else:
                    d.dep_failure = r.id
                    d.reason = f"dependency {r.id!r} {r.state.value}"
                    self._set_state(d, TaskState.DEAD, now)
                    self._clear_target(d)
                    self._change("dead", d)
                    self._event("task.dead", {"task_id": d.id, "reason": d.reason})
                    stack.append(d)

    def _target_continuation(self, rec: _Rec, dep: str, worker: str, blocked: bool) -> None:
        """`rec` continues `dep`'s conversation, which `worker` just finished: it goes to that worker,
        whose directory holds the conversation (a manual target: released when the worker goes, and
        then any worker runs it, afresh). A target set by hand is left alone."""
        if rec.worker is not None or continues(rec.metadata) != dep:
            return
        rec.worker = worker
        self._targets.setdefault(worker, set()).add(rec.id)
        if blocked:  # still waits for other dependencies: the target is stored now (else with "ready")
            self._change("assign", rec)
        self._event("task.assigned", {"task_id": rec.id, "worker": worker, "continues": dep})

    def _revive_dependants(self, rec: _Rec, now: float) -> None:
        """After a manual retry of `rec`: dependants it killed come back (blocked), recursively, and
        blocked dependants that counted it as settled wait for it again."""
        stack = [rec]
        while stack:
            r = stack.pop()
            for did in self._dependants.get(r.id, ()):
                d = self._recs[did]
                if d.state is TaskState.DEAD and d.dep_failure == r.id:
                    d.dep_failure = None
                    d.retry_base = len(d.attempts)
                    d.counted = 0
                    self._settle_deps(d, now, "revive")
                    self._event("task.revived", {"task_id": d.id, "state": d.state.value})
                    stack.append(d)
                elif d.state is _BLOCKED:
                    d.unmet, _ = self._dep_status(d)
                elif d.state is _READY and d.run_on_dep_failure:
                    self._settle_deps(d, now, "block")  # it must wait for the retried dependency
