"""The QueueActor in a cluster (a shared store, issue 18): the feed of other nodes' writes, the nodes
report (dead nodes' work requeued, cluster-wide parks), claims delivered once committed, and the
writes whose compare-and-set another node won."""

from __future__ import annotations

import itertools
import logging
import math
import zlib
from collections.abc import Callable, Mapping
from typing import Any

from ..protocols.errors import Conflict
from ..protocols.tasks import TERMINAL_STATES, Assignment, Outcome, Task, TaskState
from ..runtime.actor import ActorGone, Address, Call
from .cluster import NodesReport, fenced_off, node_of
from .queue_messages import (
    QueueMsg,
    WaitTask,
    _Feed,
    _Landed,
)
from .queue_state import QueueParts
from .store import Ticket
from .taskbook import Change, StoredTask, WorkerView

log = logging.getLogger("shoal.queue")
CLAIM_GRACE_S = 0.1
"""How long a node leaves a task another node made ready to the node preferred for it (below):
longer than that node's claim takes to reach the others' feeds on a loaded machine, short next to
any agent's task."""
BOOK_LOOKS = 64
"""How many of the other nodes' idle workers a write looks at for a booking (`_book_remote`)."""


class ClusterQueue(QueueParts):
    """A part of the QueueActor (see the module docstring); QueueActor composes it."""

    def _elsewhere(self, worker: str) -> bool:
        """A worker of another node (its attempts and assignments survive this node's restart)."""
        node = node_of(worker)
        return self.shared and node is not None and node != self.node_id

    async def _feed_pump(self, address: Address[QueueMsg]) -> None:
        """Other nodes' writes and the nodes report, from the shared store's thread into the mailbox."""
        assert self.cluster is not None
        feed = self.cluster.feed
        async for item in feed:
            try:
                await address.send(_Feed(item))
            except ActorGone:
                return

    # ---- a cluster (shared store) ---------------------------------------------------------------

    def _elsewhere_alive(self, worker: str) -> bool:
        """A worker id of another node that is alive now (a manual assignment may name it)."""
        if not self._elsewhere(worker) or self.nodes is None:
            return False
        node = node_of(worker)
        return any(n.id == node and n.alive for n in self.nodes.nodes)

    def _on_feed(self, msg: _Feed, now: float) -> None:
        item = msg.item
        if isinstance(item, NodesReport):
            self._on_nodes(item, now)
            return
        booked = self._booked_here(item.rows)
        self._stop_taken(self.book.absorb(item.rows, now))
        self._take_bookings(booked, now)
        self._note_remote_workers(item.rows, item.events)
        self._defer_foreign(item.rows, now)
        self._settle_waiters([tid for tid, row in item.rows if row is not None])
        # after the rows: whoever hears an event reads its task as it says
        if item.events and self.cluster is not None:
            self.cluster.deliver_events(item.events)

    # ---- booking: a task claimed for another node's idle worker in the submitter's own write -------

    def _note_remote_workers(
        self, rows: list[tuple[str, StoredTask | None]], events: list[tuple[int, float, str, str, Any]]
    ) -> None:
        """Follow other nodes' idle workers from the feed: a `worker.state` idle event (it names
        the worker's model and capabilities) makes one bookable; any other state, its exit, or a
        row that shows an attempt of it (it took a task, or just finished one: its next idle
        event follows) makes it not. Rows before events, as the feed orders them."""
        if not rows and not events:
            return
        idle = self._remote_idle
        if idle:
            for _tid, row in rows:
                if row is not None and row.attempts:
                    idle.pop(row.attempts[-1].worker, None)
        for _seq, _ts, node, topic, data in events:
            if node == self.node_id or not topic.startswith("worker.") or not isinstance(data, dict):
                continue
            wid = data.get("worker")
            if not isinstance(wid, str) or node_of(wid) != node:
                continue
            idle.pop(wid, None)  # re-inserted last: longest idle first
            if topic != "worker.state" or data.get("state") != "idle" or "capabilities" not in data:
                continue
            model, caps = data.get("model"), data.get("capabilities")
            if caps is not None and not (isinstance(caps, list) and all(isinstance(c, str) for c in caps)):
                continue
            idle[wid] = WorkerView(
                wid, model if isinstance(model, str) else None, None if caps is None else frozenset(caps)
            )

    def _book_remote(self, task_ids: list[str], now: float) -> None:
        """Tasks this node just made ready that no worker of its own took: claim each for an idle
        worker of another live node in this node's own write. That node hands it to the worker as
        the row reaches its feed (`_take_bookings`), with no write of its own: one commit less
        between a submit and the agent reading its prompt. Only while there is no backlog (no
        more ready tasks than idle workers heard of elsewhere: with one, those workers take from
        it at once, and a booking would mostly meet a busy worker), and a worker only for the task
        that is its best pick as this node sees the queue.
        Tasks assigned to a worker (`tasks.assign`) wait for that worker, as ever. At most
        BOOK_LOOKS workers are looked at a write, so a node that heard of hundreds stays cheap."""
        cluster, report, book = self.cluster, self.nodes, self.book
        if cluster is None or report is None:
            return
        if book.counts()[TaskState.READY] > len(self._remote_idle):
            return  # a backlog: the idle workers elsewhere take from it themselves
        wanted: set[str] = set()
        for tid in task_ids:
            key = book.bucket_key(tid)  # None: not ready now (a worker here took it)
            if key is not None and key[0] is None and cluster.mine(book.version_of(tid)):
                wanted.add(tid)  # ready, assigned to no worker, and made ready by this node
        if not wanted:
            return
        alive = {n.id for n in report.nodes if n.alive}
        for view in list(itertools.islice(self._remote_idle.values(), BOOK_LOOKS)):
            if node_of(view.id) not in alive or book.running_on(view.id):
                continue
            pick = book.select(view)
            if pick is None or pick not in wanted:
                continue
            del self._remote_idle[view.id]
            book.claim(pick, view.id, view.model, now)
            self.booked += 1
            wanted.discard(pick)
            if not wanted:
                return

    def _booked_here(self, rows: list[tuple[str, StoredTask | None]]) -> list[tuple[str, str, int]]:
        """(task, worker, attempt) of each row another node claimed for a worker of this node, not
        yet in the book as such (read before the rows are absorbed)."""
        found: list[tuple[str, str, int]] = []
        for tid, row in rows:
            if row is None or row.state is not TaskState.RUNNING or not row.attempts:
                continue
            att = row.attempts[-1]
            if att.ended is not None or node_of(att.worker) != self.node_id:
                continue
            if tid in self.book and (held := self.book.open_attempt(tid)) is not None and held.n == att.n:
                continue
            found.append((tid, att.worker, att.n))
        return found

    def _take_bookings(self, booked: list[tuple[str, str, int]], now: float) -> None:
        """Hand each booked task to its worker if that worker is still idle here; else hand the
        task back (its attempt ends interrupted, not counted; it is ready again, for any node)."""
        for tid, wid, n in booked:
            if not self.book.is_current(tid, n):
                continue
            worker = self._workers.get(wid)
            if worker is not None and self._idle.get(wid) is worker and self.book.running_on(wid) == [tid]:
                del self._idle[wid]
                self.bookings_taken += 1
                self._deliver(worker, self.book.assignment(tid), now)
                continue
            self.bookings_declined += 1
            why = f"worker {wid!r} was not idle when another node booked it"
            self.book.finish(tid, n, Outcome.INTERRUPTED, now, reason=why)

    def _defer_foreign(self, rows: list[tuple[str, StoredTask | None]], now: float) -> None:
        """Tasks another node made ready reach every node's feed at once, and every node with an
        idle worker would claim them: all but one compare-and-set lose, each a wasted write and
        read. So one node is preferred for each (rendezvous hashing of the task id over the live
        nodes that have workers, the writer aside: it claimed in its own write if it could); the
        others leave the task to it for CLAIM_GRACE_S, then offer it as usual (the preferred node
        was busy). A worker turning idle still takes the best ready task at once."""
        report = self.nodes
        if report is None or not self._idle:
            return
        alive = [n for n in report.nodes if n.alive and n.workers > 0]
        if len(alive) < 2 or not any(n.id == self.node_id for n in alive):
            return
        writers = {n.incarnation: n.id for n in report.nodes}
        for tid, row in rows:
            if row is None or row.state is not TaskState.READY:
                continue
            writer = writers.get(row.version >> 32)
            nodes = [n.id for n in alive if n.id != writer]
            if len(nodes) > 1 and _first(tid, nodes) != self.node_id:
                self._deferred[tid] = now + CLAIM_GRACE_S

    def _lane(self) -> Callable[[str], bool] | None:
        """This node's lane of the ready tasks (`TaskBook.set_lane`), when several live nodes have
        workers: the tasks the rendezvous hash over those nodes ranks this node first for. Workers
        of several nodes turning idle at once then pick different tasks, not all the head: each lost
        claim is a wasted write, conflict read and decision, much of it on the database all nodes
        share."""
        nodes, me = self._lane_nodes, self.node_id
        if len(nodes) < 2 or me not in nodes:
            return None
        return lambda tid: _first(tid, nodes) == me

    def _left_elsewhere(self, task_id: str, now: float) -> bool:
        """The task is left to its preferred node for now (`_defer_foreign`)."""
        return self._deferred.get(task_id, -math.inf) > now

    def _deferral_due(self, now: float) -> None:
        """Offer the tasks whose grace ran out (their preferred node did not claim them)."""
        due = [tid for tid, until in self._deferred.items() if until <= now]
        for tid in due:
            del self._deferred[tid]
        ready = [tid for tid in due if tid in self.book and self.book.get(tid).state is TaskState.READY]
        if ready and self._idle:
            self._match_tasks(ready, now)

    def _stop_taken(self, taken: list[tuple[str, str]]) -> None:
        """Stop the workers running what another node requeued or cancelled. A worker whose claim
        lost before it was told (the claim's write had not landed) is not stopped: it never
        started the task, and the landing makes it idle again (no needless respawn of its agent)."""
        for tid, wid in taken:
            if self._unheard.get(wid) != tid:
                self._interrupt(wid, tid, "was taken over by another node")

    def _settle_waiters(self, task_ids: list[str]) -> None:
        for tid in task_ids:
            waiters = self._waiters.get(tid)
            if waiters and tid in self.book and (task := self.book.get(tid)).state in TERMINAL_STATES:
                del self._waiters[tid]
                self._acks.extend((w, task) for w in waiters)

    def _on_nodes(self, report: NodesReport, now: float) -> None:
        """Each heartbeat: requeue what workers of dead nodes held; if this node's own lease was
        lost (it was paused or cut off), stop what its workers run: other nodes took it over."""
        first = self.nodes is None
        before = _shape(self.nodes) if self.nodes is not None else None
        self.nodes = report
        lane_nodes = tuple(n.id for n in report.nodes if n.alive and n.workers > 0)
        if lane_nodes != self._lane_nodes:
            self._lane_nodes = lane_nodes
            self.book.set_lane(self._lane())
        if _shape(report) != before:  # a node joined, left, died or moved its gateway, as seen here
            shape = {n.id: {"state": n.state if n.alive or n.state != "alive" else "dead", "url": n.url}
                     for n in report.nodes}  # fmt: skip
            self.book.announce("nodes.changed", {"node": self.node_id, "nodes": shape})
        if report.lost:
            for wid in list(self._workers):
                for tid in self.book.running_on(wid):
                    self._interrupt(wid, tid, "was taken over: this node lost its lease")
        self._sync_parks(report.parks, now)
        alive = {n.id for n in report.nodes if n.alive}
        known = {n.id for n in report.nodes}
        for wid in [w for w in self._remote_idle if node_of(w) not in alive]:
            del self._remote_idle[wid]  # its node is gone: bookable again once it says idle again
        for wid in sorted(self.book.workers_with_work()):
            node = node_of(wid)
            if node is None or node == self.node_id or node in alive:
                continue
            if node not in known and first:
                continue  # a node registering right now: its row shows next time
            self.reaped += len(self.book.running_on(wid))
            self.book.worker_gone(wid, now, reason=f"node {node!r} is gone (its lease ran out)")

    def _sync_parks(self, parks: Mapping[str, float], now: float) -> None:
        """Models another node parked (a usage limit is the account's) are parked here too, quietly
        (that node announced it); a park gone from the cluster (resumed, expired) ends here too."""
        changed = False
        for model, until in parks.items():
            if until > now and self.book.parked.get(model, -math.inf) < until:
                self.book.parked[model] = until
                self._remote_parks.add(model)
                changed = True
                shown = until if math.isfinite(until) else None
                self.book.announce(
                    "model.park_applied", {"model": model, "until": shown, "node": self.node_id}
                )
        for model in list(self._remote_parks):
            if model not in parks:
                self._remote_parks.discard(model)
                if self.book.parked.pop(model, None) is not None:
                    changed = True
                    self.book.announce("model.park_lifted", {"model": model, "node": self.node_id})
        if changed:
            self._rematch_idle(now)

    def _on_landed(self, msg: _Landed, now: float) -> None:
        if msg.conflicts:
            self.conflicts += len(msg.conflicts)
            self._stop_taken(self.book.absorb(list(msg.conflicts.items()), now))
            for tid, attempt, wid in msg.stale:
                self.book.stale_reports += 1
                self._extra_events.append(
                    ("task.stale_report", {"task_id": tid, "attempt": attempt, "worker": wid, "fenced": True})
                )
        for call in msg.rewait:
            self._waiters.setdefault(call.payload.id, []).append(call)
        self._settle_waiters([*msg.conflicts, *(c.payload.id for c in msg.rewait)])
        for wid, assignment in msg.claims:
            if self._unheard.get(wid) == assignment.task_id:
                del self._unheard[wid]
            worker = self._workers.get(wid)
            att = self.book.open_attempt(assignment.task_id) if assignment.task_id in self.book else None
            won = att is not None and att.worker == wid and att.n == assignment.attempt
            if worker is None:
                continue  # gone meanwhile: worker_gone settled its claim
            if won:
                self._deliver(worker, assignment, now)
            elif worker.state == "busy" and not self.book.running_on(wid):
                worker.state = "idle"  # another node took the task first: take the next one
                self._match_worker(worker, now)
        if not msg.claims and not msg.conflicts and self._broken is not None:
            return


