"""Whether a worker can resume the conversation a task continues (`metadata.workspace.continue`).

The agent CLI keeps a conversation per working directory (Claude Code: under its configuration
directory's `projects/<cwd>`), and the dependency's transcript names that directory's files: its
conversation is resumed only by an agent starting in the directory it ran in, with the profile's
`resume_args`. Anything else runs the task fresh, and the attempt's record says why (never silently).
"""

from __future__ import annotations

from typing import Any

from ..protocols.config import ProfileConfig
from ..protocols.profiles import resume_argv
from ..protocols.tasks import Continuation


def plan_resume(
    continuation: Continuation, profile: ProfileConfig, profile_name: str, here: str
) -> tuple[list[str] | None, dict[str, Any]]:
    """(the arguments that resume the conversation, None: start fresh; the attempt's record of it)."""
    record: dict[str, Any] = {"continue_from": continuation.task_id}
    error = continuation.error
    args: list[str] | None = None
    if error is None and continuation.session is None:
        error = f"dependency {continuation.task_id!r} reported no agent session id"
    if error is None and continuation.session is not None:
        args = resume_argv(profile, continuation.session)
        if args is None:
            error = f"profile {profile_name!r} cannot resume a conversation (its resume_args are empty)"
    if error is None and continuation.cwd is not None and continuation.cwd != here:
        by = f" by worker {continuation.worker}" if continuation.worker else ""
        error = (
            f"the conversation was kept for {continuation.cwd}{by}; this worker works in {here}"
            " (the agent resumes a conversation only in its own directory)"
        )
    if error is not None:
        return None, {**record, "continued": False, "continue_error": error}
    return args, {**record, "continued": True, "session": continuation.session}
