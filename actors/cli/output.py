"""What the commands print: tables and one-line texts made from the gateway's replies (rich).

Pure functions of the reply's dicts (and the time), so tests can check the words without a swarm.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text
from rich.tree import Tree


def make_console(stream: TextIO | None = None) -> Console:
    """Terminal width on a terminal; wide lines (nothing cut or wrapped) when piped to a program."""
    out = stream or sys.stdout
    width = None if out.isatty() else 250
    return Console(file=out, highlight=False, soft_wrap=False, width=width)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def age(ts: float | None, now: float | None = None) -> str:
    if not ts:
        return "-"
    return duration((now or time.time()) - ts)


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h{(seconds % 3600) // 60:02.0f}m"
    return f"{seconds // 86400:.0f}d{(seconds % 86400) // 3600:02.0f}h"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}GiB"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}%"


def shorten(text: str | None, width: int = 48) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def _counts(counts: dict[str, int] | None) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v) or "none"


def plain_row(table: Table, *cells: Any) -> None:
    """Add a row of plain text: a prompt like "[[think:1]]" or "[bold]" is data, not rich markup."""
    table.add_row(*(cell if isinstance(cell, Text) else Text(str(cell)) for cell in cells))


def attempts_text(task: dict[str, Any]) -> str:
    """`used/max`, plus the attempts that did not count: `2/3 (+2 rate-limited)`, never `4/3`.

    Same split as `shoal.protocols.tasks.attempt_counts`: rate-limited, interrupted or cancelled
    attempts, and those before the last manual retry (`retry_base`), do not use up max_attempts."""
    base = task.get("retry_base") or 0
    used = limited = interrupted = earlier = 0
    for a in task.get("attempts") or ():
        outcome = a.get("outcome")
        if a.get("n", 0) <= base:
            earlier += 1
        elif outcome == "rate_limited":
            limited += 1
        elif outcome in ("interrupted", "cancelled"):
            interrupted += 1
        else:
            used += 1
    extra = [
        f"+{n} {label}"
        for n, label in ((limited, "rate-limited"), (interrupted, "interrupted"), (earlier, "before retry"))
        if n
    ]
    text = f"{used}/{task.get('max_attempts')}"
    return f"{text} ({', '.join(extra)})" if extra else text


def model_text(model: dict[str, Any], now: float | None = None) -> str:
    """A model's state in words: `parked until 14:05 (in 58s): <why>`, `failing: …`, `available`."""
    state = str(model.get("state"))
    if state == "parked" and model.get("until"):
        until = float(model["until"])
        when = time.strftime("%H:%M:%S", time.localtime(until))
        text = f"parked until {when} (in {duration(until - (now or time.time()))})"
    elif state == "parked":
        text = "parked until resumed"
    else:
        text = state
    text = f"{text}: {model['reason']}" if model.get("reason") else text
    extra = [q for q in (quota_text(model, now),) if q]
    if model.get("retrying"):
        extra.append(f"{model['retrying']} retrying")
    return f"{text} · {' · '.join(extra)}" if extra else text


def quota_text(model: dict[str, Any], now: float | None = None) -> str:
    """`seven_day 92% (warning, resets in 2h10m), prefer fallback`: the latest quota reports."""
    parts = []
    for window, q in sorted((model.get("quota") or {}).items()):
        util = q.get("utilization")
        text = f"{window} {util:.0%}" if isinstance(util, int | float) else f"{window}"
        notes = []
        status = q.get("status")
        if status == "allowed_warning":
            notes.append("warning")
        elif status and status != "allowed":
            notes.append(str(status))
        if isinstance(q.get("resets_at"), int | float):
            notes.append(f"resets in {duration(float(q['resets_at']) - (now or time.time()))}")
        parts.append(f"{text} ({', '.join(notes)})" if notes else text)
    if model.get("prefer_fallback"):
        parts.append("prefer fallback")
    return ", ".join(parts)


def retrying_text(retrying: dict[str, Any], now: float | None = None) -> str:
    """`retrying 3/10, next in 8 s` for a worker whose agent retries an API request."""
    attempt = retrying.get("attempt")
    text = f"retrying {attempt if attempt is not None else '?'}"
    if retrying.get("max_retries") is not None:
        text += f"/{retrying['max_retries']}"
    if isinstance(retrying.get("next_at"), int | float):
        text += f", next in {max(0.0, float(retrying['next_at']) - (now or time.time())):.0f} s"
    return text


