"""What a worker types into its agent: a task's prompt (the dialect's paste, pause and Enter) and
the answer to a menu, each watched on the worker's timer and typed again when the agent shows it
never arrived.

A task's Enter counts as lost when, RESUBMIT_AFTER_S after it went out, the agent's prompt still
holds the task's text and it shows no sign of work; it is pressed again (at most RESUBMITS times,
looked at for RESUBMIT_WINDOW_S). Claude Code 2.0.x takes an Enter within ~100 ms of a paste as
pasted text, and a task written the moment its prompt appears as typed in cooked mode (its input is
not raw yet). An answer is typed ANSWER_DELAY_S after its menu appeared (protocols/menus.py) and
again if the agent wrote nothing within RETYPE_AFTER_S.
"""

from __future__ import annotations

import logging
import re

import attrs

from ..protocols import menus
from ..protocols.dialects.base import Dialect
from ..protocols.tasks import Assignment
from .worker_io import Incarnation

log = logging.getLogger("shoal.worker")

RESUBMIT_AFTER_S = 0.4
RESUBMITS = 3
RESUBMIT_WINDOW_S = 5.0
KEY_GAP_S = 0.1  # between the arrow keys and the Enter of an answer to a menu without numbers
_KEYS = re.compile(rb"(\x1b\[[AB])")


@attrs.define(eq=False)
class Typing:
    """An answer to a menu being typed: written at `at`, typed again if nothing moved on screen.

    Claude Code ignores keys for ~0.2 s after it draws a menu, so the keys go out ANSWER_DELAY_S
    after the menu appeared; if the agent writes nothing within RETYPE_AFTER_S of a write, the keys
    were swallowed and are written again (at most RETYPES times)."""

    gen: int
    keys: bytes
    at: float
    check_at: float | None = None
    mark: int = 0  # output bytes seen when the keys were written
    tries: int = 0


@attrs.define(eq=False)
class Submit:
    """A task's Enter, pressed again while the agent shows it never arrived (`unsent_input_since`)."""

    task_id: str
    enter: bytes
    due: float  # when the Enter was due to be written (after the writer's pauses)
    presses: int = 0
    check_at: float | None = None  # the next look at the prompt (the worker's timer)


def encode(dialect: Dialect, assignment: Assignment) -> list[tuple[float, bytes]]:
    """The writes that submit a task, with the dialect's pauses (paste, then Enter)."""
    return [(delay, data) for delay, data in dialect.encode_steps(assignment) if data]


class Keystrokes:
    """The worker's pending keystrokes: the answer being typed and the task's Enter being watched.

    `deadlines()` join the worker's timers; `on_time` does what is due. Both look at the current
    incarnation only: keys meant for a process that has ended are dropped."""

    def __init__(self, worker_id: str) -> None:
        self.worker_id = worker_id
        self.typing: Typing | None = None
        self.submit: Submit | None = None  # the running task's Enter, watched until it arrives

    def deadlines(self) -> list[float | None]:
        """When the worker must look again (None entries: nothing pending of that kind)."""
        out: list[float | None] = []
        if self.typing is not None:
            out.append(self.typing.at if self.typing.check_at is None else self.typing.check_at)
        if self.submit is not None:
            out.append(self.submit.check_at)
        return out

    def write_task(self, inc: Incarnation, assignment: Assignment, now: float) -> None:
        """Write the task's prompt, and watch its Enter when the dialect can tell it was lost."""
        steps = encode(inc.dialect, assignment)
        for delay, data in steps:
            inc.write(data, delay)
        # the Enter: its own write after a paste, or the last byte of the prompt typed as is (a TUI
        # that has not turned bracketed paste on yet)
        enter = steps[-1][1] if len(steps) == 2 else steps[-1][1][-1:] if steps else b""
        if enter in (b"\r", b"\n") and hasattr(inc.dialect, "unsent_input_since"):
            due = now + sum(delay for delay, _ in steps)
            self.submit = Submit(assignment.task_id, enter, due, check_at=due + RESUBMIT_AFTER_S)

    def type_answer(
        self, inc: Incarnation | None, keys: bytes, delay: float, now: float, *, again: bool = False
    ) -> bool:
        """Type `keys` after `delay`; False when these very keys are already on their way (unless
        `again`: a person answered a new question)."""
        if inc is None:
            return False
        typing = self.typing
        if not again and typing is not None and typing.gen == inc.gen and typing.keys == keys:
            return False
        self.typing = Typing(inc.gen, keys, now + delay)
        return True

    def on_time(self, now: float, inc: Incarnation | None, output_total: int, task_id: str | None) -> None:
        """Type the answer when due (again when the screen did not move), then look at the Enter."""
        if self.typing is not None:
            self._type_due(now, inc, output_total)
        if self.submit is not None:
            self._check_submit(now, inc, task_id)

    def _type_due(self, now: float, inc: Incarnation | None, output_total: int) -> None:
        typing = self.typing
        if typing is None:
            return
        if inc is None or inc.gen != typing.gen:
            self.typing = None
            return
        if typing.check_at is None:
            if now < typing.at:
                return
        elif now < typing.check_at:
            return
        elif output_total != typing.mark or typing.tries > menus.RETYPES:
            self.typing = None  # the agent reacted (or never will): done
            return
        if typing.tries:
            log.info(
                "worker %s: the agent did not react to the answer %r: typing it again",
                self.worker_id,
                typing.keys,
            )
        for i, key in enumerate(k for k in _KEYS.split(typing.keys) if k):
            inc.write(key, KEY_GAP_S if i else 0.0)  # one key per read, as typed
        typing.mark = output_total
        typing.check_at = now + menus.RETYPE_AFTER_S
        typing.tries += 1

    def _check_submit(self, now: float, inc: Incarnation | None, task_id: str | None) -> None:
        """Press a task's Enter again while, RESUBMIT_AFTER_S after each press, the agent's prompt
        still holds the task's text and it shows no sign of work (the Enter was lost). The agent need
        not redraw after a lost Enter, so this looks on the worker's timer, not on output."""
        submit = self.submit
        if submit is None or submit.check_at is None or now < submit.check_at:
            return
        unsent = getattr(inc.dialect, "unsent_input_since", None) if inc is not None else None
        if inc is None or unsent is None or task_id != submit.task_id:
            self.submit = None
            return
        if unsent() is not None:
            submit.presses += 1
            log.info("worker %s: task %s: its Enter was lost, pressed again", self.worker_id, submit.task_id)
            inc.write(submit.enter)
        nxt = submit.check_at + RESUBMIT_AFTER_S
        done = submit.presses >= RESUBMITS or nxt >= submit.due + RESUBMIT_WINDOW_S
        submit.check_at = None if done else nxt
        if done:
            self.submit = None
