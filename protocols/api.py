"""The gateway's method table: every method's name and its params as an attrs class.

Params are checked strictly against JSON types first (cattrs alone would turn `5` into `"5"` and
`"false"` into `True`), then structured with `shoal.protocols.config.structure`, so a wrong param
raises `ValidationError` naming the field as `params.<name>` (`params.tasks[2].priority` for nested
ones). Every string (and object key) must be encodable as UTF-8: a lone surrogate anywhere is
refused first, naming its path (`params.task.prompt`, `params.tasks[2].deps[0]`); a task's prompt may
not hold a NUL either. Results are the runtime's own attrs classes passed through `unstructure`.
The method names are a public contract: add methods, never rename one.
"""

from __future__ import annotations

import base64
import binascii
import enum
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

import attrs

from .config import structure
from .errors import ValidationError
from .rpc import METHOD_NOT_FOUND, RpcError
from .tasks import TaskSpec, TaskState
from .text import check_text

MAX_LIST_LIMIT = 1000
MAX_TOPICS = 64


def _range(
    lo: float | None = None,
    hi: float | None = None,
    nonempty: bool = False,
    max_len: int | None = None,
    each: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Field metadata checked by `check_json`: bounds, non-empty, length, and the same for list items."""
    meta: dict[str, Any] = {}
    if lo is not None:
        meta["min"] = lo
    if hi is not None:
        meta["max"] = hi
    if nonempty:
        meta["nonempty"] = True
    if max_len is not None:
        meta["max_len"] = max_len
    if each is not None:
        meta["each"] = each
    return meta


_ID = _range(nonempty=True)


@attrs.frozen
class NoParams:
    pass


@attrs.frozen
class LoginParams:
    token: str


@attrs.frozen
class StartParams:
    config: dict[str, Any] | None = None  # a partial config applied before starting


@attrs.frozen
class StopParams:
    drain: bool = False


@attrs.frozen
class HaltParams:
    reason: str = attrs.field(default="halted by an operator", metadata=_range(nonempty=True))


@attrs.frozen
class SeriesParams:
    window_s: float = attrs.field(metadata=_range(lo=1, hi=7 * 86400))
    step_s: float | None = attrs.field(default=None, metadata=_range(lo=0.1, hi=86400))


@attrs.frozen
class ConfigPatchParams:
    partial: dict[str, Any]


@attrs.frozen
class IdParams:
    id: str = attrs.field(metadata=_ID)


@attrs.frozen
class ModelParams:
    model: str = attrs.field(metadata=_ID)


@attrs.frozen
class PauseModelParams:
    model: str = attrs.field(metadata=_ID)
    reason: str = attrs.field(default="paused by operator", metadata=_range(nonempty=True))


@attrs.frozen
class LogsParams:
    id: str = attrs.field(metadata=_ID)
    tail: int | None = attrs.field(default=None, metadata=_range(lo=0))  # bytes from the end


@attrs.frozen
class SetModelParams:
    id: str = attrs.field(metadata=_ID)
    model: str = attrs.field(metadata=_range(nonempty=True))


@attrs.frozen
class SetCapabilitiesParams:
    id: str = attrs.field(metadata=_ID)
    capabilities: list[str] | None  # None: the worker takes every category


@attrs.frozen
class InputParams:
    id: str = attrs.field(metadata=_ID)
    data: str  # base64 of the bytes to type
    force: bool = False  # allow typing into a busy worker

    def decoded(self) -> bytes:
        try:
            return base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ValidationError("params.data", "must be base64", self.data[:40]) from None


@attrs.frozen
class AnswerParams:
    id: str = attrs.field(metadata=_ID)
    choice: int | str  # an option number (1-based) or text

    def checked_choice(self) -> int | str:
        choice = self.choice
        if isinstance(choice, str) and not choice.strip():
            raise ValidationError("params.choice", "must not be empty", choice)
        return choice


@attrs.frozen
class ResizeParams:
    id: str = attrs.field(metadata=_ID)
    rows: int = attrs.field(metadata=_range(lo=1, hi=1000))
    cols: int = attrs.field(metadata=_range(lo=1, hi=1000))


@attrs.frozen
class SubmitParams:
    """Exactly one of `task` (one spec) or `tasks` (several, atomically)."""

    task: TaskSpec | None = None
    tasks: list[TaskSpec] | None = None

    def specs(self) -> list[TaskSpec]:
        if (self.task is None) == (self.tasks is None):
            raise ValidationError("params", "give exactly one of task or tasks")
        if self.task is not None:
            check_text(self.task.prompt, "params.task.prompt", nul=True)  # argv and terminals take no NUL
            return [self.task]
        assert self.tasks is not None
        if not self.tasks:
            raise ValidationError("params.tasks", "must not be empty")
        for i, spec in enumerate(self.tasks):
            check_text(spec.prompt, f"params.tasks[{i}].prompt", nul=True)
        return self.tasks


@attrs.frozen
class DiffParams:
    id: str = attrs.field(metadata=_ID)
    attempt: int | None = attrs.field(default=None, metadata=_range(lo=1))
    stat: bool = False  # git's --stat instead of the patch


@attrs.frozen
class MergeParams:
    id: str = attrs.field(metadata=_ID)
    attempt: int | None = attrs.field(default=None, metadata=_range(lo=1))
    into: str | None = attrs.field(default=None, metadata=_range(nonempty=True, max_len=250))
    squash: bool = False


@attrs.frozen
class ArtifactsParams:
    id: str = attrs.field(metadata=_ID)
    attempt: int | None = attrs.field(default=None, metadata=_range(lo=1))
    name: str | None = attrs.field(default=None, metadata=_range(nonempty=True, max_len=4096))


@attrs.frozen
class PruneParams:
    older_than_s: float | None = attrs.field(default=None, metadata=_range(lo=0))
    base: str | None = attrs.field(default=None, metadata=_range(nonempty=True, max_len=250))


@attrs.frozen
class ListTasksParams:
    state: TaskState | None = None
    limit: int = attrs.field(default=100, metadata=_range(lo=1, hi=MAX_LIST_LIMIT))
    cursor: str | None = None


@attrs.frozen
class BoostParams:
    id: str = attrs.field(metadata=_ID)
    priority: int


@attrs.frozen
class AssignParams:
    id: str = attrs.field(metadata=_ID)
    worker: str = attrs.field(metadata=_range(nonempty=True))


@attrs.frozen
class CompleteParams:
    id: str = attrs.field(metadata=_ID)
    attempt: int = attrs.field(metadata=_range(lo=1))
    status: Literal["done", "failed"]
    result: str | None = None
    reason: str | None = None


@attrs.frozen
class SubscribeParams:
    topics: list[str] = attrs.field(
        metadata=_range(nonempty=True, max_len=MAX_TOPICS, each=_range(nonempty=True, max_len=200))
    )
    since: int | None = attrs.field(default=None, metadata=_range(lo=0))
    batch: bool = False  # True: `events.batch` notifications, many events to a frame


@attrs.frozen
class UnsubscribeParams:
    subscription: int | None = None  # None: every subscription of this connection


@attrs.frozen
class Method:
    name: str
    params: type[Any]
    summary: str
    auth: bool = True  # False: allowed before authentication (auth.login only)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("auth.login", LoginParams, "authenticate this connection with the token", auth=False),
        Method("shoal.version", NoParams, "Shoal's version and the protocol version"),
        Method("swarm.status", NoParams, "state, reason, worker and queue counts, breaker"),
        Method("swarm.start", StartParams, "start taking tasks again after swarm.stop (config?)"),
        Method("swarm.stop", StopParams, "stop taking tasks; drain lets running tasks finish"),
        Method("swarm.halt", HaltParams, "trip the circuit breaker by hand"),
        Method("swarm.resume", NoParams, "leave the halted state"),
        Method("swarm.metrics", NoParams, "a snapshot of counters and gauges"),
        Method("swarm.series", SeriesParams, "time series for charts over window_s"),
        Method("swarm.config.get", NoParams, "the live configuration"),
        Method("swarm.config.patch", ConfigPatchParams, "change configuration live (validated)"),
        Method("workers.list", NoParams, "every worker"),
        Method("workers.get", IdParams, "one worker"),
        Method("workers.logs", LogsParams, "a worker's recent output (base64)"),
        Method("workers.pause", IdParams, "stop giving the worker tasks"),
        Method("workers.resume", IdParams, "give the worker tasks again"),
        Method("workers.restart", IdParams, "respawn the worker's process"),
        Method("workers.kill", IdParams, "stop the worker"),
        Method("workers.set_model", SetModelParams, "run the worker on another model"),
        Method("workers.set_capabilities", SetCapabilitiesParams, "categories the worker takes"),
        Method("workers.attach", IdParams, "stream the worker's output (attach.output)"),
        Method("workers.detach", IdParams, "stop streaming; the worker keeps running"),
        Method("workers.input", InputParams, "type bytes into the worker"),
        Method("workers.resize", ResizeParams, "resize the worker's terminal"),
        Method("workers.answer", AnswerParams, "answer the question the worker's agent waits on"),
        Method("tasks.submit", SubmitParams, "submit one task or several atomically"),
        Method("tasks.get", IdParams, "one task"),
        Method("tasks.list", ListTasksParams, "tasks, newest first, by page"),
        Method("tasks.diff", DiffParams, "the change a task's attempt left in its worktree"),
        Method("tasks.merge", MergeParams, "merge a task's change into a branch of its repository"),
        Method("tasks.artifacts", ArtifactsParams, "the files a task's attempt kept, or one of them"),
        Method("tasks.cancel", IdParams, "cancel a task"),
        Method("tasks.retry", IdParams, "run a failed or dead task again"),
        Method("tasks.skip", IdParams, "mark a task skipped"),
        Method("tasks.boost", BoostParams, "change a task's priority"),
        Method("tasks.assign", AssignParams, "run a task on a given worker"),
        Method("tasks.complete", CompleteParams, "an agent reports its own completion"),
        Method("workspaces.list", NoParams, "Shoal's worktrees and task branches"),
        Method("workspaces.prune", PruneParams, "remove unused worktrees and merged or old task branches"),
        Method("events.subscribe", SubscribeParams, "receive events matching topic patterns"),
        Method("events.unsubscribe", UnsubscribeParams, "stop receiving events"),
        Method("alerts.test", NoParams, "deliver a test alert to every webhook; each one's outcome"),
        Method("models.pause", PauseModelParams, "park a model until resumed: its workers take no new task"),
        Method("models.resume", ModelParams, "end a model's park, whatever parked it"),
        Method("nodes.list", NoParams, "every node of the cluster: state, host, workers, heartbeat, lease"),
    )
}


def parse_params(method: str, params: Mapping[str, Any]) -> Any:
    """Check and structure `params` for `method`; unknown method → RpcError(METHOD_NOT_FOUND)."""
    spec = METHODS.get(method)
    if spec is None:
        raise RpcError(METHOD_NOT_FOUND, f"method not found: {method[:100]}", {"method": method[:100]})
    check_text(params, "params")  # before anything else can echo or store a string
    check_json(params, spec.params, "params")
    return structure(dict(params), spec.params, "params")


# ---- strict JSON type checking ---------------------------------------------------------------

_NONE = type(None)


def _describe(tp: Any) -> str:
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        parts = [_describe(a) for a in args if a is not _NONE]
        text = " or ".join(parts)
        return f"{text} or null" if _NONE in args else text
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if origin in (list, tuple, set, frozenset, Sequence):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin in (dict, Mapping) or tp is dict or attrs.has(tp):
        return "an object"
    return "valid"


def check_json(value: Any, tp: Any, path: str) -> None:
    """Raise ValidationError(path, ...) unless `value` (parsed JSON) fits the annotation `tp`."""
    if tp is Any:
        return
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and _NONE in args:
            return
        options = [a for a in args if a is not _NONE]
        if len(options) == 1:
            check_json(value, options[0], path)
            return
        for option in options:
            try:
                check_json(value, option, path)
                return
            except ValidationError:
                continue
        raise ValidationError(path, f"must be {_describe(tp)}", _shown(value))
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ValidationError(path, f"must be {_describe(tp)}", _shown(value))
        return
    ok = True
    if tp is str:
        ok = isinstance(value, str)
    elif tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif isinstance(tp, type) and issubclass(tp, enum.Enum):
        ok = any(value == m.value for m in tp)
    elif origin in (list, tuple, set, frozenset, Sequence):
        if not isinstance(value, list):
            raise ValidationError(path, f"must be {_describe(tp)}", _shown(value))
        item_tp = args[0] if args else Any
        for i, item in enumerate(value):
            check_json(item, item_tp, f"{path}[{i}]")
        return
    elif origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, dict):
            raise ValidationError(path, "must be an object", _shown(value))
        value_tp = args[1] if len(args) == 2 else Any
        for key, item in value.items():
            check_json(item, value_tp, f"{path}.{key}")
        return
    elif attrs.has(tp):
        _check_attrs(value, tp, path)
        return
    if not ok:
        raise ValidationError(path, f"must be {_describe(tp)}", _shown(value))


def _check_attrs(value: Any, cls: type[Any], path: str) -> None:
    if not isinstance(value, dict):
        raise ValidationError(path, "must be an object", _shown(value))
    attrs.resolve_types(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    unknown = sorted(k for k in value if k not in fields)
    if unknown:
        raise ValidationError(path, f"unknown key(s) {unknown}")
    for name, field in fields.items():
        where = f"{path}.{name}"
        if name not in value:
            if field.default is attrs.NOTHING:
                raise ValidationError(where, "is required")
            continue
        check_json(value[name], field.type, where)
        _check_meta(value[name], field.metadata, where)


def _check_meta(item: Any, meta: Mapping[str, Any], where: str) -> None:
    if item is None or not meta:
        return
    if meta.get("nonempty") and not item:
        raise ValidationError(where, "must not be empty", _shown(item))
    if "max_len" in meta and len(item) > meta["max_len"]:
        raise ValidationError(where, f"must have at most {meta['max_len']} items or characters")
    if "min" in meta and item < meta["min"]:
        raise ValidationError(where, f"must be at least {meta['min']}", item)
    if "max" in meta and item > meta["max"]:
        raise ValidationError(where, f"must be at most {meta['max']}", item)
    if "each" in meta:
        for i, sub in enumerate(item):
            _check_meta(sub, meta["each"], f"{where}[{i}]")


def _shown(value: Any) -> Any:
    """A short form of a bad value for the error message."""
    if isinstance(value, str):
        return value if len(value) <= 60 else value[:57] + "..."
    if isinstance(value, dict | list):
        return None
    return value