def usage_cells(usage: dict[str, Any]) -> tuple[str, str]:
    """(`$0.4920`, `2800 in / 7 out`) of an attempt's usage; `-` for what the agent did not say."""
    cost = usage.get("cost_usd")
    cost_text = f"${cost:.4f}" if isinstance(cost, int | float) else "-"
    tokens_in = sum(
        v
        for k in ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")
        if isinstance(v := usage.get(k), int | float)
    )
    tokens_out = usage.get("output_tokens")
    if isinstance(tokens_out, int | float) or tokens_in:
        out = tokens_out if isinstance(tokens_out, int | float) else 0
        return cost_text, f"{tokens_in:g} in / {out:g} out"
    return cost_text, "-"


def needs_input_text(worker: dict[str, Any], now: float | None = None) -> str:
    """`waiting 1m05s: Do you want to proceed?` for a worker whose agent waits on a question."""
    waited = age(worker.get("needs_input_since") or worker.get("since"), now)
    question = worker.get("needs_input") or worker.get("prompt") or ""
    options = worker.get("needs_input_options") or worker.get("options") or []
    menu = " ".join(f"[{i}] {shorten(str(o), 30)}" for i, o in enumerate(options, 1))
    return f"waiting {waited}: {shorten(question, 60)}" + (f" {menu}" if menu else "")


