"""`shoal serve`: the swarm as a long-lived service.

Starts `open_swarm(config, serve=True)` (gateway and dashboard on), prints where to reach it, prints the
swarm's state readably on stdout whenever it changes (at most once a second), logs events to stderr
(or `log.file`), and shuts down cleanly on SIGINT/SIGTERM: the first signal stops the workers (after
their current task with `--drain`), a second one stops at once. No agent process outlives the service:
each worker kills and reaps its own on the way out.

Logs come in two formats (`log.format`, `shoal serve --log-format`): on a terminal, one readable line
per significant event (a crash, a failed task, a halt, a scale step); piped, redirected or to a file,
JSON lines carrying every event, for programs and log collectors.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from typing import Any, Literal, TextIO

import trio

from ..protocols.config import LogConfig, SwarmConfig
from ..protocols.errors import NotFound, ValidationError
from ..protocols.profiles import BUILTIN_PROFILES, resolve_profile
from ..runtime.eventbus import Event
from ..runtime.fastjson import dumps as json_line
from .swarm import VERSION, SwarmHandle
from .tree import open_swarm

log = logging.getLogger("shoal")
_QUIET_TOPICS = ("worker.output", "worker.context")
# JSON lines: every event, these at warning. Text: only these and _TEXT_INFO are shown at info.
_WARNING_TOPICS = frozenset({"swarm.halted", "worker.crashed", "task.dead", "supervisor.escalated"})
_TEXT_WARNING_TOPICS = _WARNING_TOPICS | {
    "worker.spawn_failed",
    "worker.lineage_retired",
    "worker.needs_input",
    "scale.error",
    "queue.store_failed",
    "alert.fired",
    "alert.delivery_failed",
}
_TEXT_INFO_TOPICS = frozenset(
    {
        "worker.spawned",
        "worker.exited",
        "worker.retiring",
        "worker.rate_limited",
        "task.failed",
        "task.cancelled",
        "task.skipped",
        "task.recovered",
        "scale.up",
        "scale.down",
        "config.changed",
    }
)
_TEXT_INFO_PREFIXES = ("swarm.", "model.", "alert.", "queue.")
# what the banner already says: not repeated as log lines on a terminal
_BANNER_REPEATS = ("Running on ", "dashboard on ", "gateway listening on ")
# said on stdout already (the banner, "SIGTERM received, stopping")
_TEXT_SILENT_TOPICS = frozenset({"swarm.started", "swarm.stopping"})

LogFormat = Literal["json", "text"]


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, plus the record's `event` fields if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        extra = getattr(record, "event", None)
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json_line(out)


class TextFormatter(logging.Formatter):
    """One readable line: `[HH:MM:SS] warning: what happened` (the level only when it is not info)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        extra = getattr(record, "event", None)
        if isinstance(extra, dict) and isinstance(extra.get("topic"), str):
            data = extra.get("data")
            text = describe_event(extra["topic"], data if isinstance(data, dict) else {})
        else:
            text = record.getMessage()
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        line = f"[{stamp}] {level}{text}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _NotInBanner(logging.Filter):
    """Drops the start-up messages the banner has already shown on the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.getMessage().startswith(_BANNER_REPEATS))


def _value(value: Any) -> str | None:
    if value is None or isinstance(value, dict):
        return None
    if isinstance(value, list | tuple):
        items = [str(v) for v in value if not isinstance(v, dict | list | tuple)]
        return ",".join(items) if items else None
    if isinstance(value, float):
        return f"{value:g}"
    text = " ".join(str(value).split())
    return text if len(text) <= 100 else text[:99] + "…"


def describe_event(topic: str, data: dict[str, Any]) -> str:
    """An event as a short sentence for a terminal (no JSON: nested objects are left out)."""
    task, worker, reason = data.get("task_id"), data.get("worker"), _value(data.get("reason"))
    because = f": {reason}" if reason else ""
    if topic == "task.failed":
        retry = "; will retry" if data.get("will_retry") else ""
        return f"task {task} failed on {worker} ({data.get('outcome')}){because}{retry}"
    if topic in ("task.dead", "task.cancelled", "task.skipped", "task.done"):
        return f"task {task} {topic.removeprefix('task.')}{because}"
    if topic == "worker.spawned":
        return f"worker {worker} started ({data.get('profile')}, model {data.get('model')})"
    if topic == "worker.crashed":
        return f"worker {worker} crashed{because}"
    if topic == "worker.exited":
        return f"worker {worker} exited{because}"
    if topic in ("scale.up", "scale.down") and data.get("detail"):
        return f"scale {topic.removeprefix('scale.')}: {_value(data['detail'])}"
    if topic == "swarm.halted":
        return f"swarm HALTED{because}"
    fields = ((k, _value(v)) for k, v in data.items())
    return " ".join([topic, *(f"{k}={v}" for k, v in fields if v is not None)])


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream: not a terminal
        return False


def log_format(config: LogConfig, stream: TextIO | None = None) -> LogFormat:
    """The format to log in: `log.format` when set, else (`auto`) text on a terminal, JSON otherwise.

    A log file, a pipe or a service manager's journal gets JSON lines, which programs parse; a person
    at a terminal gets readable lines. The older `log.json` switch still decides when format is auto.
    """
    if config.format != "auto":
        return config.format
    if config.json is not None:
        return "json" if config.json else "text"
    if config.file:
        return "json"
    return "text" if _isatty(stream or sys.stderr) else "json"


def setup_logging(
    config: LogConfig, stream: TextIO | None = None, fmt: LogFormat | None = None
) -> logging.Handler:
    """Route the `shoal` logger to stderr or `log.file`, as JSON lines or readable text.

    A log file that cannot be opened is a `ValidationError` naming it (start-up stops with one line).
    """
    out = stream or sys.stderr
    fmt = fmt or log_format(config, out)
    handler: logging.Handler
    if config.file:
        try:
            handler = logging.FileHandler(config.file)
        except OSError as exc:
            raise ValidationError("log.file", f"cannot open {config.file}: {exc.strerror}") from None
    else:
        handler = logging.StreamHandler(out)
    if fmt == "json":
        handler.setFormatter(JsonLinesFormatter())
    else:
        handler.setFormatter(TextFormatter())
        handler.addFilter(_NotInBanner())
    # what a record would look up that these formatters never show (the caller's file and line, the
    # thread's and process's names): ~40 % of a record's cost, and a cluster node logs every event
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger("shoal")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    root.propagate = False
    return handler


def event_level(topic: str, data: dict[str, Any], fmt: LogFormat) -> int:
    """JSON lines log every event (a few at warning); text shows only the significant ones at info."""
    if fmt == "json":
        return logging.WARNING if topic in _WARNING_TOPICS else logging.INFO
    if topic in _TEXT_WARNING_TOPICS:
        return logging.WARNING
    if topic in _TEXT_SILENT_TOPICS:
        return logging.DEBUG
    if topic == "worker.exited" and data.get("crashed"):
        return logging.DEBUG  # worker.crashed said it already
    if topic == "task.failed" and not data.get("will_retry"):
        return logging.DEBUG  # task.dead follows and says it
    if topic in _TEXT_INFO_TOPICS or topic.startswith(_TEXT_INFO_PREFIXES):
        return logging.INFO
    return logging.DEBUG


async def log_events(swarm: SwarmHandle, fmt: LogFormat = "json") -> None:
    """Every event on the bus as a log record (JSON: the event log operators grep; text: the few
    that matter to a person watching, at info, and the rest at debug). The events of the start-up
    (the first workers spawning) come first, from the bus's replay buffer."""
    events = logging.getLogger("shoal.events")

    def emit(event: Event) -> None:
        if event.remote or event.topic.startswith(_QUIET_TOPICS):
            return  # (another node's event: that node's log has it)
        level = event_level(event.topic, event.data, fmt)
        if events.isEnabledFor(level):
            events.log(
                level,
                event.topic,
                extra={"event": {"seq": event.seq, "topic": event.topic, "data": event.data}},
            )

    with swarm.events(("*",), size=10_000, remote=False, outage=True) as sub:
        earlier, _ = swarm.bus.replay(0)  # no checkpoint since subscribing: nothing falls between
        for event in earlier:
            emit(event)
        last = earlier[-1].seq if earlier else 0
        async for event in sub:
            if event.seq > last:
                emit(event)
            dropped, _ = sub.take_dropped()
            if dropped:
                events.warning("event log fell behind", extra={"event": {"dropped": dropped}})