_Pending = tuple[
    Ticket,
    list[tuple[str, dict[str, Any]]],
    list[tuple[Call[Any], Any]],
    list[tuple[str, Assignment]],
    list[Change],
]
"""What the acker waits on: a write's ticket, and the events, replies and claims held for it."""

_FINISH_KINDS = frozenset({"complete", "fail", "requeue", "dead"})


def _fenced(
    conflicts: dict[str, StoredTask | None],
    events: list[tuple[str, dict[str, Any]]],
    acks: list[tuple[Call[Any], Any]],
    changes: list[Change],
) -> tuple[list[tuple[str, dict[str, Any]]], list[tuple[Call[Any], Any]], _Landed]:
    """A write some of whose changes lost their compare-and-set: their events never happened, the
    calls that made them fail with Conflict (a wait waits on), and the reports they carried are
    stale (fenced off: another node owned the attempt by then)."""
    kept = [(t, d) for t, d in events if not fenced_off(d, conflicts)]
    replies: list[tuple[Call[Any], Any]] = []
    rewait: list[Call[Any]] = []
    for call, value in acks:
        ids = _task_ids(value)
        hit = next((tid for tid in ids if tid in conflicts), None)
        if hit is None:
            replies.append((call, value))
        elif isinstance(call.payload, WaitTask):
            rewait.append(call)
        else:
            call.fail(
                Conflict(f"task {hit!r} was changed at another node meanwhile; look at it and try again")
            )
    stale = [
        (c.task_id, c.attempt.n, c.attempt.worker)
        for c in changes
        if c.task_id in conflicts and c.kind in _FINISH_KINDS and c.attempt is not None and c.attempt.ended
    ]
    return kept, replies, _Landed(conflicts, [], stale, rewait)


def _rank(task_id: str, node: str) -> int:
    """A node's rank for a task (rendezvous hashing: every node computes the same order)."""
    return zlib.crc32(f"{task_id}\0{node}".encode())


def _first(task_id: str, nodes: tuple[str, ...] | list[str]) -> str:
    """The node `_rank` puts first for a task: the task id's crc once, each node's suffix run on
    from it (crc32 continues a running value), the same figure `_rank` gives."""
    base = zlib.crc32(task_id.encode())
    best, best_rank = "", -1
    for node in nodes:
        rank = zlib.crc32(b"\0" + node.encode(), base)
        if rank > best_rank:
            best, best_rank = node, rank
    return best


def _shape(report: NodesReport) -> tuple[tuple[str, bool, str, str | None], ...]:
    """What `nodes.changed` reports a change of: each node's id, liveness, state and gateway URL
    (not its worker count, which moves with every heartbeat)."""
    return tuple((n.id, n.alive, n.state, n.url) for n in report.nodes)


def _task_ids(value: Any) -> list[str]:
    if isinstance(value, Task):
        return [value.id]
    if isinstance(value, list | tuple):
        return [v.id for v in value if isinstance(v, Task)]
    return []
