"""The TaskBook rebuilt from its store: `restore` at start (or after a failed write) and `absorb`,
which takes other nodes' writes from a shared store's change feed (docs/architecture.md,
"Scale-out"). Both load stored rows as records and rebuild the indexes around them. `absorb`
decides nothing (the node that wrote a row also wrote what it settled); `restore` ends the attempts
a restart interrupted, drops dead workers' assignments and settles what the rows left unsettled,
recording those changes.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable

from ..protocols.errors import Conflict
from ..protocols.tasks import TERMINAL_STATES, Attempt, Outcome, TaskState
from .taskbook_dag import DagBook
from .taskbook_records import _BLOCKED, _FAILED, _READY, _RUNNING, COUNTED_OUTCOMES, StoredTask, _Rec


class ReloadingBook(DagBook):
    """`restore` and `absorb`: records in from stored rows, their indexes rebuilt."""

    def restore(
        self,
        stored: Iterable[StoredTask],
        now: float,
        keep: Callable[[str, Attempt], bool] | None = None,
        keep_target: Callable[[str], bool] | None = None,
    ) -> list[str]:
        """Rebuild the book from the store after a restart. Attempts that were open when the process
        died end INTERRUPTED (not counted) and their tasks go back to READY; manual assignments are
        dropped (workers do not survive a restart). `keep` (a reload while Shoal runs, after a
        failed write) names open attempts a live worker still holds: they stay RUNNING. Returns the
        recovered task ids."""
        if self._recs:
            raise Conflict("restore needs an empty task book")
        rows = sorted(stored, key=lambda s: s.static.seq)
        recs: list[_Rec] = []
        for row in rows:
            rec = self._record(row)
            self._add(rec)
            recs.append(rec)
            self._next_seq = max(self._next_seq, rec.seq + 1)
        for rec in recs:
            self._link(rec)
            if rec.state in TERMINAL_STATES:  # its last change was its finish: the retention clock
                rec.finished = rec.updated
                self._finished.append((rec.finished, rec.seq, rec.id))
        heapq.heapify(self._finished)
        recovered: list[str] = []
        for rec in recs:
            att = rec.open_attempt()
            if keep is not None and rec.state is _RUNNING and att is not None and keep(rec.id, att):
                self._running.setdefault(att.worker, set()).add(rec.id)
                continue
            if rec.state is _RUNNING or att is not None:
                if att is not None:
                    rec.attempts[-1] = Attempt(
                        n=att.n,
                        worker=att.worker,
                        model=att.model,
                        started=att.started,
                        ended=now,
                        outcome=Outcome.INTERRUPTED,
                        reason="shoal restarted while the attempt ran",
                    )
                if rec.state is _RUNNING:
                    self._counts[rec.state] -= 1
                    rec.state = _READY
                    self._counts[rec.state] += 1
                rec.worker = None
                rec.reason = None
                rec.updated = now
                self._change("recover", rec, rec.attempts[-1] if att is not None else None)
                self._event(
                    "task.recovered",
                    {
                        "task_id": rec.id,
                        "attempt": att.n if att else None,
                        "worker": att.worker if att else None,
                    },
                )
                recovered.append(rec.id)
            elif rec.worker is not None and rec.state in (_READY, _BLOCKED, _FAILED):
                if keep_target is not None and keep_target(rec.worker):
                    self._targets.setdefault(rec.worker, set()).add(rec.id)
                    continue
                rec.worker = None
                rec.updated = now
                self._change("unassign", rec)
        for rec in recs:
            if rec.state in (_BLOCKED, _READY):
                rec.unmet = self._dep_status(rec)[0]
        for rec in recs:
            if rec.state in (_BLOCKED, _READY) and rec.bucket is None:
                unmet, doomed = self._dep_status(rec)
                if doomed is not None:
                    self._dep_dead(rec, doomed, now)
                elif unmet and rec.state is _READY:
                    self._settle_deps(rec, now, "block")
                elif not unmet and rec.state is _BLOCKED:
                    self._settle_deps(rec, now, "ready")
                elif rec.state is _READY:
                    self._index(rec)
            elif rec.state is _FAILED:
                nb = rec.not_before if rec.not_before is not None else now
                rec.not_before = nb
                heapq.heappush(self._retry_heap, (nb, rec.seq, rec.id))
        return recovered

    def absorb(self, rows: Iterable[tuple[str, StoredTask | None]], now: float) -> list[tuple[str, str]]:
        """Take other nodes' writes from a shared store's change feed: each task's stored row replaces
        its record (None: another node evicted it). The node that wrote a transition also wrote
        what it settled (a dependant made ready, killed, ...), so absorbing decides nothing and
        records no change or event; a task made ready is offered to idle workers (`drain`).
        Returns (task id, worker) for each attempt that ran here and was taken away (its node was
        thought dead, or another node cancelled it): the caller stops those workers."""
        taken: list[tuple[str, str]] = []
        fresh: list[_Rec] = []
        touched: set[str] = set()
        for tid, row in rows:
            old = self._recs.get(tid)
            needed, held, token = 0, False, 0
            if old is not None:
                att = old.open_attempt()
                if old.state is _RUNNING and att is not None:
                    new_att = row.attempts[-1] if row is not None and row.attempts else None
                    if row is None or new_att is None or new_att.n != att.n or new_att.ended is not None:
                        taken.append((tid, att.worker))
                needed, held = old.needed, old.held
                self._detach(old)
                token = old.token  # heap entries of the old record stay stale
            touched.add(tid)
            if row is None:
                continue
            rec = self._record(row)
            rec.needed, rec.held, rec.token = needed, held, token
            if old is None:  # new here: its dependants already in the book count it as needed
                rec.needed = sum(
                    1
                    for d in self._dependants.get(tid, ())
                    if (dr := self._recs.get(d)) is not None and dr.state is not TaskState.DONE
                )
            self._add(rec)
            self._link(rec)
            self._next_seq = max(self._next_seq, rec.seq + 1)
            fresh.append(rec)
        for rec in fresh:
            state = rec.state
            if state is _RUNNING:
                att = rec.open_attempt()
                if att is not None:
                    self._running.setdefault(att.worker, set()).add(rec.id)
            elif state in TERMINAL_STATES:
                rec.finished = rec.updated
                if not rec.held:
                    heapq.heappush(self._finished, (rec.finished, rec.seq, rec.id))
            else:
                if rec.worker is not None:
                    self._targets.setdefault(rec.worker, set()).add(rec.id)
                if state is _FAILED:
                    nb = rec.not_before if rec.not_before is not None else now
                    rec.not_before = nb
                    heapq.heappush(self._retry_heap, (nb, rec.seq, rec.id))
                elif state is _READY:
                    self._index(rec)
        for tid in touched:  # dependants count what is still unmet (their writer settles them)
            for did in self._dependants.get(tid, ()):
                d = self._recs.get(did)
                if d is not None and d.state is _BLOCKED:
                    d.unmet = self._dep_status(d)[0]
        for rec in fresh:
            if rec.state is _BLOCKED:
                rec.unmet = self._dep_status(rec)[0]
        return taken

    def _record(self, row: StoredTask) -> _Rec:
        """A record from a stored row (its indexes are the caller's to set)."""
        rec = _Rec(row.id, row.static)
        rec.state = row.state
        rec.priority = row.priority
        rec.reason = row.reason
        rec.result = row.result
        rec.not_before = row.not_before
        rec.worker = row.worker
        rec.updated = row.updated
        rec.failed_models = dict(row.failed_models)
        rec.usage = dict(row.usage)
        rec.retry_base = row.retry_base
        rec.dep_failure = row.dep_failure
        rec.version = row.version
        rec.attempts = sorted(row.attempts, key=lambda a: a.n)
        rec.counted = sum(1 for a in rec.attempts if a.n > rec.retry_base and a.outcome in COUNTED_OUTCOMES)
        return rec

    def _detach(self, rec: _Rec) -> None:
        """Take a record out of every index (heap entries go stale by identity and are skipped)."""
        self._unindex(rec)
        att = rec.open_attempt()
        if att is not None:
            running = self._running.get(att.worker)
            if running is not None:
                running.discard(rec.id)
                if not running:
                    del self._running[att.worker]
        if rec.state is not _RUNNING:
            self._forget_target(rec)
        del self._recs[rec.id]
        self._order.remove(rec.seq)
        self._counts[rec.state] -= 1
        for d in rec.deps:
            dependants = self._dependants.get(d)
            if dependants is not None:
                dependants.pop(rec.id, None)
                if not dependants and d not in self._recs:
                    del self._dependants[d]
        if rec.state is not TaskState.DONE:
            self._unneed(rec)
        rec.token += 1