def state_line(status: dict[str, Any]) -> str:
    """One readable line: swarm state, workers by state, queue by state."""
    workers = status.get("workers", {})
    queue = status.get("queue", {})
    w_total = sum(workers.values())
    w_parts = " ".join(f"{k} {v}" for k, v in sorted(workers.items()) if v)
    q_order = ("ready", "blocked", "running", "failed", "done", "dead", "cancelled", "skipped")
    q_parts = " ".join(f"{k} {queue[k]}" for k in q_order if queue.get(k))
    head = status["state"]
    if status["state"] == "halted":
        head = f"HALTED ({status.get('reason')})"
    stamp = time.strftime("%H:%M:%S")
    return (
        f"[{stamp}] swarm {head} · workers {w_total}"
        + (f" ({w_parts})" if w_parts else "")
        + (f" · tasks {q_parts}" if q_parts else " · queue empty")
    )


async def print_state(swarm: SwarmHandle, out: TextIO) -> None:
    """Print the state line whenever something changes, at most once a second."""
    last = ""
    with swarm.events(("task.*", "worker.state", "worker.exited", "swarm.*", "scale.*"), size=64) as sub:
        while True:
            line = state_line(await swarm.status())
            body = line.split("] ", 1)[1]
            if body != last:
                print(line, file=out, flush=True)
                last = body
            await sub.receive()  # wait for a change...
            await trio.sleep(1.0)  # ...and coalesce a burst into one line
            while True:
                try:
                    sub.receive_nowait()
                except trio.WouldBlock:
                    break


