"""The TaskBook's retention of finished tasks.

Finished tasks wait in a heap by finish time and `evict` drops the oldest past
`queue.keep_finished_s` or beyond `queue.keep_finished`, at most `limit` per call, so the owner can
spread a large backlog over many loop steps. A finished task is kept while a task that depends on it
has not succeeded (a retry of that task must still resolve it), so every dependency of a task that
could still run is in the book and dependency resolution never sees an eviction.
"""

from __future__ import annotations

import heapq
import math

from ..protocols.tasks import TERMINAL_STATES, TaskState
from .taskbook_dag import DagBook
from .taskbook_records import Change, _Rec


class RetainingBook(DagBook):
    """The heap of eviction candidates (`_finished`, filled by `_set_state`) and `evict`."""

    def finished_count(self) -> int:
        """Tasks in a terminal state still in the book."""
        counts = self._counts
        return sum(counts.get(s, 0) for s in TERMINAL_STATES)

    def _over_count(self) -> bool:
        keep = self.qcfg.keep_finished
        return keep > 0 and self.finished_count() > keep

    def eviction_deadline(self) -> float | None:
        """When an eviction is due next (epoch s): -inf while over `keep_finished`, else the oldest
        candidate's finish plus `keep_finished_s`; None when none will be. Only peeks (a stale
        candidate can make it early; `evict` then drops the stale entry)."""
        if not self._finished:
            return None
        if self._over_count():
            return -math.inf
        keep_s = self.qcfg.keep_finished_s
        return self._finished[0][0] + keep_s if keep_s > 0 else None

    def eviction_due(self, now: float) -> bool:
        at = self.eviction_deadline()
        return at is not None and at <= now

    def evict(self, now: float, limit: int) -> list[str]:
        """Drop finished tasks past retention, oldest finish first; returns their ids. Looks at no
        more than `4·limit` candidates and evicts at most `limit`, so the caller can spread a backlog
        over loop steps. A task still needed by a dependant is held (kept) until it is not."""
        out: list[str] = []
        heap = self._finished
        recs = self._recs
        keep_s = self.qcfg.keep_finished_s
        budget = 4 * limit
        while heap and len(out) < limit and budget > 0:
            fin, seq, tid = heap[0]
            if not self._over_count() and not (keep_s > 0 and fin + keep_s <= now):
                break  # the same test as eviction_deadline's, so "due" always makes progress
            heapq.heappop(heap)
            budget -= 1
            rec = recs.get(tid)
            if (
                rec is None
                or rec.seq != seq
                or rec.finished != fin
                or rec.held
                or rec.state not in TERMINAL_STATES
            ):
                continue  # stale: evicted, held already, retried, or finished again since
            if rec.needed:
                rec.held = True  # a dependant could still run: kept until it no longer needs it
                continue
            self._evict(rec)
            out.append(tid)
        return out

    def _evict(self, rec: _Rec) -> None:
        """Forget a finished task that nothing needs; the store deletes it with the change."""
        assert rec.state in TERMINAL_STATES and rec.bucket is None and not rec.needed, rec.id
        del self._recs[rec.id]
        self._order.remove(rec.seq)
        self._counts[rec.state] -= 1
        for d in rec.deps:
            dependants = self._dependants.get(d)
            if dependants is not None:
                dependants.pop(rec.id, None)
                if not dependants:
                    del self._dependants[d]
        if rec.state is not TaskState.DONE:  # a done task gave its dependencies up when it succeeded
            self._unneed(rec)
        self._dependants.pop(rec.id, None)  # only done dependants are left; they never look back
        self.evicted += 1
        # the store only needs the id: skip copying the record's dicts (a step makes thousands)
        self._changes.append(
            Change(
                "evict",
                rec.id,
                rec.state,
                rec.priority,
                None,
                None,
                None,
                None,
                rec.updated,
                {},
                {},
                0,
                None,
                expect=rec.version if self.stamp is not None else None,
            )
        )
