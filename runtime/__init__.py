"""Shoal's actor runtime and its public embedding API.

    async with shoal.runtime.open_swarm(config) as swarm:
        task = await swarm.submit({"prompt": "hello"})
        done = await swarm.wait(task.id)

`open_swarm`, `SwarmHandle` and `connect` are re-exported lazily (PEP 562) because they live in the
layer above (`shoal.actors`) or pull in the websocket client; importing `shoal.runtime` stays cheap
and the import direction protocols <- runtime <- actors holds at module level.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..protocols.config import SwarmConfig, config_from_dict, load_config, patch_config
from ..protocols.errors import Conflict, NotFound, ShoalError, StoreError, ValidationError
from ..protocols.tasks import Task, TaskSpec, TaskState
from .actor import ActorGone, Address, Call, CallTimeout, Mailbox
from .eventbus import Event, EventBus, Subscription

if TYPE_CHECKING:
    from ..actors.client import Client, connect
    from ..actors.swarm import SwarmHandle
    from ..actors.tree import open_swarm

__all__ = [
    "ActorGone",
    "Address",
    "Call",
    "CallTimeout",
    "Client",
    "Conflict",
    "Event",
    "EventBus",
    "Mailbox",
    "NotFound",
    "ShoalError",
    "StoreError",
    "Subscription",
    "SwarmConfig",
    "SwarmHandle",
    "Task",
    "TaskSpec",
    "TaskState",
    "ValidationError",
    "config_from_dict",
    "connect",
    "load_config",
    "open_swarm",
    "patch_config",
]


def __getattr__(name: str) -> Any:
    if name == "open_swarm":
        from ..actors import tree

        return tree.open_swarm
    if name == "SwarmHandle":
        from ..actors import swarm

        return swarm.SwarmHandle
    if name in ("connect", "Client"):
        from ..actors import client

        return getattr(client, name)
    raise AttributeError(f"module 'shoal.runtime' has no attribute {name!r}")