def models_table(models: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("MODEL", "STATE", "WORKERS", "BUSY", "RECENT FAILED"):
        table.add_column(name, no_wrap=True)
    table.add_column("QUOTA", overflow="fold")
    table.add_column("DETAIL", overflow="fold")
    now = time.time()
    for m in models:
        state = str(m.get("state"))
        bare = {**m, "quota": {}, "prefer_fallback": False, "retrying": 0}
        detail = model_text(bare, now)[len(state) :].lstrip(": ")  # "until 14:05:00 (in 58s): why"
        if m.get("retrying"):
            detail = ", ".join(x for x in (detail, f"{m['retrying']} retrying") if x)
        plain_row(
            table,
            m["name"],
            Text(state, style={"parked": "yellow", "failing": "red"}.get(state, "")),
            str(m.get("workers", 0)),
            str(m.get("busy", 0)),
            f"{m.get('recent_failed', 0)}/{m.get('recent_finished', 0)}",
            quota_text(m, now) or "-",
            detail,
        )
    return table


def tree_view(nodes: list[dict[str, Any]], title: str = "swarm") -> Tree:
    """The supervision tree as `swarm.status` reports it, one line per child."""
    root = Tree(Text(f"{title} (rest_for_one, a crash halts the swarm)", style="bold"))
    _tree_children(root, nodes)
    return root


def _tree_children(parent: Tree, nodes: list[dict[str, Any]]) -> None:
    for node in nodes:
        line = Text(str(node.get("id")), style="bold")
        state = str(node.get("state"))
        line.append(f"  {state}", style="green" if state == "running" else "yellow")
        if "strategy" in node:
            intensity = node.get("intensity") or {}
            line.append(
                f"  {node['strategy']}, {intensity.get('max_restarts')} restarts in "
                f"{intensity.get('period_s', 0):g} s",
                style="dim",
            )
        restarts = int(node.get("restarts") or 0)
        if restarts:
            line.append(f"  restarts {restarts}", style="yellow")
        if node.get("last_crash"):
            ago = node.get("last_crash_ago_s")
            when = f" {duration(ago)} ago" if isinstance(ago, int | float) else ""
            line.append(f"  last crash{when}: {node['last_crash']}", style="red")
        branch = parent.add(line)
        _tree_children(branch, node.get("children") or [])


def status_table(status: dict[str, Any]) -> Table:
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    state = str(status.get("state"))
    plain_row(table, "state", state.upper() if state == "halted" else state)
    if status.get("reason"):
        plain_row(table, "reason", str(status["reason"]))
    plain_row(
        table, "workers", f"{sum((status.get('workers') or {}).values())} ({_counts(status.get('workers'))})"
    )
    plain_row(table, "tasks", _counts(status.get("queue")))
    now = time.time()
    waiting = status.get("needs_input") or []
    for w in waiting:
        task = f" (task {w['task_id']})" if w.get("task_id") else ""
        plain_row(table, "needs input", f"{w['worker']}{task} {needs_input_text(w, now)}")
    if waiting:
        plain_row(table, "", "answer with: shoal answer WORKER N (or the option's text)")
    for r in status.get("retrying") or []:
        task = f" (task {r['task_id']})" if r.get("task_id") else ""
        cause = f"{r.get('status') or 'network'} {r.get('error')}"
        plain_row(table, "retrying", f"{r['worker']}{task} {retrying_text(r, now)} · {cause}")
    for m in status.get("models") or []:
        plain_row(table, f"model {m['name']}", model_text(m, now))
    cap = status.get("capacity")
    if isinstance(cap, dict):
        plain_row(table, "capacity", capacity_text(cap))
        plain_row(table, "held back by", held_back_text(cap))
    breaker = status.get("breaker")
    if isinstance(breaker, dict) and breaker.get("state"):
        trips = breaker.get("trips")
        plain_row(table, "breaker", f"{breaker['state']}" + (f" (tripped {trips}x)" if trips else ""))
    cluster = status.get("cluster")
    if isinstance(cluster, dict):
        plain_row(table, "cluster", cluster_text(cluster))
    if status.get("since"):
        plain_row(table, "up", age(status["since"]))
    for key in ("version", "gateway_url", "http_url", "state_dir"):
        if status.get(key):
            plain_row(table, key.replace("_", " "), str(status[key]))
    return table


def _mib(value: float | None) -> str:
    return "?" if value is None else _size(int(value * 1024 * 1024))


def capacity_text(cap: dict[str, Any]) -> str:
    """`4/8 workers · 1.2GiB free (floor 512.0MiB) · 258.0MiB a worker (claude, measured) · 3 more fit`."""
    parts = [f"{cap.get('workers', 0)}/{cap.get('max_workers', '?')} workers"]
    if cap.get("free_memory_mb") is None:
        parts.append(f"free memory unknown ({cap.get('memory_error') or 'not read'})")
    else:
        parts.append(f"{_mib(cap['free_memory_mb'])} free (floor {_mib(cap.get('min_free_memory_mb'))})")
    source = f"{cap.get('profile')}, {cap.get('worker_memory_source')}"
    parts.append(f"{_mib(cap.get('worker_memory_mb'))} a worker ({source})")
    parts.append(f"{cap.get('can_start', 0)} more fit")
    return " · ".join(parts)


_HELD = {
    "max_workers": "max_workers (scaling.max_workers)",
    "memory": "memory (node.min_free_memory_mb would be crossed)",
    "max_spawn_per_tick": "max_spawn_per_tick (more next decision)",
    "parked": "a parked model (its tasks wait for its reset)",
    "halted": "the breaker (the swarm is halted)",
}


def held_back_text(cap: dict[str, Any]) -> str:
    """What keeps the swarm from starting the workers its queue wants, or `nothing`."""
    held = cap.get("held_back_by")
    if not held:
        return "nothing"
    text = _HELD.get(held, str(held))
    unmet = cap.get("unmet") or 0
    if unmet:
        text += f": {unmet} more worker{'s' if unmet != 1 else ''} wanted"
    more = [_HELD.get(x, x).split(" (")[0] for x in cap.get("limited_by") or [] if x != held]
    text += f"; also {', '.join(more)}" if more else ""
    stranded = cap.get("stranded_categories") or {}
    if stranded:
        cats = ", ".join(f"{c} ({m})" for m, names in sorted(stranded.items()) for c in names)
        text += f"; waiting for a worker that takes them: {cats}"
    return text


def cluster_text(cluster: dict[str, Any]) -> str:
    """`node a · 3 nodes, 2 alive · postgresql://shoal:***@db/shoal` (status's cluster line)."""
    n, alive = cluster.get("nodes", 0), cluster.get("alive", 0)
    text = f"node {cluster.get('node_id')} · {n} node{'s' if n != 1 else ''}, {alive} alive"
    return text + (f" · {cluster['store']}" if cluster.get("store") else "")


def _seconds(value: float | None) -> str:
    """Tenths of a second while it matters (a heartbeat, a lease), then minutes and hours."""
    if value is None:
        return "-"
    return f"{value:.1f}s" if value < 60 else duration(value)


def nodes_table(nodes: list[dict[str, Any]]) -> Table:
    """`shoal nodes`: one row per node; `*` marks the node that answered."""
    table = Table(box=None, header_style="bold")
    for name in (
        "ID",
        "STATE",
        "HOST",
        "PID",
        "WORKERS",
        "HEARTBEAT",
        "LEASE",
        "UP",
        "VERSION",
        "INC",
        "URL",
    ):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for n in nodes:
        state = Text(str(n["state"]), style="" if n.get("alive") else "red")
        plain_row(
            table,
            f"{n['id']}{' *' if n.get('this') else ''}",
            state,
            n.get("host") or "-",
            str(n.get("pid", "-")),
            str(n.get("workers", 0)),
            f"{_seconds(n.get('heartbeat_age_s'))} ago",
            _seconds(n.get("lease_left_s")),
            age(n.get("started"), now) if n.get("alive") else "-",
            n.get("version") or "-",
            str(n.get("incarnation", 0)),
            n.get("url") or "-",
        )
    return table


def workers_table(workers: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    for name in ("ID", "STATE", "MODEL", "TASK", "CTX", "CPU", "MEM", "UP", "DONE", "CRASHES"):
        table.add_column(name, no_wrap=True)
    now = time.time()
    for w in workers:
        state = w["state"]
        if w.get("needs_input"):  # busy, but waiting on a question, not working
            state = Text(f"needs input ({age(w.get('needs_input_since'), now)})", style="yellow")
        elif w.get("retrying"):  # busy, but its agent's API requests keep failing
            state = Text(retrying_text(w["retrying"], now), style="yellow")
        plain_row(
            table,
            w["id"],
            state,
            w.get("model") or "-",
            w.get("task_id") or "-",
            _pct(w.get("context_used_percent")),
            _pct(w.get("cpu_percent")),
            _size(w.get("rss_bytes")),
            age(w.get("started"), now),
            str(w.get("tasks_done", 0)),
            str(w.get("crashes", 0)),
        )
    return table


def tasks_table(tasks: list[dict[str, Any]]) -> Table:
    table = Table(box=None, header_style="bold")
    id_width = min(max((len(t["id"]) for t in tasks), default=2), 36)
    table.add_column("ID", no_wrap=True, min_width=id_width)
    table.add_column("STATE", no_wrap=True, min_width=9)
    for name in ("PRI", "CATEGORY", "MODEL", "TRIES", "WORKER", "AGE"):
        table.add_column(name, no_wrap=True)
    table.add_column("PROMPT", overflow="ellipsis", no_wrap=True, ratio=1)
    now = time.time()
    for t in tasks:
        plain_row(
            table,
            t["id"],
            t["state"],
            str(t.get("priority", 0)),
            t.get("category") or "-",
            t.get("model") or "-",
            attempts_text(t),
            t.get("worker") or "-",
            age(t.get("created"), now),
            shorten(t.get("prompt")),
        )
    return table


def task_detail(task: dict[str, Any]) -> list[Any]:
    info = Table(show_header=False, box=None, pad_edge=False)
    info.add_column(style="bold")
    info.add_column()
    for key in ("id", "state", "reason", "priority", "category", "model", "deps", "worker"):
        value = task.get(key)
        if value in (None, [], ()):
            continue
        plain_row(info, key, ", ".join(value) if isinstance(value, list) else str(value))
    plain_row(info, "attempts", attempts_text(task))
    plain_row(info, "created", time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(task.get("created") or 0)))
    plain_row(info, "prompt", task.get("prompt") or "")
    if task.get("result") is not None:
        plain_row(info, "result", str(task["result"]))
    out: list[Any] = [info]
    attempts = task.get("attempts") or []
    if attempts:
        table = Table(box=None, header_style="bold", title="attempts", title_justify="left")
        with_ws = any(a.get("workspace") for a in attempts)
        names = (
            "N",
            "WORKER",
            "MODEL",
            "OUTCOME",
            "TOOK",
            "COST",
            "TOKENS",
            *(("CHANGE",) if with_ws else ()),
        )
        for name in (*names, "REASON"):
            table.add_column(name)
        for a in attempts:
            took = (a["ended"] - a["started"]) if a.get("ended") else time.time() - a["started"]
            plain_row(
                table,
                str(a["n"]),
                a["worker"],
                a.get("model") or "-",
                a.get("outcome") or "running",
                duration(took),
                *usage_cells(a.get("usage") or {}),
                *((change_cell(a.get("workspace")),) if with_ws else ()),
                shorten(a.get("reason"), 60),
            )
        out.append(table)
    return out


def change_cell(ws: dict[str, Any] | None) -> str:
    """An attempt's worktree change in a few words: branch, lines, and its check."""
    if not ws:
        return "-"
    if "branch" not in ws:
        return shorten(str(ws.get("error") or "-"), 40)
    check = ws.get("verify")
    verdict = "" if not isinstance(check, dict) else (" ✓ check" if check.get("passed") else " ✗ check")
    return f"{ws['branch']} +{ws.get('insertions', 0)} -{ws.get('deletions', 0)}{verdict}"


_DIFF_STYLES = (
    *(("+++", "bold"), ("---", "bold"), ("diff ", "bold")),
    *(("+", "green"), ("-", "red"), ("@@", "cyan")),
)


def diff_text(patch: str) -> Text:
    """A unified diff with git's colours: additions green, removals red, hunk headers cyan."""
    text = Text()
    for line in patch.splitlines(keepends=True):
        style = next((s for prefix, s in _DIFF_STYLES if line.startswith(prefix)), "")
        text.append(line, style=style)
    return text