def banner(swarm: SwarmHandle) -> str:
    from .http import dashboard_url

    lines = [f"Shoal {VERSION} serving · state {swarm.state_dir}"]
    if swarm.http_address:
        lines.append(f"  dashboard: {dashboard_url(*swarm.http_address, swarm.token)}")
    if swarm.gateway_url:
        lines.append(f"  gateway:   {swarm.gateway_url} (token in {swarm.token_file})")
    cluster = swarm.cluster()
    if cluster is not None:  # the store URL redacted: this goes to terminals and logs
        lines.append(f"  cluster:   node {cluster['node_id']} · store {cluster['store']}")
    cfg = swarm.config
    lines.append(
        f"  profile {cfg.workers.profile} · workers {cfg.scaling.min_workers}..{cfg.scaling.max_workers}"
        f' · submit with: shoal submit "your prompt"'
    )
    return "\n".join(lines)


def check_profile(config: SwarmConfig) -> None:
    """An unknown `workers.profile` stops start-up with one line (else every spawn fails later)."""
    try:
        resolve_profile(config.workers.profile, config.workers.profiles)
    except NotFound:
        known = sorted({*BUILTIN_PROFILES, *config.workers.profiles})
        raise ValidationError(
            "workers.profile", f"unknown profile {config.workers.profile!r} (known: {', '.join(known)})"
        ) from None


async def serve(
    config: SwarmConfig, *, drain: bool = False, out: TextIO | None = None, restore_signals: bool = True
) -> None:
    """Run until SIGINT/SIGTERM. `drain`: let running tasks finish before the workers stop.
    `restore_signals=False` (`shoal serve`, whose process ends with this): SIGINT and SIGTERM stay
    ignored once serving is over, so one arriving as the process exits cannot kill it mid-way.

    Start-up failures (port taken, state directory, store, token, config) raise a `ShoalError` whose
    message is the one line `shoal serve` prints.
    """
    out = out or sys.stdout
    fmt = log_format(config.log)
    setup_logging(config.log, fmt=fmt)
    # The receiver below re-raises, as it closes, any signal it holds unread, with the handler it
    # found: a signal arriving once the stop is done (a second Ctrl-C, a supervisor's repeated
    # SIGTERM) killed the stopped process (exit -15). It finds "ignore" instead; the handlers the
    # process had come back once serving is over.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        await _serve(config, drain, out, fmt)
    finally:
        if restore_signals:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    print("shoal: stopped", file=out, flush=True)


async def _serve(config: SwarmConfig, drain: bool, out: TextIO, fmt: LogFormat) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_swarm(config, serve=True) as swarm, trio.open_nursery() as nursery:
            check_profile(swarm.config)  # the effective config: the state directory's overrides apply
            print(banner(swarm), file=out, flush=True)
            if fmt == "json":  # on a terminal the banner says it
                log.info("serving", extra={"event": {"gateway": swarm.gateway_url, "http": swarm.http_url}})
            nursery.start_soon(log_events, swarm, fmt)
            nursery.start_soon(print_state, swarm, out)
            async for signum in signals:
                name = signal.Signals(signum).name
                print(
                    f"shoal: {name} received, stopping" + (" after running tasks (drain)" if drain else ""),
                    file=out,
                    flush=True,
                )
                if fmt == "json":  # on a terminal the line above says it
                    log.info("stopping", extra={"event": {"signal": name, "drain": drain}})
                break
            with trio.move_on_after(STOP_GRACE_S[drain]) as scope:
                nursery.start_soon(_second_signal, signals, scope)
                await swarm.stop(drain=drain)
                await _wait_workers_gone(swarm)
            nursery.cancel_scope.cancel()


# How long a stop may take before Shoal cancels what is left: draining waits for the running tasks
# (a second signal cuts it short); a plain stop gives the workers' stop ladders time to finish.
STOP_GRACE_S = {True: float("inf"), False: 30.0}


async def _second_signal(signals: Any, scope: trio.CancelScope) -> None:
    async for _ in signals:
        scope.cancel()
        return


async def _wait_workers_gone(swarm: SwarmHandle) -> None:
    with swarm.events(("worker.exited",), size=1024) as sub:
        while swarm.workers():
            with trio.move_on_after(1.0):
                await sub.receive()
