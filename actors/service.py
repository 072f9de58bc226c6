"""`shoal serve`: the swarm as a long-lived service.

Starts `open_swarm(config, serve=True)` (gateway and dashboard on), prints where to reach it, prints the
swarm's state readably on stdout whenever it changes (at most once a second), writes every event as a
JSON line to the log (stderr or `log.file`), and shuts down cleanly on SIGINT/SIGTERM: the first
signal stops the workers (after their current task with `--drain`), a second one stops at once. No
agent process outlives the service: each worker kills and reaps its own on the way out.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any, TextIO

import trio

from ..protocols.config import LogConfig, SwarmConfig
from .swarm import VERSION, SwarmHandle, open_swarm

log = logging.getLogger("shoal")
_QUIET_TOPICS = ("worker.output", "worker.context")


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
        return json.dumps(out, default=str)


def setup_logging(config: LogConfig, stream: TextIO | None = None) -> logging.Handler:
    """Route the `shoal` logger to JSON lines (or plain text) on stderr or a file."""
    handler: logging.Handler
    handler = logging.FileHandler(config.file) if config.file else logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonLinesFormatter() if config.json else logging.Formatter("%(asctime)s %(levelname)s %(message)s")
    )
    root = logging.getLogger("shoal")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    root.propagate = False
    return handler


async def log_events(swarm: SwarmHandle) -> None:
    """Every event on the bus, as a JSON log line (the event log operators grep)."""
    events = logging.getLogger("shoal.events")
    with swarm.events(("*",), size=10_000) as sub:
        async for event in sub:
            if event.topic.startswith(_QUIET_TOPICS):
                continue
            level = (
                logging.WARNING
                if event.topic in ("swarm.halted", "worker.crashed", "task.dead")
                else logging.INFO
            )
            events.log(
                level,
                event.topic,
                extra={"event": {"seq": event.seq, "topic": event.topic, "data": event.data}},
            )
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
    cfg = swarm.config
    lines.append(
        f"  profile {cfg.workers.profile} · workers {cfg.scaling.min_workers}..{cfg.scaling.max_workers}"
        f' · submit with: shoal submit "your prompt"'
    )
    return "\n".join(lines)


async def serve(config: SwarmConfig, *, drain: bool = False, out: TextIO | None = None) -> None:
    """Run until SIGINT/SIGTERM. `drain`: let running tasks finish before the workers stop."""
    out = out or sys.stdout
    setup_logging(config.log)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_swarm(config, serve=True) as swarm, trio.open_nursery() as nursery:
            print(banner(swarm), file=out, flush=True)
            log.info("serving", extra={"event": {"gateway": swarm.gateway_url, "http": swarm.http_url}})
            nursery.start_soon(log_events, swarm)
            nursery.start_soon(print_state, swarm, out)
            async for signum in signals:
                name = signal.Signals(signum).name
                print(
                    f"shoal: {name} received, stopping" + (" after running tasks (drain)" if drain else ""),
                    file=out,
                    flush=True,
                )
                log.info("stopping", extra={"event": {"signal": name, "drain": drain}})
                break
            with trio.move_on_after(STOP_GRACE_S[drain]) as scope:
                nursery.start_soon(_second_signal, signals, scope)
                await swarm.stop(drain=drain)
                await _wait_workers_gone(swarm)
            nursery.cancel_scope.cancel()
    print("shoal: stopped", file=out, flush=True)


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
