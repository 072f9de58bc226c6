"""Configuration: attrs classes structured by cattrs from TOML or dicts.

Every section is a frozen attrs class with defaults, so `SwarmConfig()` is a working embedded setup
(SQLite state, the `fake` profile). `load_config` / `config_from_dict` refuse unknown keys and bad
values with a `ValidationError` that names the dotted field and the value; `patch_config` applies a
partial dict (hot configuration) and validates the whole result, leaving the old config untouched on
error.
"""

from __future__ import annotations

import difflib
import re
import string
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
from attrs import validators as v

from .errors import ValidationError
from .taskworkspace import relative_glob
from .text import check_text


class FieldValueError(ValueError):
    """A validator's complaint about one field; `structure` turns it into the dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)


def _nonneg(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise FieldValueError(attr.name, f"must be >= 0, got {value!r}")


def _pos(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise FieldValueError(attr.name, f"must be > 0, got {value!r}")


def _at_most(limit: float) -> Any:
    def check(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
        if not value <= limit:
            raise FieldValueError(attr.name, f"must be <= {limit:g}, got {value!r}")

    return check


def _resume_args(_inst: object, attr: attrs.Attribute[Any], value: tuple[str, ...] | None) -> None:
    """Each item is literal text or holds `{session}` (the dependency's session id), nothing else."""
    for i, item in enumerate(value or ()):
        try:
            names = [name for _lit, name, _spec, _conv in string.Formatter().parse(item) if name is not None]
        except ValueError as exc:
            raise FieldValueError(f"{attr.name}[{i}]", f"bad placeholder syntax: {exc}") from None
        if any(name != "session" for name in names):
            raise FieldValueError(f"{attr.name}[{i}]", f"only {{session}} may be used, got {item!r}")


def _factor_ok(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not value >= 1.0:
        raise FieldValueError(attr.name, f"must be >= 1, got {value!r}")


def _fraction(_inst: object, attr: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise FieldValueError(attr.name, f"must be between 0 and 1, got {value!r}")


@attrs.frozen
class BackoffConfig:
    """delay = min(max_s, min_s * factor**n) * (1 + jitter * U[0,1)); n resets after reset_after_s up."""

    min_s: float = attrs.field(default=0.5, validator=_nonneg)
    max_s: float = attrs.field(default=30.0, validator=_nonneg)
    factor: float = attrs.field(default=2.0, validator=v.and_(_pos, _factor_ok))
    jitter: float = attrs.field(default=0.2, validator=_fraction)
    reset_after_s: float = attrs.field(default=60.0, validator=_nonneg)


@attrs.frozen
class QueueConfig:
    max_prompt_bytes: int = attrs.field(default=1_000_000, validator=_pos)
    default_max_attempts: int = attrs.field(default=3, validator=_pos)
    retry_backoff: BackoffConfig = BackoffConfig(min_s=1.0, max_s=60.0, factor=2.0, jitter=0.1)
    affinity_bonus: int = attrs.field(default=2, validator=_nonneg)  # added per matching recent category
    history_size: int = attrs.field(default=10, validator=_pos)  # categories remembered per worker
    model_failure_limit: int = attrs.field(default=2, validator=_pos)  # failures before avoiding a model
    # Retention of finished tasks (done, dead, cancelled, skipped), in memory and in the store; 0: no
    # limit. A long-lived service would otherwise grow without bound (docs/queue.md, "Retention").
    keep_finished_s: float = attrs.field(default=604_800.0, validator=_nonneg)  # by finish time (7 days)
    keep_finished: int = attrs.field(default=100_000, validator=_nonneg)  # the newest this many
    evict_batch: int = attrs.field(default=250, validator=_pos)  # evictions per loop step at most


STORE_BACKENDS = ("sqlite", "postgresql", "postgres")  # postgres: libpq's short spelling


def parse_store_url(url: str) -> tuple[str, str]:
    """`(backend, location)` of a store URL, SQLAlchemy's spelling: `sqlite:///rel.db` (relative),
    `sqlite:////abs/path.db` (absolute), `sqlite://` (in memory). A bad URL is a FieldValueError
    saying what is wrong and what would be right."""
    if not isinstance(url, str):
        raise FieldValueError("url", f"must be a string like sqlite:////path/to/shoal.db, got {url!r}")
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise FieldValueError("url", f"must look like sqlite:////path/to/shoal.db, got {url!r}")
    backend = scheme.lower().split("+")[0]
    if backend not in STORE_BACKENDS:
        raise FieldValueError(
            "url", f"backend {scheme!r} is not available in this build (known: {', '.join(STORE_BACKENDS)})"
        )
    if backend != "sqlite":  # libpq reads the rest (host, port, database, user, password, options)
        if rest in ("", "/"):
            raise FieldValueError("url", "a PostgreSQL URL is postgresql://user:password@host:port/database")
        return "postgresql", url
    if rest == "":
        return backend, ":memory:"
    if not rest.startswith("/") or rest == "/":
        raise FieldValueError(
            "url", f"{url!r}: a SQLite URL is sqlite:///relative.db, sqlite:////absolute.db or sqlite://"
        )
    location = rest[1:]
    if "?" in location or "#" in location:
        raise FieldValueError("url", f"{url!r}: query strings and fragments are not supported")
    return backend, location


def _store_url_ok(value: str | None) -> None:
    if value is not None:
        parse_store_url(value)


@attrs.frozen
class StoreConfig:
    # where the tasks live: a URL naming the backend (sqlite:///relative.db, sqlite:////abs.db, sqlite://
    # for memory); None: $SHOAL_STORE_URL, else `path`, else <state_dir>/shoal.db (see actors/taskstore.py)
    url: str | None = attrs.field(default=None, validator=lambda _i, _a, v: _store_url_ok(v))
    path: str | None = None  # None: <state_dir>/shoal.db; ":memory:" for tests
    synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL"
    max_batch: int = attrs.field(default=1024, validator=_pos)  # changes per group commit at most

    def __attrs_post_init__(self) -> None:
        if self.url is not None and self.path is not None:
            raise FieldValueError("url", "set store.url or store.path, not both (path is the older spelling)")


@attrs.frozen
class WorkspaceConfig:
    """Where a profile's workers work (docs/configuration.md, `[workers.profiles.X.workspace]`).

    `none`: every worker in the profile's `cwd` (the default). `worktree`: each worker in its own git
    worktree of `repo`, each task on its own branch started from `base` (None: the repo's HEAD).
    """

    mode: Literal["none", "worktree", "copy"] = "none"
    repo: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    base: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    # a check run in the worktree once the agent says done (a shell command, e.g. "pytest -q"): exit 0
    # or the attempt fails with `verify failed` and the retry is told why (docs/workspaces.md)
    verify: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    verify_timeout_s: float = attrs.field(default=600.0, validator=_pos)
    # the retry of a failed check: "continue" from the failed attempt's commit, or "fresh" from the base
    verify_retry: Literal["continue", "fresh"] = "continue"
    # a persistent agent starts each task with a fresh conversation (a new process): nothing of one task's
    # context leaks into the next one's branch
    fresh_context: bool = True
    # a git remote each attempt's branch is pushed to when it ends (e.g. "origin"); None: no push
    push: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    # files an attempt leaves for its result (globs inside the worktree, e.g. "report.md", "out/*.json"):
    # copied into <state_dir>/artifacts when it ends, listed on the attempt (docs/workspaces.md)
    artifacts: tuple[str, ...] = ()
    artifact_max_mb: float = attrs.field(default=100.0, validator=_pos)  # a bigger file is skipped, reported
    copy_max_mb: float = attrs.field(default=1024.0, validator=_pos)  # mode = "copy": the directory's cap
    # repositories a task may name instead of `repo` (metadata.workspace.repo, `shoal submit --repo`);
    # `repo` itself is always allowed; compared after expanduser and realpath (actors/workrepos.py)
    allowed_repos: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        if self.mode != "none" and self.repo is None:
            raise ValueError(f'mode = "{self.mode}" needs a repo (the repository, or directory, to work in)')
        for i, allowed in enumerate(self.allowed_repos):
            if not allowed.strip() or "\x00" in allowed:
                raise ValueError(f"allowed_repos[{i}]: must be a path to a git repository, got {allowed!r}")
        for pattern in self.artifacts:
            if not relative_glob(pattern):
                raise ValueError(f"artifacts: {pattern!r} must be a relative glob inside the worktree")


@attrs.frozen
class ProfileConfig:
    """How to start an agent and talk to it. `argv` items may hold {model}, {prompt}, {worker}, {cwd}."""

    argv: tuple[str, ...]
    dialect: Literal["prompt", "marker", "idle", "stream-json", "oneshot"] = "prompt"
    transport: Literal["pty", "pipe"] | None = None  # None: the dialect's default
    env: dict[str, str] = attrs.field(factory=dict)
    cwd: str | None = None
    rows: int = attrs.field(default=40, validator=_pos)
    cols: int = attrs.field(default=120, validator=_pos)
    startup_timeout_s: float = attrs.field(default=30.0, validator=_pos)
    stop_timeout_s: float = attrs.field(default=3.0, validator=_pos)  # per rung of the stop ladder
    context_refresh_percent: float = attrs.field(default=80.0, validator=v.and_(_nonneg, _at_most(100)))
    options: dict[str, Any] = attrs.field(factory=dict)  # dialect options (patterns, markers, idle_ms)
    models: tuple[str, ...] = ()  # models this profile can run; empty: any
    # what one worker of this profile costs in memory (MiB), for the scaler's free-memory floor; None:
    # the peak RSS measured on this profile's workers, else an estimate (docs/scaling.md, "Memory")
    memory_mb: int | None = attrs.field(default=None, validator=v.optional(_pos))
    workspace: WorkspaceConfig = attrs.field(factory=WorkspaceConfig)  # where its workers work
    # the arguments that make the agent resume a conversation, `{session}` its id (a task continuing a
    # dependency's: docs/workspaces.md); None: Claude Code's `--resume {session}` for a `claude` command,
    # nothing for others; []: this agent cannot resume one (such a task runs fresh, saying why)
    resume_args: tuple[str, ...] | None = attrs.field(default=None, validator=_resume_args)


@attrs.frozen
class WorkersConfig:
    profile: str = "fake"  # the profile new workers start with
    profiles: dict[str, ProfileConfig] = attrs.field(factory=dict)  # user profiles, merged over built-ins
    ring_buffer_kib: int = attrs.field(default=256, validator=_pos)
    sample_interval_s: float = attrs.field(default=2.0, validator=_pos)  # CPU/memory sampling


@attrs.frozen
class ScalingConfig:
    min_workers: int = attrs.field(default=0, validator=_nonneg)
    max_workers: int = attrs.field(default=8, validator=_nonneg)
    tasks_per_worker: int = attrs.field(default=1, validator=_pos)
    max_spawn_per_tick: int = attrs.field(default=8, validator=_pos)
    tick_s: float = attrs.field(default=1.0, validator=_pos)
    utilisation_threshold: float = attrs.field(default=0.8, validator=_fraction)
    predictive: bool = True
    arrival_window_s: float = attrs.field(default=60.0, validator=_pos)
    idle_s: float = attrs.field(default=60.0, validator=_nonneg)
    stabilisation_s: float = attrs.field(default=300.0, validator=_nonneg)
    max_retire_per_tick: int = attrs.field(default=1, validator=_pos)

    def __attrs_post_init__(self) -> None:
        if self.min_workers > self.max_workers:
            raise ValueError("min_workers must not exceed max_workers")


@attrs.frozen
class NodeConfig:
    """This machine's limits: the scaler never spawns a worker that would take free memory below
    `min_free_memory_mb` (docs/scaling.md, "Memory")."""

    min_free_memory_mb: int = attrs.field(default=512, validator=_nonneg)
    # what a worker of a profile with no `memory_mb`, no measurement and no built-in estimate costs
    worker_memory_mb: int = attrs.field(default=256, validator=_pos)
    # where free memory is read: a /proc/meminfo-style file whose MemAvailable (kB) is the free memory
    meminfo_path: str = "/proc/meminfo"
    # a cluster (store.url on PostgreSQL; docs/operations.md, "Running a cluster"): this node's name,
    # unique in the cluster (None: the host name); its lease, renewed every heartbeat_s: a node silent
    # for lease_s is dead and its running tasks run again elsewhere; poll_s: the change feed's safety poll
    id: str | None = attrs.field(default=None, validator=v.optional(v.min_len(1)))
    lease_s: float = attrs.field(default=5.0, validator=_pos)
    heartbeat_s: float = attrs.field(default=1.0, validator=_pos)
    poll_s: float = attrs.field(default=2.0, validator=_pos)
    # this machine's own cap on workers (None: scaling.max_workers, which in a cluster holds for all
    # nodes together)
    max_workers: int | None = attrs.field(default=None, validator=v.optional(_nonneg))

    def __attrs_post_init__(self) -> None:
        if self.heartbeat_s >= self.lease_s:
            raise FieldValueError("heartbeat_s", f"must be shorter than lease_s ({self.lease_s})")


@attrs.frozen
class BreakerConfig:
    consecutive_spawn_failures: int = attrs.field(default=5, validator=_pos)
    crash_rate_max: int = attrs.field(default=10, validator=_pos)  # crashes within crash_window_s
    crash_window_s: float = attrs.field(default=60.0, validator=_pos)
    on_halt: Literal["finish", "stop"] = "finish"  # what live workers do when the swarm halts
    canary_after_s: float | None = None  # half-open: try one worker after this cool-down


@attrs.frozen
class SupervisionConfig:
    backoff: BackoffConfig = BackoffConfig()
    lineage_max_restarts: int = attrs.field(default=5, validator=_nonneg)
    lineage_period_s: float = attrs.field(default=300.0, validator=_pos)
    swarm_max_restarts: int = attrs.field(default=100, validator=_nonneg)
    swarm_period_s: float = attrs.field(default=300.0, validator=_pos)
    breaker: BreakerConfig = BreakerConfig()


@attrs.frozen
class ModelPrice:
    input_per_mtok: float = attrs.field(default=0.0, validator=_nonneg)
    output_per_mtok: float = attrs.field(default=0.0, validator=_nonneg)
    per_second: float = attrs.field(default=0.0, validator=_nonneg)  # when tokens are unknown


@attrs.frozen
class ModelsConfig:
    known: tuple[str, ...] = ("haiku", "sonnet", "opus")  # weakest first: the escalation order
    default: str = "sonnet"
    weights: dict[str, float] = attrs.field(factory=dict)  # share of unpinned work, e.g. {"haiku": 0.3}
    category_models: dict[str, str] = attrs.field(factory=dict)  # e.g. {"review": "opus"}
    fallback: dict[str, tuple[str, ...]] = attrs.field(factory=dict)  # e.g. {"sonnet": ("haiku",)}
    escalate: bool = True  # retry a repeatedly failing task on the next stronger model
    prices: dict[str, ModelPrice] = attrs.field(factory=dict)

    def __attrs_post_init__(self) -> None:
        if self.default not in self.known:
            raise ValueError(f"default model {self.default!r} is not in known {list(self.known)}")
        for group, names in (
            ("weights", list(self.weights)),
            ("category_models", list(self.category_models.values())),
            ("fallback", [*self.fallback, *(m for chain in self.fallback.values() for m in chain)]),
        ):
            for name in names:
                if name not in self.known:
                    raise ValueError(f"{group} names unknown model {name!r}")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError("weights must be non-negative")


@attrs.frozen
class LimitsConfig:
    """How the swarm acts on what an agent says about its API and quota (issue 16)."""

    # a retry storm: this many workers of one model report API retries within the window, so the
    # model is parked swarm-wide instead of every worker hammering the API
    retry_storm_workers: int = attrs.field(default=3, validator=_pos)
    retry_storm_window_s: float = attrs.field(default=60.0, validator=_pos)
    retry_storm_park_s: float = attrs.field(default=30.0, validator=_pos)  # first park; doubles per storm
    retry_storm_park_max_s: float = attrs.field(default=600.0, validator=_pos)
    # a model whose reported quota utilization reaches this prefers its fallback for work that may
    # move (models.fallback); 1.0 disables it short of a full quota
    prefer_fallback_at: float = attrs.field(default=0.9, validator=_fraction)
    # "Now using extra usage": continue, pause (park the model until an operator resumes it), or stop
    # (pause, and interrupt its running tasks, requeued without counting an attempt)
    on_extra_usage: Literal["continue", "pause", "stop"] = "pause"

    def __attrs_post_init__(self) -> None:
        if self.retry_storm_park_s > self.retry_storm_park_max_s:
            raise ValueError("retry_storm_park_s must not exceed retry_storm_park_max_s")


@attrs.frozen
class GatewayConfig:
    enabled: bool | None = None  # None: on for `shoal serve`, off for an embedded open_swarm
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8765, validator=v.and_(_nonneg, _at_most(65535)))  # 0: any free port
    allow_remote: bool = False  # binding to a non-loopback address needs this
    allowed_origins: tuple[str, ...] = ()  # besides the dashboard's own origin
    max_message_bytes: int = attrs.field(default=1 << 20, validator=_pos)
    max_requests_per_s: float = attrs.field(default=2000.0, validator=_pos)
    max_connections: int = attrs.field(default=256, validator=_pos)
    max_subscriptions: int = attrs.field(default=64, validator=_pos)
    replay_buffer: int = attrs.field(default=10_000, validator=_nonneg)  # events kept for `since`
    client_buffer: int = attrs.field(default=1_000, validator=_pos)  # queued notifications per client
    coalesce_ms: float = attrs.field(default=5.0, validator=_nonneg)  # events held to go out together
    tls_cert: str | None = None
    tls_key: str | None = None
    token_file: str | None = None  # None: <state_dir>/token


@attrs.frozen
class HttpConfig:
    enabled: bool | None = None  # None: on for `shoal serve`, off for an embedded open_swarm
    host: str = "127.0.0.1"
    port: int = attrs.field(default=8766, validator=v.and_(_nonneg, _at_most(65535)))


@attrs.frozen
class AlertRule:
    kind: Literal[
        "at_max_workers",
        "all_idle",
        "task_dead",
        "crash_rate",
        "breaker_tripped",
        "model_rate_limited",
        "store_failed",
        "needs_input",
        "retry_storm",
        "quota_warning",
        "extra_usage",
    ]
    name: str | None = None
    for_s: float = attrs.field(default=0.0, validator=_nonneg)  # condition must hold this long
    threshold: int = attrs.field(default=1, validator=_pos)  # e.g. crashes
    window_s: float = attrs.field(default=300.0, validator=_pos)
    cooldown_s: float = attrs.field(default=300.0, validator=_nonneg)


@attrs.frozen
class WebhookConfig:
    url: str
    secret: str | None = None  # HMAC-SHA256 signature header when set
    max_retries: int = attrs.field(default=5, validator=_nonneg)
    timeout_s: float = attrs.field(default=5.0, validator=_pos)


@attrs.frozen
class AlertsConfig:
    rules: tuple[AlertRule, ...] = ()
    webhooks: tuple[WebhookConfig, ...] = ()


@attrs.frozen
class LogConfig:
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "text"] = "auto"  # auto: text on a terminal, else JSON lines
    json: bool | None = None  # the older switch: true/false choose json/text when format is "auto"
    file: str | None = None  # None: stderr


@attrs.frozen
class SwarmConfig:
    state_dir: str | None = None  # None: the user's data dir (platformdirs), created on start
    queue: QueueConfig = QueueConfig()
    store: StoreConfig = StoreConfig()
    workers: WorkersConfig = WorkersConfig()
    scaling: ScalingConfig = ScalingConfig()
    node: NodeConfig = NodeConfig()
    supervision: SupervisionConfig = SupervisionConfig()
    models: ModelsConfig = ModelsConfig()
    limits: LimitsConfig = LimitsConfig()
    gateway: GatewayConfig = GatewayConfig()
    http: HttpConfig = HttpConfig()
    alerts: AlertsConfig = AlertsConfig()
    log: LogConfig = LogConfig()


# ---- structuring -----------------------------------------------------------------------------

_converter = cattrs.Converter(forbid_extra_keys=True)


def _strict(kind: type[Any], accepts: tuple[type[Any], ...], name: str) -> None:
    """No silent coercion: "5" is not an int, "false" is not a bool, 1.5 is not an int."""

    def hook(value: Any, _type: Any) -> Any:
        if _type is not kind:  # a StrEnum/IntEnum subclass dispatched here: the enum validates
            if isinstance(value, _type):
                return value
            try:
                return _type(value)
            except ValueError:
                raise ValueError(f"must be one of {[m.value for m in _type]}, got {value!r}") from None
        if isinstance(value, bool) and kind is not bool:
            raise ValueError(f"expected {name}, got a boolean")
        if not isinstance(value, accepts):
            raise ValueError(f"expected {name}, got {type(value).__name__} {value!r}")
        return kind(value)

    _converter.register_structure_hook(kind, hook)


_strict(int, (int,), "an integer")
_strict(float, (int, float), "a number")
_strict(str, (str,), "a string")
_strict(bool, (bool,), "true or false")


def _str_tuple(value: Any, _type: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list of strings, got {type(value).__name__} {value!r}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a list of strings, got item {item!r}")
    return tuple(value)


_converter.register_structure_hook_func(lambda t: t == tuple[str, ...], _str_tuple)


def _int_or_str(value: Any, _type: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"expected a number or a string, got {type(value).__name__} {value!r}")
    return value


_converter.register_structure_hook_func(lambda t: t == (int | str), _int_or_str)


def _path_of(exc: BaseException, path: str) -> tuple[str, BaseException]:
    """Walk cattrs' exception groups to the first leaf, building the dotted field path."""
    while isinstance(exc, cattrs.BaseValidationError) and exc.exceptions:
        inner = exc.exceptions[0]
        note = next(
            (n for n in getattr(inner, "__notes__", []) if isinstance(n, cattrs.AttributeValidationNote)),
            None,
        )
        key_note = next(
            (n for n in getattr(inner, "__notes__", []) if isinstance(n, cattrs.IterableValidationNote)),
            None,
        )
        if note is not None:
            path = f"{path}.{note.name}" if path else note.name
        elif key_note is not None:
            path = f"{path}[{key_note.index!r}]"
        exc = inner
    return path, exc


_LITERAL = re.compile(r"^(.*) not in literal typing\.Literal\[(.*)\]$", re.S)


def _unknown_keys(path: str, exc: cattrs.ForbiddenExtraKeysError) -> ValidationError:
    """Name the unknown key itself (`scalling`, not the class) and suggest the close match."""
    extra = sorted(exc.extra_fields)
    known = [a.name for a in attrs.fields(exc.cl)] if attrs.has(exc.cl) else []
    field = f"{path}.{extra[0]}" if path else extra[0]
    close = difflib.get_close_matches(extra[0], known, n=1)
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    else:
        hint = f" (known keys: {', '.join(known)})" if known else ""
    more = f"; also unknown: {', '.join(extra[1:])}" if len(extra) > 1 else ""
    return ValidationError(field, f"unknown key{hint}{more}")


def structure(data: Any, cls: type[Any], where: str = "") -> Any:
    """Structure `data` into `cls`, raising `ValidationError` naming the field on failure."""
    try:
        return _converter.structure(data, cls)
    except cattrs.ForbiddenExtraKeysError as exc:
        raise _unknown_keys(where, exc) from None
    except (cattrs.BaseValidationError, ValueError, TypeError, KeyError) as exc:
        path, leaf = _path_of(exc, where)
        if isinstance(leaf, cattrs.ForbiddenExtraKeysError):
            raise _unknown_keys(path, leaf) from None
        if isinstance(leaf, FieldValueError):
            raise ValidationError(f"{path}.{leaf.field}" if path else leaf.field, str(leaf)) from None
        if isinstance(leaf, KeyError):
            key = str(leaf.args[0])
            field = path if path.endswith(key) else (f"{path}.{key}" if path else key)
            raise ValidationError(field, "is required") from None
        text = str(leaf) or type(leaf).__name__
        literal = _LITERAL.match(text)  # cattrs' "x not in literal typing.Literal['a', 'b']"
        if literal:
            text = f"must be one of {literal.group(2)}, got {literal.group(1)!r}"
        raise ValidationError(path or cls.__name__, text) from None


def unstructure(obj: Any) -> Any:
    return _converter.unstructure(obj)


def config_from_dict(data: Mapping[str, Any]) -> SwarmConfig:
    # every string goes to a process (argv, env), a regex, a URL or the store: none takes a lone
    # surrogate or a NUL, so they are refused here naming the key (TOML, flags, env, patches)
    check_text(data, nul=True)
    result: SwarmConfig = structure(dict(data), SwarmConfig)
    return result


class ConfigFileError(ValidationError):
    """A bad value in a configuration file: the message starts with `file:line:` (an editor's jump)."""

    def __init__(self, file: str | Path, line: int | None, error: ValidationError) -> None:
        super().__init__(error.field, error.message, error.value)
        self.file = str(file)
        self.line = line
        self.args = (f"{file}:{line}: {error}" if line else f"{file}: {error}",)


_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(?:#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\.\"' ]+?)\s*=")


def _dotted(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


def toml_line(text: str, field: str) -> int | None:
    """The line of `text` that sets `field` ("scaling.max_workers", "alerts.rules[1].kind"), or of the
    nearest enclosing table or key that is written out; None when nothing matches."""
    arrays: dict[str, int] = {}
    lines: dict[str, int] = {}
    table = ""
    for n, line in enumerate(text.splitlines(), 1):
        head = _TABLE.match(line)
        if head:
            name = _dotted(head.group(2))
            if head.group(1) == "[[":
                arrays[name] = arrays.get(name, -1) + 1
                name = f"{name}[{arrays[name]}]"
            else:  # a sub-table of the latest array entry: [alerts.rules.x] after [[alerts.rules]]
                for array, index in arrays.items():
                    if name.startswith(array + "."):
                        name = f"{array}[{index}]{name[len(array) :]}"
            table = name
            lines.setdefault(table, n)
            continue
        key = _KEY.match(line)
        if key and not line.lstrip().startswith("#"):
            full = f"{table}.{_dotted(key.group(1))}" if table else _dotted(key.group(1))
            lines.setdefault(full, n)
    probe = re.sub(r"\['([^']*)'\]", r".\1", field)  # map keys: workers.profiles['x'] is [workers.profiles.x]
    while probe:
        if probe in lines:
            return lines[probe]
        cut = max(probe.rfind("."), probe.rfind("["))
        probe = probe[:cut] if cut > 0 else ""
    return None


def load_config(path: str | Path) -> SwarmConfig:
    """Read a TOML file. Errors name the file and the line: a syntax error, an unknown key (with the
    close match), a value of the wrong type."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValidationError("config", f"cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError("config", f"{path}: {exc}") from None
    try:
        return config_from_dict(data)
    except ValidationError as exc:
        raise ConfigFileError(path, toml_line(text, exc.field), exc) from None


def _merge(base: dict[str, Any], partial: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in partial.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and not _is_map_field(key):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _is_map_field(key: str) -> bool:
    # free-form maps are replaced whole by a patch, so a key can be removed
    return key in {"weights", "category_models", "fallback", "prices", "env", "options", "metadata"}


def patch_config(config: SwarmConfig, partial: Mapping[str, Any]) -> SwarmConfig:
    """Apply a partial update (hot configuration); the whole result is validated."""
    if not isinstance(partial, Mapping):
        raise ValidationError("partial", "must be an object", partial)
    return config_from_dict(_merge(unstructure(config), partial))


def config_to_dict(config: SwarmConfig) -> dict[str, Any]:
    result: dict[str, Any] = unstructure(config)
    return result
