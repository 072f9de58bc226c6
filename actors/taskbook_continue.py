"""A task that continues a dependency's agent conversation (`metadata.workspace.continue`).

The dependency's attempt reported its agent's session id and the directory the agent ran in (the
attempt's `usage`: `session_id`, `session_cwd`); the continuing task is routed to the worker that ran
it (a manual target set when the dependency is done, released as any target when that worker goes),
and its claim carries a `Continuation` for the worker to resume from, or the reason it cannot be
(the worker then runs the task fresh and records why: docs/workspaces.md, "Continuing a conversation").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..protocols.tasks import UNCOUNTED_OUTCOMES, Attempt, Continuation, TaskState


def continues(metadata: Mapping[str, Any]) -> str | None:
    """The dependency whose conversation a task continues (checked at submit); None: a fresh one."""
    own = metadata.get("workspace") if isinstance(metadata, Mapping) else None
    dep = own.get("continue") if isinstance(own, Mapping) else None
    return dep if isinstance(dep, str) else None


def continuation(
    dep_id: str, dep_state: TaskState | None, dep_attempts: list[Attempt], own_attempts: list[Attempt]
) -> Continuation:
    """What the next attempt of a task continuing `dep_id` resumes (`own_attempts`: its attempts so
    far, the one being opened last). An attempt that resumed and then failed, crashed or timed out is
    not resumed again: the conversation may be what broke it, so the retry starts afresh."""
    for earlier in own_attempts[:-1]:
        if (earlier.workspace or {}).get("continued") is True and earlier.outcome not in UNCOUNTED_OUTCOMES:
            shown = earlier.outcome.value if earlier.outcome is not None else "unfinished"
            return Continuation(
                dep_id, error=f"attempt {earlier.n} resumed it and ended {shown}: a retry starts afresh"
            )
    if dep_state is None:
        return Continuation(dep_id, error=f"dependency {dep_id!r} is no longer kept (retention)")
    if dep_state is not TaskState.DONE or not dep_attempts:
        return Continuation(dep_id, error=f"dependency {dep_id!r} is {dep_state.value}, not done")
    last = dep_attempts[-1]
    session, cwd = last.usage.get("session_id"), last.usage.get("session_cwd")
    error = None
    if not isinstance(session, str) or not session:
        session = None
        error = f"dependency {dep_id!r} (attempt {last.n}) reported no agent session id"
    return Continuation(dep_id, session, cwd if isinstance(cwd, str) else None, last.worker, error)
