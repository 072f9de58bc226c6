"""The gateway's methods that only call the swarm: one `SwarmMethods` per gateway, shared by its connections.

The gateway's dispatch table (actors/gateway.py, `_Connection._handlers`) names these beside the
methods that need a connection's own state (login, attach and detach, subscriptions), which stay
with the connection. Each turns parsed params (protocols/api.py) into a call on the SwarmHandle and
its result into the JSON-ready reply.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..protocols import api
from ..protocols.config import unstructure
from ..protocols.errors import ValidationError

if TYPE_CHECKING:
    from .swarm import SwarmHandle


class SwarmMethods:
    """Handlers of the methods that need nothing but the swarm."""

    def __init__(self, swarm: SwarmHandle) -> None:
        self.swarm = swarm

    # ---- swarm -------------------------------------------------------------------------------

    async def status(self, _p: api.NoParams) -> Any:
        return await self.swarm.status()

    async def start(self, p: api.StartParams) -> Any:
        if p.config is not None:
            await self.swarm.config_patch(p.config)
        await self.swarm.start()
        return await self.swarm.status()

    async def stop(self, p: api.StopParams) -> Any:
        await self.swarm.stop(drain=p.drain)
        return await self.swarm.status()

    async def halt(self, p: api.HaltParams) -> Any:
        await self.swarm.halt(p.reason)
        return await self.swarm.status()

    async def resume(self, _p: api.NoParams) -> Any:
        await self.swarm.resume()
        return await self.swarm.status()

    async def metrics(self, _p: api.NoParams) -> Any:
        return await self.swarm.metrics_snapshot()

    async def series(self, p: api.SeriesParams) -> Any:
        return self.swarm.metrics.series(p.window_s, p.step_s)

    async def config_get(self, _p: api.NoParams) -> Any:
        return self.swarm.shown_config()

    async def config_patch(self, p: api.ConfigPatchParams) -> Any:
        await self.swarm.config_patch(p.partial)
        return self.swarm.shown_config()

    async def nodes(self, _p: api.NoParams) -> Any:
        return self.swarm.nodes()

    async def alerts_test(self, _p: api.NoParams) -> Any:
        return await self.swarm.send_test_alert()

    async def pause_model(self, p: api.PauseModelParams) -> Any:
        return await self.swarm.pause_model(p.model, p.reason)

    async def resume_model(self, p: api.ModelParams) -> Any:
        return await self.swarm.resume_model(p.model)

    # ---- workers -----------------------------------------------------------------------------

    async def workers(self, _p: api.NoParams) -> Any:
        return {"workers": [unstructure(w) for w in self.swarm.workers()]}

    async def worker(self, p: api.IdParams) -> Any:
        return unstructure(self.swarm.worker(p.id))

    async def logs(self, p: api.LogsParams) -> Any:
        data = self.swarm.logs(p.id, p.tail)
        return {"id": p.id, "encoding": "base64", "data": base64.b64encode(data).decode("ascii")}

    async def pause(self, p: api.IdParams) -> Any:
        await self.swarm.pause(p.id)
        return {"ok": True, "id": p.id}

    async def resume_worker(self, p: api.IdParams) -> Any:
        await self.swarm.resume_worker(p.id)
        return {"ok": True, "id": p.id}

    async def restart(self, p: api.IdParams) -> Any:
        await self.swarm.restart(p.id)
        return {"ok": True, "id": p.id}

    async def kill(self, p: api.IdParams) -> Any:
        await self.swarm.kill(p.id)
        return {"ok": True, "id": p.id}

    async def set_model(self, p: api.SetModelParams) -> Any:
        await self.swarm.set_model(p.id, p.model)
        return {"ok": True, "id": p.id, "model": p.model}

    async def set_capabilities(self, p: api.SetCapabilitiesParams) -> Any:
        await self.swarm.set_capabilities(p.id, p.capabilities)
        return {"ok": True, "id": p.id, "capabilities": p.capabilities}

    async def send_input(self, p: api.InputParams) -> Any:
        data = p.decoded()
        await self.swarm.send_input(p.id, data, force=p.force)
        return {"ok": True, "id": p.id, "bytes": len(data)}

    async def answer(self, p: api.AnswerParams) -> Any:
        try:
            return await self.swarm.answer(p.id, p.checked_choice())
        except ValidationError as exc:
            if exc.field == "choice":  # name it as the client sent it
                raise ValidationError("params.choice", exc.message, exc.value) from None
            raise

    async def resize(self, p: api.ResizeParams) -> Any:
        await self.swarm.resize(p.id, p.rows, p.cols)
        return {"ok": True, "id": p.id, "rows": p.rows, "cols": p.cols}

    # ---- tasks -------------------------------------------------------------------------------

    async def submit(self, p: api.SubmitParams) -> Any:
        specs = p.specs()
        if p.task is not None:
            return unstructure(await self.swarm.submit(specs[0]))
        return {"tasks": [unstructure(t) for t in await self.swarm.submit_many(specs)]}

    async def get(self, p: api.IdParams) -> Any:
        return unstructure(await self.swarm.get(p.id))

    async def diff(self, p: api.DiffParams) -> Any:
        return await self.swarm.diff(p.id, p.attempt, p.stat)

    async def merge(self, p: api.MergeParams) -> Any:
        return await self.swarm.merge(p.id, p.attempt, p.into, p.squash)

    async def artifacts(self, p: api.ArtifactsParams) -> Any:
        return await self.swarm.artifacts(p.id, p.attempt, p.name)

    async def workspaces(self, _p: api.NoParams) -> Any:
        return await self.swarm.workspaces()

    async def prune(self, p: api.PruneParams) -> Any:
        return await self.swarm.prune_workspaces(p.older_than_s, p.base)

    async def list_tasks(self, p: api.ListTasksParams) -> Any:
        tasks, cursor = await self.swarm.list(p.state, p.limit, p.cursor)
        return {"tasks": [unstructure(t) for t in tasks], "cursor": cursor}

    def task_op(self, name: str) -> Callable[[api.IdParams], Awaitable[Any]]:
        async def op(p: api.IdParams) -> Any:
            return unstructure(await getattr(self.swarm, name)(p.id))

        return op

    async def boost(self, p: api.BoostParams) -> Any:
        return unstructure(await self.swarm.boost(p.id, p.priority))

    async def assign(self, p: api.AssignParams) -> Any:
        return unstructure(await self.swarm.assign(p.id, p.worker))

    async def complete(self, p: api.CompleteParams) -> Any:
        task = await self.swarm.complete(p.id, p.attempt, p.status, result=p.result, reason=p.reason)
        return unstructure(task)
