"""Durability: a real child process runs a queue on a real SQLite file and is SIGKILLed mid-stream.

The child prints a line for every acknowledged submit and every acknowledged completion; whatever
it printed before the kill must be on disk afterwards, no result may be recorded twice, and a restart
must put the tasks that were running back in the queue with an interrupted attempt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio

from shoal.actors.queue import GetTask, QueueActor, QueueStats, WorkerAvailable
from shoal.actors.store import Store
from shoal.protocols.config import SwarmConfig
from shoal.protocols.tasks import Outcome, TaskState
from shoal.protocols.workers import Assign
from shoal.runtime.actor import Mailbox
from shoal.runtime.eventbus import EventBus

CHILD = r"""
import sys
import trio
from shoal.actors.queue import CompleteTask, QueueActor, Submit, WorkerAvailable
from shoal.actors.store import Store
from shoal.protocols.config import SwarmConfig
from shoal.protocols.tasks import TaskSpec
from shoal.protocols.workers import Assign
from shoal.runtime.actor import Mailbox
from shoal.runtime.eventbus import EventBus

path, round_no = sys.argv[1], sys.argv[2]

def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()

async def submitter(queue, k):
    i = 0
    while True:
        size = 1 if i % 3 else 3  # some multi-task (atomic) submits
        ids = [f"r{round_no}-s{k}-{i}-{j}" for j in range(size)]
        say("TRY", *ids)
        specs = tuple(TaskSpec(f"prompt {t}", id=t, category=f"c{k}") for t in ids)
        await queue.call(Submit(specs), timeout=None)
        say("ACK", *ids)
        i += 1

async def finisher(queue, wid):
    async with Mailbox(wid) as mb:
        await queue.send(WorkerAvailable(wid, None, None, (), mb.address))
        async for msg in mb:
            if not isinstance(msg, Assign):
                continue
            a = msg.assignment
            result = f"result-{a.task_id}-{a.attempt}"
            await queue.call(CompleteTask(a.task_id, a.attempt, "done", result), timeout=None)
            say("DONE", a.task_id, a.attempt)
            await queue.send(WorkerAvailable(wid, None, None, (), mb.address))

async def hanger(queue, wid):
    async with Mailbox(wid) as mb:
        await queue.send(WorkerAvailable(wid, None, None, (), mb.address))
        async for msg in mb:
            if isinstance(msg, Assign):
                say("HOLD", msg.assignment.task_id, msg.assignment.attempt)

async def main():
    store = await Store.open(path)
    actor = QueueActor(SwarmConfig(), store, EventBus())
    async with trio.open_nursery() as nursery:
        queue = await nursery.start(actor.run)
        say("UP")
        for w in range(2):
            nursery.start_soon(hanger, queue, f"r{round_no}-hang{w}")
        for w in range(3):
            nursery.start_soon(finisher, queue, f"r{round_no}-fin{w}")
        for k in range(4):
            nursery.start_soon(submitter, queue, k)

trio.run(main)
"""


async def run_child_until_killed(
    script: Path, db: Path, round_no: int, acks: int, dones: int
) -> list[list[str]]:
    """Run the child until it printed `acks` ACK and `dones` DONE lines, SIGKILL it, return every
    complete line it wrote."""
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script), str(db), str(round_no)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    buf = b""
    lines: list[list[str]] = []
    killed = False
    try:
        with trio.fail_after(120):
            while True:
                chunk = await proc.stdout.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                *complete, buf = buf.split(b"\n")
                lines.extend(line.decode().split() for line in complete)
                n_ack = sum(1 for w in lines if w[0] == "ACK")
                n_done = sum(1 for w in lines if w[0] == "DONE")
                if not killed and n_ack >= acks and n_done >= dones:
                    os.kill(proc.pid, signal.SIGKILL)  # mid-stream: submits and commits in flight
                    killed = True
    finally:
        if proc.returncode is None and not killed:
            proc.kill()
        await proc.wait()
        await proc.stdout.aclose()
    assert killed, f"child ended on its own: {lines[-3:]}"
    assert proc.returncode == -signal.SIGKILL
    return lines  # a partial last line (cut by the kill) is dropped: it was never fully printed


def check_store(rows: dict[str, Any], lines: list[list[str]]) -> None:
    acked = [t for w in lines if w[0] == "ACK" for t in w[1:]]
    missing = [t for t in acked if t not in rows]
    assert not missing, f"{len(missing)} acknowledged task(s) lost: {missing[:5]}"
    for w in lines:  # atomic batches: all or nothing, acknowledged or not
        if w[0] == "TRY":
            present = [t in rows for t in w[1:]]
            assert all(present) or not any(present), f"partial batch {w[1:]}"
    for w in lines:
        if w[0] == "DONE":
            tid, attempt = w[1], int(w[2])
            row = rows[tid]
            assert row.state is TaskState.DONE, (tid, row.state)
            assert row.result == f"result-{tid}-{attempt}"
    for tid, row in rows.items():
        done = [a for a in row.attempts if a.outcome is Outcome.DONE]
        assert len(done) <= 1, f"{tid} completed twice"
        if row.state is TaskState.DONE:
            assert len(done) == 1 and row.result == f"result-{tid}-{done[0].n}"
        assert [a.n for a in row.attempts] == list(range(1, len(row.attempts) + 1))
        open_attempts = [a for a in row.attempts if a.ended is None]
        assert len(open_attempts) == (1 if row.state is TaskState.RUNNING else 0), (
            tid,
            row.state,
            row.attempts,
        )


async def test_sigkill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, no_leaks: None) -> None:
    script = tmp_path / "child.py"
    await trio.Path(script).write_text(CHILD)
    db = tmp_path / "state" / "shoal.db"
    all_lines: list[list[str]] = []
    held_before: set[str] = set()
    for round_no in (1, 2, 3):
        lines = await run_child_until_killed(script, db, round_no, acks=150, dones=40)
        assert lines[0] == ["UP"]
        all_lines.extend(lines)
        async with await Store.open(db) as store:
            rows = {r.id: r for r in await store.load_all()}
        check_store(rows, all_lines)
        held = {w[1] for w in lines if w[0] == "HOLD"}
        assert held, "the hanging workers took nothing"
        # tasks held at an earlier kill were recovered by this round's child (interrupted attempt)
        for tid in held_before:
            interrupted = [a for a in rows[tid].attempts if a.outcome is Outcome.INTERRUPTED]
            assert interrupted and interrupted[0].reason == "shoal restarted while the attempt ran"
        held_before = held
    # finally, recover in this process: nothing is left running, held tasks are back in the queue
    running = [tid for tid, r in rows.items() if r.state is TaskState.RUNNING]
    assert running, "expected tasks running at the last kill"
    async with await Store.open(db) as store:
        actor = QueueActor(SwarmConfig(), store, EventBus())
        async with trio.open_nursery() as nursery:
            queue = await nursery.start(actor.run)
            stats = await queue.call(QueueStats())
            assert stats.running == 0 and stats.total == len(rows)
            assert stats.done == sum(1 for r in rows.values() if r.state is TaskState.DONE)
            for tid in running:
                t = await queue.call(GetTask(tid))
                assert t.state is TaskState.READY and t.attempts[-1].outcome is Outcome.INTERRUPTED
            # and they run again, as a fresh attempt
            async with Mailbox[Any]("w") as mb:
                await queue.send(WorkerAvailable("w", None, None, (), mb.address))
                with trio.fail_after(30):
                    msg = await mb.receive()
                assert isinstance(msg, Assign)
            nursery.cancel_scope.cancel()
