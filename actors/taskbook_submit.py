"""The TaskBook's intake: task specs validated, then added atomically.

A submit checks everything before it changes anything, so a refused batch adds nothing: each spec's
fields (every refusal names the field and the task), an id already in the book with the same content
(idempotent) or with different content (Conflict), unknown dependencies and cycles. Then it adds the
records, links them into the graph and settles each one (actors/taskbook_dag.py), and records one
`submit` change per new task carrying its settled state.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from ..protocols.errors import Conflict, ValidationError
from ..protocols.tasks import Task, TaskSpec
from ..protocols.taskworkspace import check_continue, task_workspace
from ..protocols.text import check_text
from .taskbook_dag import DagBook
from .taskbook_records import (
    _BLOCKED,
    MAX_ATTEMPTS_LIMIT,
    StaticRow,
    _check_int,
    _Rec,
    check_name,
    check_priority,
)

_CONTENT_FIELDS = (
    "prompt",
    "category",
    "priority",
    "deps",
    "model",
    "max_attempts",
    "timeout_s",
    "metadata",
    "run_on_dep_failure",
)


def _content(*values: Any) -> tuple[Any, ...]:
    """What an idempotent re-submit must match (metadata compared as canonical JSON)."""
    meta = values[7]
    return (*values[:7], json.dumps(meta, sort_keys=True) if meta else "{}", values[8])


def _differs(a: tuple[Any, ...], b: tuple[Any, ...]) -> list[str]:
    return [name for name, x, y in zip(_CONTENT_FIELDS, a, b, strict=True) if x != y]


class SubmittingBook(DagBook):
    """`submit` and the validation it runs first."""

    def _validate(self, spec: Any, field: str, now: float) -> tuple[str, TaskSpec, tuple[str, ...]]:
        def f(name: str) -> str:
            return f"{field}.{name}" if field else name

        if not isinstance(spec, TaskSpec):
            raise ValidationError(field or "task", "must be a task spec", type(spec).__name__)
        if spec.max_attempts is None:  # the task did not say: the queue's default applies
            spec = attrs.evolve(spec, max_attempts=self.qcfg.default_max_attempts)
        tid = spec.id if spec.id is not None else uuid.uuid4().hex
        check_name(f("id"), tid, "id")
        if not isinstance(spec.prompt, str):
            raise ValidationError(f("prompt"), "must be a string", type(spec.prompt).__name__)
        if not spec.prompt:
            raise ValidationError(f("prompt"), f"task {tid!r}: must not be empty")
        # a prompt goes onto a command line (oneshot) or into a terminal: neither takes a NUL, and
        # nothing that cannot be encoded as UTF-8 may reach the store or a worker
        check_text(spec.prompt, f("prompt"), nul=True)
        limit = self.qcfg.max_prompt_bytes
        size = len(spec.prompt)
        if size * 4 > limit:  # only then can the UTF-8 size pass the limit: measure it
            size = len(spec.prompt.encode("utf-8", "surrogatepass"))
        if size > limit:
            raise ValidationError(
                f("prompt"),
                f"task {tid!r}: is {size} bytes, over the limit of {limit} (queue.max_prompt_bytes)",
            )
        if spec.category is not None:
            check_name(f("category"), spec.category, "category")
        check_priority(spec.priority, f("priority"))
        _check_int(f("max_attempts"), spec.max_attempts, 1, MAX_ATTEMPTS_LIMIT)
        if spec.model is not None and spec.model not in self.mcfg.known:
            raise ValidationError(
                f("model"), f"task {tid!r}: unknown model; known: {list(self.mcfg.known)}", spec.model
            )
        t = spec.timeout_s
        if t is not None and (
            isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t <= 0
        ):
            raise ValidationError(f("timeout_s"), "must be a positive number of seconds or null", t)
        if not isinstance(spec.run_on_dep_failure, bool):
            raise ValidationError(f("run_on_dep_failure"), "must be true or false", spec.run_on_dep_failure)
        if not isinstance(spec.metadata, dict) or not all(isinstance(k, str) for k in spec.metadata):
            raise ValidationError(f("metadata"), "must be an object with string keys")
        try:
            blob = json.dumps(spec.metadata, allow_nan=False) if spec.metadata else "{}"
        except (TypeError, ValueError) as exc:
            raise ValidationError(f("metadata"), f"task {tid!r}: is not JSON-serialisable: {exc}") from None
        if len(blob) > limit:
            raise ValidationError(f("metadata"), f"task {tid!r}: is over {limit} bytes as JSON")
        own = task_workspace(spec.metadata, f("metadata"))  # its own worktree options, if any: checked now
        if not isinstance(spec.deps, tuple | list):
            raise ValidationError(f("deps"), "must be a list of task ids", spec.deps)
        deps: list[str] = []
        for i, d in enumerate(spec.deps):
            check_name(f(f"deps[{i}]"), d, "dependency id")
            if d == tid:
                raise ValidationError(f("deps"), f"task {tid!r} depends on itself")
            if d not in deps:
                deps.append(d)
        check_continue(own, tuple(deps), f("metadata"))
        return tid, spec, tuple(deps)

    def submit(self, specs: Sequence[Any], now: float) -> list[Task]:
        """Add tasks atomically: either every spec is accepted (or matched idempotently) or none is.
        Returns the snapshots in the order given."""
        if not isinstance(specs, list | tuple):
            raise ValidationError("tasks", "must be a list of task specs")
        multi = len(specs) != 1
        checked: list[tuple[str, TaskSpec, tuple[str, ...], str]] = []
        batch: dict[str, tuple[Any, ...]] = {}  # id -> content of new tasks in this batch
        for i, raw in enumerate(specs):
            tid, spec, deps = self._validate(raw, f"tasks[{i}]" if multi else "", now)
            content = _content(
                spec.prompt,
                spec.category,
                spec.priority,
                deps,
                spec.model,
                spec.max_attempts,
                spec.timeout_s,
                spec.metadata,
                spec.run_on_dep_failure,
            )
            existing = self._recs.get(tid)
            if existing is not None:
                differs = _differs(self._content_of(existing), content)
                if differs:
                    raise Conflict(
                        f"task {tid!r} already exists with different content"
                        f" (differs in: {', '.join(differs)})"
                    )
            elif tid in batch:
                if _differs(batch[tid], content):
                    raise Conflict(f"task {tid!r} appears twice in the batch with different content")
                continue
            else:
                batch[tid] = content
            checked.append((tid, spec, deps, ""))
        new = [c for c in checked if c[0] not in self._recs]
        for tid, _spec, deps, _d in new:
            unknown = [d for d in deps if d not in self._recs and d not in batch]
            if unknown:
                raise ValidationError(
                    "deps",
                    f"task {tid!r}: unknown dependency id(s) {unknown}: never submitted, or finished and"
                    " evicted by retention (queue.keep_finished_s, queue.keep_finished); submit them"
                    " first or together",
                )
        if any(deps for _t, _s, deps, _d in new):
            self._check_cycles({tid: deps for tid, _s, deps, _d in new})
        # all checks passed: mutate
        for tid, spec, deps, digest in new:
            seq = self._next_seq if self.seq_source is None else self.seq_source(now)
            static = StaticRow(
                seq,
                spec.prompt,
                spec.category,
                spec.priority,
                deps,
                spec.model,
                spec.max_attempts or self.qcfg.default_max_attempts,  # set by _validate
                float(spec.timeout_s) if spec.timeout_s is not None else None,
                json.loads(json.dumps(spec.metadata)) if spec.metadata else {},  # a private copy
                spec.run_on_dep_failure,
                digest,
                now,
            )
            self._next_seq = max(self._next_seq, seq) + 1
            rec = _Rec(tid, static)
            rec.static_row = static
            self._add(rec)
            self._unsubmitted.add(tid)
            self._event(
                "task.submitted",
                {
                    "task_id": tid,
                    "category": rec.category,
                    "priority": rec.priority,
                    "model": rec.model,
                    "deps": list(deps),
                },
            )
        fresh = [self._recs[tid] for tid, _spec, _deps, _d in new]
        for rec in fresh:  # before any settles: a dependency dying below updates these counts
            self._link(rec)
            rec.unmet = self._dep_status(rec)[0]
        for rec in fresh:
            if rec.state is _BLOCKED:  # not already moved on by an earlier task's settling
                self._settle_deps(rec, now)
        self._unsubmitted.clear()
        for rec in fresh:  # one change per new task, carrying its settled state
            self._change("submit", rec, submit=True)
            rec.static_row = None
        return [self._snap(self._recs[tid]) for tid, _s, _deps, _d in checked]

    @staticmethod
    def _content_of(rec: _Rec) -> tuple[Any, ...]:
        return _content(
            rec.prompt,
            rec.category,
            rec.spec_priority,
            rec.deps,
            rec.model,
            rec.max_attempts,
            rec.timeout_s,
            rec.metadata,
            rec.run_on_dep_failure,
        )
