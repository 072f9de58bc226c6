"""Cluster benchmarks (issue 18): Shoal nodes as separate `shoal serve` processes sharing one queue on
a throwaway PostgreSQL 15 (tests/pgcluster.py) on 127.0.0.1, driven over their gateways.

    python benchmarks/bench_cluster.py                        # all five, default sizes
    python benchmarks/bench_cluster.py dispatch --tasks 1000
    python benchmarks/bench_cluster.py throughput --tasks 6000 --workers 16
    python benchmarks/bench_cluster.py recovery --kills 20
    python benchmarks/bench_cluster.py scale --per-node 300
    python benchmarks/bench_cluster.py claims --large 100000

dispatch: node A (no workers) takes `tasks.submit`; nodes B and C hold idle workers (a tiny
marker-dialect agent on a pipe that stamps the moment it first reads the prompt, as
bench_gateway.py's): submit at A → that stamp, p50/p99, one task at a time (goal p50 ≤ 5 ms, p99 ≤
20 ms). Split: A's submit round trip (A committed), submit → `task.running` (the claim decided: by
A, which books an idle worker of B or C in its submit's own write when it heard that worker is idle,
else by the worker's node), and that → prompt read; and how many claims each node made.
throughput: instant tasks through 1 node × 16 workers, then 3 nodes × 16 (fresh database each, same
run), submitted at every node's gateway; the durable rate from the database (last attempt ended −
first submit), the CPU of Shoal's node processes and of PostgreSQL per task (goal ≥ 1,000 tasks/s on
3 nodes).
recovery: 3 nodes × 4 fake-agent workers (lease 5 s, the default); each round every worker runs a
task, one node is SIGKILLed, then restarted: kill → `task.running` of each of its tasks on another
node, p99 over the rounds (goal ≤ lease + 1 s); lost (never done) and recorded twice (two `done`
attempts), read from the database, must be 0 and 0. Rerunnable chaos: `--kills N`.
scale: 3 nodes × N idle `cat` workers in PTYs, registered, then a few tasks dispatched to them; the
PostgreSQL connections of each node (pg_stat_activity matched to the node's sockets) and each node's
CPU at rest over 10 s (goal ≤ 3 % of a core).
claims: the claim write (TaskBook.select + claim, then PgStore's compare-and-set commit) with 1k and
with 100k ready tasks in PostgreSQL, p50/p99 (goal: flat); then end to end, a node with 2 workers
draining a 1k and a 100k queue: its claim decision (attempt started) → its agent read the prompt.

Nothing is asserted; RESULTS.md records what this prints. `--profile DIR` runs each node under
cProfile, every thread on its own (the trio loop, the store's thread), into DIR/<node>.<thread>.prof
as it stops cleanly; `--pg-stats` prints what pg_stat_statements saw after each benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without install
sys.path.insert(0, str(ROOT / "tests"))  # pgcluster.py and clusterkit.py (plain code, no pytest)

from clusterkit import Node, pg_rows, ready  # noqa: E402
from pgcluster import PgCluster  # noqa: E402

from shoal.actors.auth import read_token  # noqa: E402
from shoal.actors.client import Client, connect  # noqa: E402
from shoal.protocols.profiles import FAKE_AGENT  # noqa: E402
from shoal.runtime.eventbus import Event  # noqa: E402

PROFILE_DIR: Path | None = None  # --profile

# An agent that stamps the moment it first reads a prompt (bench_gateway.py's): the marker dialect
# on a pipe; its result is `recv <epoch>`.
STAMP_AGENT = textwrap.dedent(
    """
    import os, sys, time
    buf = b""
    first = None
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        if first is None:
            first = time.time()
        buf += data
        if b"\\r" in buf or b"\\n" in buf:
            os.write(1, b"recv %.6f\\nSHOAL_DONE\\n" % first)
            buf, first = b"", None
    """
)


# `--profile DIR`: a node runs under this wrapper; every thread (the trio loop, the store's thread, the
# listener) gets its own cProfile, written to DIR/<node>.<thread>.prof as the thread ends (a clean stop).
PROFILED_NODE = textwrap.dedent(
    """
    import cProfile, os, runpy, sys, threading
    out = os.environ["BENCH_PROFILE_PREFIX"]
    run = threading.Thread.run
    def profiled(self):
        prof = cProfile.Profile()
        prof.enable()
        try:
            run(self)
        finally:
            prof.disable()
            prof.dump_stats(f"{out}.{self.name}.prof")
    threading.Thread.run = profiled
    sys.argv = ["shoal", *sys.argv[1:]]
    prof = cProfile.Profile()
    prof.enable()
    try:
        runpy.run_module("shoal.actors.cli", run_name="__main__")
    finally:
        prof.disable()
        prof.dump_stats(f"{out}.main.prof")
    """
)


# ---- figures ------------------------------------------------------------------------------------


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def dist(values_s: Sequence[float]) -> str:
    ms = [v * 1000 for v in values_s]
    if not ms:
        return "n=0"
    return (
        f"n={len(ms)} p50={pct(ms, 50):.2f} ms p90={pct(ms, 90):.2f} ms p99={pct(ms, 99):.2f} ms "
        f"max={max(ms):.2f} ms mean={statistics.fmean(ms):.2f} ms"
    )


def goal(ok: bool) -> str:
    return "met" if ok else "NOT met"


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def cpu_s(proc: psutil.Process) -> float:
    """User + system CPU seconds of one process (not its children)."""
    with contextlib.suppress(psutil.Error):
        t = proc.cpu_times()
        return float(t.user + t.system)
    return 0.0


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of a process's live descendants (the agents of a node)."""
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0.0
    return sum(cpu_s(k) for k in kids)


def pg_cpu_s(pg: PgCluster) -> float:
    return sum(cpu_s(p) for p in pg._processes())


# ---- a cluster of `shoal serve` nodes -------------------------------------------------------------


def stamp_profile(agent: Path) -> str:
    return textwrap.dedent(
        f"""
        [workers.profiles.stamp]
        argv = ["{sys.executable}", "-u", "{agent}"]
        dialect = "marker"
        transport = "pipe"
        startup_timeout_s = 30.0
        stop_timeout_s = 2.0
        memory_mb = 16
        """
    )


def fake_profile() -> str:
    argv = ", ".join(f'"{a}"' for a in (sys.executable, "-S", FAKE_AGENT, "--context-step", "0"))
    return textwrap.dedent(
        f"""
        [workers.profiles.fake-steady]
        argv = [{argv}]
        dialect = "prompt"
        transport = "pty"
        startup_timeout_s = 30.0
        stop_timeout_s = 2.0
        memory_mb = 16
        options = {{ submit_delay_ms = 0 }}
        """
    )


CAT_PROFILE = textwrap.dedent(
    """
    [workers.profiles.cat]
    argv = ["/bin/sh", "-c", "stty -echo; exec cat"]
    dialect = "marker"
    transport = "pty"
    startup_timeout_s = 300.0
    stop_timeout_s = 1.0
    memory_mb = 1
    """
)


def node_toml(
    profile: str,
    profiles: str,
    *,
    workers: int,
    spawn_per_tick: int = 16,
    tick_s: float = 0.05,
    lease_s: float = 5.0,
    extra: str = "",
) -> str:
    """A node's configuration: its own workers, all started at once and kept (min_workers =
    node.max_workers; scaling.max_workers, the cluster's cap, out of the way), the cluster defaults
    for the lease (5 s), heartbeat (1 s) and poll (2 s) unless given."""
    return (
        textwrap.dedent(
            f"""
            [workers]
            profile = "{profile}"
            ring_buffer_kib = 16

            [scaling]
            min_workers = {workers}
            max_workers = 100000

            max_spawn_per_tick = {max(1, spawn_per_tick)}
            tick_s = {tick_s}
            idle_s = 3600
            stabilisation_s = 3600

            [gateway]
            max_requests_per_s = 1000000000.0
            client_buffer = 100000

            [node]
            max_workers = {workers}
            lease_s = {lease_s}
            heartbeat_s = {min(1.0, lease_s / 4)}
            min_free_memory_mb = 0

            [supervision.breaker]
            crash_rate_max = 100000
            """
        )
        + profiles
        + extra
    )


class Cluster:
    """A PostgreSQL database and the `shoal serve` nodes on it, in one temporary directory."""

    def __init__(self, pg: PgCluster, root: Path) -> None:
        self.pg = pg
        self.root = root
        self.url = pg.create_database()
        self.nodes: dict[str, Node] = {}
        self.tomls: dict[str, str] = {}
        self.agent = root / "stamp_agent.py"
        self.agent.write_text(STAMP_AGENT)

    @property
    def token(self) -> str:
        return read_token(self.root / "token")

    def spawn(self, node_id: str, toml: str) -> Node:
        """Start a node (clusterkit's way, with this benchmark's configuration)."""
        self.tomls[node_id] = toml
        state = self.root / node_id
        state.mkdir(parents=True, exist_ok=True)
        config = self.root / f"{node_id}.toml"
        config.write_text(toml)
        log_path = self.root / f"{node_id}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL")}
        run = [sys.executable, "-m", "shoal.actors.cli"]
        if PROFILE_DIR is not None:
            wrapper = self.root / "profiled_node.py"
            wrapper.write_text(PROFILED_NODE)
            run = [sys.executable, str(wrapper)]
            env["BENCH_PROFILE_PREFIX"] = str(PROFILE_DIR / node_id)
        argv = [
            *run,
            "serve",
            "--config", str(config),
            "--state-dir", str(state),
            "--store", self.url,
            "--node-id", node_id,
            "--port", "0",
            "--no-dashboard",
            "--token-file", str(self.root / "token"),
            "--log-format", "json",
        ]  # fmt: skip
        with open(log_path, "a") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        node = Node(node_id, proc, state, log_path)
        self.nodes[node_id] = node
        return node

    async def start(self, node_id: str, toml: str) -> Node:
        return await ready(self.spawn(node_id, toml), timeout=120)

    async def restart(self, node_id: str) -> Node:
        return await self.start(node_id, self.tomls[node_id])

    def stop_all(self) -> None:
        """SIGTERM (a clean stop: its profile is written), then SIGKILL what is left."""
        for node in self.nodes.values():
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes.values():
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()

    async def rows(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """Read the shared database (in a thread: never block the loop)."""
        return await trio.to_thread.run_sync(lambda: pg_rows(self.url, query, *params))

    async def one(self, query: str, *params: Any) -> Any:
        return (await self.rows(query, *params))[0][0]

    @contextlib.asynccontextmanager
    async def client(self, node_id: str) -> AsyncIterator[Client]:
        async with connect(self.nodes[node_id].url, self.token) as c:
            yield c


@contextlib.contextmanager
def cluster(pg: PgCluster, name: str) -> Iterator[Cluster]:
    with tempfile.TemporaryDirectory(prefix=f"shoal-bench-cluster-{name}-") as tmp:
        c = Cluster(pg, Path(tmp))
        try:
            yield c
        finally:
            c.stop_all()


async def wait_workers(c: Cluster, node_id: str, n: int, state: str = "idle", timeout: float = 300) -> float:
    """Wait until `n` of the node's own workers are in `state` (checked at each worker event, at
    most every 0.5 s); returns how long it took."""
    t0 = time.monotonic()
    prefix = f"{node_id}:"
    async with c.client(node_id) as cl, cl.events(["worker.*"]) as stream:
        last = 0.0
        with trio.fail_after(timeout):
            while True:
                if time.monotonic() - last >= 0.5:
                    last = time.monotonic()
                    mine = [w for w in await cl.workers() if w.id.startswith(prefix)]
                    if sum(1 for w in mine if getattr(w.state, "value", w.state) == state) >= n:
                        return time.monotonic() - t0
                with trio.move_on_after(0.5):
                    await stream.__anext__()


def enable_pg_stats(pg: PgCluster) -> None:
    """pg_stat_statements (Debian's postgresql package ships it): what the nodes ask PostgreSQL,
    how often, how long; a restart loads it."""
    auto = pg.data_dir / "postgresql.auto.conf"
    with open(auto, "a") as f:
        f.write("shared_preload_libraries = 'pg_stat_statements'\npg_stat_statements.track = 'all'\n")
    pg.restart()
    import psycopg

    with psycopg.connect(pg.url(), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")


PG_STATS = False  # --pg-stats


async def reset_pg_stats(pg: PgCluster) -> None:
    if PG_STATS:
        await trio.to_thread.run_sync(pg_rows, pg.url(), "SELECT pg_stat_statements_reset()")


async def print_pg_stats(pg: PgCluster, top: int = 12) -> None:
    """The statements the benchmark's databases spent most time on since the last reset."""
    if not PG_STATS:
        return
    rows = await trio.to_thread.run_sync(
        pg_rows,
        pg.url(),
        "SELECT calls, rows, total_exec_time, mean_exec_time,"
        " left(regexp_replace(query, '\\s+', ' ', 'g'), 90)"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname NOT IN ('shoal', 'postgres') AND query !~* '^\\s*create '"
        " ORDER BY total_exec_time DESC LIMIT %s",
        top,
    )
    print("  pg_stat_statements (top by total time): calls, rows, total ms, mean ms, query")
    for calls, nrows, total, mean, query in rows:
        print(f"    {calls:>8} {nrows:>8} {total:>9.0f} {mean:>7.3f}  {query}")


def header(name: str) -> None:
    print(
        f"[{name}] python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {load()}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        flush=True,
    )


# ---- dispatch -------------------------------------------------------------------------------------


async def bench_dispatch(pg: PgCluster, args: argparse.Namespace) -> None:
    header("dispatch")
    n, warm = args.tasks, 50
    with cluster(pg, "dispatch") as c:
        stamp = stamp_profile(c.agent)
        await c.start("a", node_toml("stamp", stamp, workers=0))
        await c.start("b", node_toml("stamp", stamp, workers=args.workers))
        await c.start("c", node_toml("stamp", stamp, workers=args.c_workers))
        await wait_workers(c, "b", args.workers)
        if args.c_workers:
            await wait_workers(c, "c", args.c_workers)
        procs = {name: psutil.Process(node.proc.pid) for name, node in c.nodes.items()}
        async with c.client("a") as ca, ca.events(["task.running", "task.done", "worker.state"]) as stream:
            await _dispatches(ca, stream, 0, warm, wait_idle=True)
            before = {name: cpu_s(p) for name, p in procs.items()}
            switches = {name: sum(p.num_ctx_switches()) for name, p in procs.items()}
            pg_before = pg_cpu_s(pg)
            quiet = await _dispatches(ca, stream, n, 0, wait_idle=True)
            cpu = {name: (cpu_s(p) - before[name]) / n * 1e6 for name, p in procs.items()}
            switches = {name: (sum(p.num_ctx_switches()) - switches[name]) / n for name, p in procs.items()}
            pg_cpu = (pg_cpu_s(pg) - pg_before) / n * 1e6
            back = await _dispatches(ca, stream, n, 0, wait_idle=False)
        conflicts = await c.one("SELECT count(*) FROM attempts WHERE outcome IS DISTINCT FROM 'done'")
        claimers = dict(
            await c.rows("SELECT node, count(*) FROM events WHERE topic = 'task.running' GROUP BY node")
        )
    read, rtt, claimed, claim_to_read, on = quiet
    p50, p99 = pct(read, 50) * 1000, pct(read, 99) * 1000
    print(
        f"dispatch: submit at A (no workers) → prompt read by an idle worker on another node "
        f"(B {args.workers}, C {args.c_workers} idle stamp workers), {n} tasks one at a time after {warm} "
        f"warm-up, each submitted once the worker that ran the one before reported idle at A; ran on {on}; "
        f"{load()}"
    )
    print(f"  submit → prompt read (agent's stamp): {dist(read)}")
    print(f"    goal p50 ≤ 5 ms: {goal(p50 <= 5)}; p99 ≤ 20 ms: {goal(p99 <= 20)}")
    print(f"  of which submit round trip at A (A's commit, reply): {dist(rtt)}")
    print(f"  submit → task.running (claim decided, by A when it booked the worker): {dist(claimed)}")
    print(f"  task.running → prompt read (committed, at the worker's node, told): {dist(claim_to_read)}")
    print(f"  claims by node, both runs and the warm-up (A: booked in its submit write): {claimers}")
    shown = ", ".join(f"{name} {us:,.0f}" for name, us in cpu.items())
    print(
        f"  CPU a dispatch (its whole cycle: submit, run, done, idle): nodes {shown} µs;"
        f" PostgreSQL {pg_cpu:,.0f} µs"
    )
    shown = ", ".join(f"{name} {k:.0f}" for name, k in switches.items())
    print(f"  context switches a dispatch (the same cycle; each a thread that slept and woke): nodes {shown}")
    read, rtt, claimed, claim_to_read, on = back
    print(
        f"  back to back, each submitted as soon as the one before was done at A (its node still"
        f" finishing it, as under load): {dist(read)}; ran on {on}"
    )
    print(f"  attempts not done (lost claims, crashes): {conflicts}", flush=True)


async def _dispatches(
    ca: Client, stream: Any, n: int, warm: int, *, wait_idle: bool
) -> tuple[list[float], list[float], list[float], list[float], dict[str, int]]:
    """`n` tasks submitted at A one at a time (after `warm` more); with `wait_idle` each once the
    worker that ran the one before said it is idle again (`worker.state` at A)."""
    sent: dict[str, float] = {}
    rtt: list[float] = []
    running: dict[str, float] = {}
    ran_on: dict[str, str] = {}
    idle: set[str] = set()
    for i in range(n + warm):
        t0 = time.time()
        task = await ca.submit({"prompt": f"prompt {i}"})
        rtt.append(time.time() - t0)
        sent[task.id] = t0
        done = False
        while not done or (wait_idle and ran_on[task.id] not in idle):
            item = await stream.__anext__()
            if not isinstance(item, Event):
                continue
            if item.topic == "worker.state":
                worker = item.data.get("worker")
                if item.data.get("state") == "idle":
                    idle.add(worker)
                else:
                    idle.discard(worker)
                continue
            if item.data.get("task_id") != task.id:
                continue
            if item.topic == "task.running":
                running[task.id] = item.ts
                ran_on[task.id] = item.data["worker"]
                idle.discard(item.data["worker"])
            else:
                done = True
    read: list[float] = []
    claimed: list[float] = []
    claim_to_read: list[float] = []
    on: dict[str, int] = {}
    for k, (tid, t0) in enumerate(sent.items()):
        task = await ca.get(tid)
        assert task.result and task.result.startswith("recv "), task
        if k < warm:
            continue
        stamp_ts = float(task.result.split()[1])
        read.append(stamp_ts - t0)
        claimed.append(running[tid] - t0)
        claim_to_read.append(stamp_ts - running[tid])
        node = task.attempts[-1].worker.split(":")[0]
        on[node] = on.get(node, 0) + 1
    return read, rtt[warm:], claimed, claim_to_read, on


# ---- throughput -----------------------------------------------------------------------------------


async def _run_throughput(pg: PgCluster, nodes: int, workers: int, n: int) -> str:
    names = ["a", "b", "c", "d", "e"][:nodes]
    with cluster(pg, f"tp{nodes}") as c:
        stamp = stamp_profile(c.agent)
        for name in names:
            await c.start(name, node_toml("stamp", stamp, workers=workers))
        for name in names:
            await wait_workers(c, name, workers)
        procs = {name: psutil.Process(c.nodes[name].proc.pid) for name in names}
        cpu0 = {name: cpu_s(p) for name, p in procs.items()}
        agents0 = sum(tree_cpu_s(p.pid) for p in procs.values())
        pg0 = pg_cpu_s(pg)
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(c.client(name)) for name in names]
            stream = await stack.enter_async_context(clients[0].events(["task.done"]))
            t0 = time.time()
            batch = 500
            for k, start in enumerate(range(0, n, batch)):
                specs = [{"prompt": f"x{i}"} for i in range(start, min(n, start + batch))]
                await clients[k % len(clients)].submit_many(specs)
            submitted = time.time() - t0
            done = 0
            with trio.fail_after(max(120, n / 50)):
                async for item in stream:
                    if isinstance(item, Event):
                        done += 1
                    else:  # a gap or an overflow: count in the database
                        done = await c.one("SELECT count(*) FROM tasks WHERE state = 'done'")
                    if done >= n:
                        break
            waited = time.time() - t0
        cpu = {name: cpu_s(p) - cpu0[name] for name, p in procs.items()}
        agents = max(0.0, sum(tree_cpu_s(p.pid) for p in procs.values()) - agents0)
        pg_used = pg_cpu_s(pg) - pg0
        ((count, last),) = await c.rows("SELECT count(*), max(ended) FROM attempts WHERE outcome = 'done'")
        per_node = dict(
            await c.rows("SELECT split_part(worker, ':', 1), count(*) FROM attempts GROUP BY 1 ORDER BY 1")
        )
        twice = await c.one(
            "SELECT count(*) FROM (SELECT task_id FROM attempts GROUP BY 1 HAVING count(*) > 1) x"
        )
        outcomes = dict(await c.rows("SELECT coalesce(outcome, 'open'), count(*) FROM attempts GROUP BY 1"))
        topics = await c.rows("SELECT topic, count(*) FROM events GROUP BY 1 ORDER BY 2 DESC, 1")
        writes = await c.one("SELECT count(*) FROM task_log")
    elapsed = last - t0
    shoal = sum(cpu.values())
    return (
        f"  {nodes} node(s) × {workers} workers: {count / elapsed:,.0f} tasks/s durable ({count} done in "
        f"{elapsed:.2f} s: first submit → last attempt ended in PostgreSQL; submitted in {submitted:.2f} s, "
        f"done event seen after {waited:.2f} s); by node {per_node}; tasks run more than once {twice},"
        f" attempts {outcomes}\n"
        f"    CPU: Shoal nodes {shoal:.1f} s ({shoal / count * 1e6:.0f} µs/task; "
        + ", ".join(f"{k} {v:.1f} s" for k, v in cpu.items())
        + f"), PostgreSQL {pg_used:.1f} s ({pg_used / count * 1e6:.0f} µs/task),"
        f" agents {agents:.1f} s; {load()}\n"
        f"    store: {writes / count:.2f} row writes and {sum(n for _t, n in topics) / count:.2f}"
        " events a task ("
        + ", ".join(f"{t} {n / count:.2f}" for t, n in topics if n >= count / 100)
        + "); every node reads each"
    )


async def bench_throughput(pg: PgCluster, args: argparse.Namespace) -> None:
    header("throughput")
    print(
        f"throughput: {args.tasks} instant tasks (stamp agents on pipes), submitted in batches of 500 "
        f"round robin at every node's gateway, durable (PostgreSQL, fsync on)",
        flush=True,
    )
    for nodes in args.nodes:
        line = await _run_throughput(pg, nodes, args.workers, args.tasks)
        print(line, flush=True)
    print("  goal ≥ 1,000 tasks/s for 3 nodes × 16 workers", flush=True)


# ---- recovery -------------------------------------------------------------------------------------


async def bench_recovery(pg: PgCluster, args: argparse.Namespace) -> None:
    header("recovery")
    names = ["a", "b", "c"]
    w = args.workers
    lats: list[float] = []
    orphans = 0
    with cluster(pg, "recovery") as c:
        toml = node_toml("fake-steady", fake_profile(), workers=w, lease_s=args.lease)
        for name in names:
            await c.start(name, toml)
        for name in names:
            await wait_workers(c, name, w)
        for k in range(args.kills):
            victim = names[k % 3]
            watcher = names[(k + 1) % 3]
            ids = [f"r{k}-{i}" for i in range(3 * w)]
            async with c.client(watcher) as cw, cw.events(["task.running", "task.done"]) as stream:
                await cw.submit_many([{"id": t, "prompt": f"{t} [[think:{args.think}]]"} for t in ids])
                where: dict[str, str] = {}
                with trio.fail_after(60):
                    while sum(1 for v in where.values() if v == victim) < w:
                        item = await stream.__anext__()
                        if isinstance(item, Event) and item.topic == "task.running":
                            where[item.data["task_id"]] = item.data["worker"].split(":")[0]
                pid = c.nodes[victim].proc.pid
                kids = [p.pid for p in psutil.Process(pid).children(recursive=True)]
                t_kill = time.time()
                os.kill(pid, signal.SIGKILL)
                victims = {t for t, node in where.items() if node == victim}
                again: dict[str, float] = {}
                done: set[str] = set()
                with trio.fail_after(args.lease * 4 + 60):
                    while len(again) < len(victims) or len(done) < len(ids):
                        item = await stream.__anext__()
                        if not isinstance(item, Event):
                            continue
                        tid = str(item.data.get("task_id"))
                        if item.topic == "task.done":
                            done.add(tid)
                        elif tid in victims and not item.data["worker"].startswith(f"{victim}:"):
                            again.setdefault(tid, item.ts - t_kill)
            lats.extend(again.values())
            await c.nodes[victim].wait_exit()
            for kid in kids:  # the killed node's agents should have gone with its PTYs
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(kid)
                    if p.status() != psutil.STATUS_ZOMBIE:
                        orphans += 1
                        p.kill()
            await c.restart(victim)
            await wait_workers(c, victim, w)
            print(
                f"  round {k + 1}: killed {victim} running {len(victims)} tasks; running again elsewhere "
                f"after {', '.join(f'{v:.2f}' for v in sorted(again.values()))} s; {load()}",
                flush=True,
            )
        total = await c.one("SELECT count(*) FROM tasks")
        lost = await c.one("SELECT count(*) FROM tasks WHERE state <> 'done'")
        twice = await c.one(
            "SELECT count(*) FROM (SELECT task_id FROM attempts WHERE outcome = 'done'"
            " GROUP BY 1 HAVING count(*) > 1) x"
        )
        crashed = await c.one("SELECT count(*) FROM attempts WHERE outcome = 'crashed'")
    p99 = pct(lats, 99)
    print(
        f"recovery: {args.kills} SIGKILLs of a node (3 nodes × {w} fake workers, tasks of {args.think} s, "
        f"lease {args.lease:g} s, heartbeat 1 s): kill → task.running on another node: {dist(lats)}"
    )
    print(f"  goal p99 ≤ lease + 1 s = {args.lease + 1:g} s: {goal(p99 <= args.lease + 1)}")
    print(
        f"  from PostgreSQL: {total} tasks, lost (not done) {lost}, recorded twice (two done attempts) "
        f"{twice}, crashed attempts {crashed} (goal 0 and 0: {goal(lost == 0 and twice == 0)}); "
        f"agents outliving their killed node {orphans}; {load()}",
        flush=True,
    )


# ---- scale ----------------------------------------------------------------------------------------


async def connections_by_node(c: Cluster) -> dict[str, int]:
    """pg_stat_activity's client ports matched to each node's TCP sockets to PostgreSQL."""
    ports = {
        port: name
        for name, node in c.nodes.items()
        if node.proc.poll() is None
        for conn in psutil.Process(node.proc.pid).net_connections(kind="tcp")
        if conn.raddr and conn.raddr.port == c.pg.port
        for port in [conn.laddr.port]
    }
    counts: dict[str, int] = {}
    for (port,) in await c.rows("SELECT client_port FROM pg_stat_activity WHERE application_name = 'shoal'"):
        name = ports.get(port, "other")
        counts[name] = counts.get(name, 0) + 1
    return counts


async def bench_scale(pg: PgCluster, args: argparse.Namespace) -> None:
    header("scale")
    names = ["a", "b", "c"]
    n = args.per_node
    with cluster(pg, "scale") as c:
        toml = node_toml("cat", CAT_PROFILE, workers=n, spawn_per_tick=100, tick_s=1.0)
        t0 = time.monotonic()
        for name in names:
            await c.start(name, toml)
        for name in names:
            await wait_workers(c, name, n)
        up = time.monotonic() - t0
        await trio.sleep(3)  # let start-up settle before measuring rest
        procs = {name: psutil.Process(c.nodes[name].proc.pid) for name in names}
        for p in procs.values():
            p.cpu_percent(None)
        pg0 = pg_cpu_s(pg)
        rest = 10.0
        await trio.sleep(rest)
        cpu = {name: p.cpu_percent(None) for name, p in procs.items()}
        pg_rest = (pg_cpu_s(pg) - pg0) / rest * 100
        conns = await connections_by_node(c)
        registered = dict(await c.rows("SELECT id, workers FROM nodes ORDER BY id"))
        lat: list[float] = []
        on: dict[str, int] = {}
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(c.client(name)) for name in names]
            stream = await stack.enter_async_context(clients[0].events(["task.running"]))
            for i in range(args.probes):
                t = time.time()
                task = await clients[i % 3].submit({"prompt": "SHOAL_DONE"})
                with trio.fail_after(60):
                    while True:
                        item = await stream.__anext__()
                        if isinstance(item, Event) and item.data.get("task_id") == task.id:
                            break
                lat.append(item.ts - t)
                node = item.data["worker"].split(":")[0]
                on[node] = on.get(node, 0) + 1
        done = await c.one("SELECT count(*) FROM tasks WHERE state = 'done'")
        total_conns = await c.one(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        )
    worst = max(cpu.values())
    print(
        f"scale: 3 nodes × {n} idle cat workers in PTYs ({3 * n} in all) up and idle in {up:.1f} s; "
        f"registered in `nodes`: {registered}; {load()}"
    )
    print(
        "  Shoal CPU at rest over 10 s, % of a core: "
        + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items())
        + f" (goal ≤ 3 % per node: {goal(worst <= 3)}); PostgreSQL {pg_rest:.2f} %"
    )
    print(
        f"  PostgreSQL connections per node (pg_stat_activity ↔ the node's sockets): {conns}; "
        f"client backends in all {total_conns}"
    )
    print(
        f"  {args.probes} tasks submitted round robin at a, b, c: submit → task.running {dist(lat)};"
        f" ran on {on}; done {done}",
        flush=True,
    )


# ---- claims ---------------------------------------------------------------------------------------


async def _claims_direct(pg: PgCluster, sizes: Sequence[int], m: int) -> None:
    """The claim as a node makes it, without the node: the book picks and claims, the store writes
    it with compare-and-set (one transaction, the feed entry and NOTIFY included)."""
    from shoal.actors.pgstore import PgStore
    from shoal.actors.taskbook import TaskBook, WorkerView
    from shoal.protocols.tasks import TaskSpec

    url = pg.create_database()
    store = await PgStore.open(url, "bench")
    try:
        book = TaskBook(stamp=store.stamp, seq_source=store.next_seq)
        view = WorkerView("bench:w1", None)
        queued = 0
        for size in sorted(sizes):
            t_fill = time.perf_counter()
            while queued < size + m:
                k = min(2000, size + m - queued)
                book.submit([TaskSpec(prompt=f"queued task {queued + i}") for i in range(k)], time.time())
                changes, _events, _ready = book.drain()
                await store.commit(changes)
                queued += k
            fill = time.perf_counter() - t_fill
            (in_pg,) = (
                await trio.to_thread.run_sync(
                    pg_rows, url, "SELECT count(*) FROM tasks WHERE state = 'ready'"
                )
            )[0]
            pick: list[float] = []
            write: list[float] = []
            for _ in range(m):
                t0 = time.perf_counter()
                tid = book.select(view)
                assert tid is not None
                book.claim(tid, view.id, None, time.time())
                changes, _events, _ready = book.drain()
                t1 = time.perf_counter()
                landed = await store.write(changes).wait()
                t2 = time.perf_counter()
                assert not landed.conflicts
                pick.append(t1 - t0)
                write.append(t2 - t1)
                queued -= 1
            total = [a + b for a, b in zip(pick, write, strict=True)]
            print(
                f"  direct, {in_pg:,} ready in PostgreSQL (filled in {fill:.1f} s): claim {dist(total)}\n"
                f"    of which select+claim in the book {dist(pick)}; compare-and-set commit {dist(write)}; "
                f"{load()}",
                flush=True,
            )
    finally:
        await store.aclose()


async def _claims_node(pg: PgCluster, size: int, m: int) -> None:
    """A node with 2 workers draining a queue of `size`: claim decided (the attempt's `started`) →
    the agent read the prompt (its stamp), over the first `m` tasks it ran."""
    with cluster(pg, f"claims{size}") as c:
        stamp = stamp_profile(c.agent)
        await c.start("a", node_toml("stamp", stamp, workers=0))
        t0 = time.perf_counter()
        async with c.client("a") as ca:
            for start in range(0, size, 2000):
                await ca.submit_many([{"prompt": f"q{i}"} for i in range(start, min(size, start + 2000))])
        fill = time.perf_counter() - t0
        t0 = time.perf_counter()
        await c.start("b", node_toml("stamp", stamp, workers=2))
        start_s = time.perf_counter() - t0
        async with c.client("a") as ca, ca.events(["task.done"]) as stream:
            done = 0
            with trio.fail_after(600):
                async for item in stream:
                    if isinstance(item, Event):
                        done += 1
                        if done >= m:
                            break
        rows = await c.rows(
            "SELECT a.started, t.result FROM attempts a JOIN tasks t ON t.id = a.task_id"
            " WHERE a.outcome = 'done' ORDER BY a.started LIMIT %s",
            m,
        )
        ready_left = await c.one("SELECT count(*) FROM tasks WHERE state = 'ready'")
    lat = [float(result.split()[1]) - started for started, result in rows]
    print(
        f"  end to end, a node with 2 workers draining {size:,} queued (submitted in {fill:.1f} s, "
        f"node up in {start_s:.1f} s, {ready_left:,} still ready at the end): claim → prompt read over "
        f"the first {len(lat)} tasks {dist(lat)}; {load()}",
        flush=True,
    )


async def bench_claims(pg: PgCluster, args: argparse.Namespace) -> None:
    header("claims")
    print(f"claims: claim latency with {args.small:,} vs {args.large:,} ready tasks in PostgreSQL")
    await _claims_direct(pg, [args.small, args.large], args.claims)
    if not args.no_node:
        for size in (args.small, args.large):
            await _claims_node(pg, size, args.node_claims)
    print("  goal: flat (the p99 at the large size about the p99 at the small one)", flush=True)


BENCHES = {
    "dispatch": bench_dispatch,
    "throughput": bench_throughput,
    "recovery": bench_recovery,
    "scale": bench_scale,
    "claims": bench_claims,
}


def main() -> None:
    global PROFILE_DIR, PG_STATS
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", nargs="*", help=f"any of {', '.join(BENCHES)} (default: all)")
    parser.add_argument("--tasks", type=int, default=None, help="dispatch: 1000; throughput: 6000")
    parser.add_argument(
        "--workers", type=int, default=None, help="dispatch: 4 on B; throughput: 16; recovery: 4"
    )
    parser.add_argument("--c-workers", type=int, default=4, help="dispatch: idle workers on node C too")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3], help="throughput: node counts")
    parser.add_argument(
        "--kills", type=int, default=20, help="recovery: rounds, one SIGKILL each (≈ 10 s a round)"
    )
    parser.add_argument("--lease", type=float, default=5.0, help="recovery: node.lease_s (default 5)")
    parser.add_argument("--think", type=float, default=3.0, help="recovery: each task's think time (s)")
    parser.add_argument("--per-node", type=int, default=300, help="scale: idle cat workers per node")
    parser.add_argument("--probes", type=int, default=20, help="scale: tasks dispatched to the idle workers")
    parser.add_argument("--small", type=int, default=1_000, help="claims: the small queue")
    parser.add_argument("--large", type=int, default=100_000, help="claims: the large queue")
    parser.add_argument(
        "--claims", type=int, default=1_000, help="claims: claims measured at each size (direct)"
    )
    parser.add_argument("--node-claims", type=int, default=500, help="claims: tasks a node runs at each size")
    parser.add_argument("--no-node", action="store_true", help="claims: the direct measure only")
    parser.add_argument("--profile", type=Path, default=None, help="run nodes under cProfile into this dir")
    parser.add_argument("--pg-stats", action="store_true", help="print pg_stat_statements after each")
    args = parser.parse_args()
    unknown = [name for name in args.which if name not in BENCHES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        PROFILE_DIR = args.profile.resolve()
    print(f"bench_cluster: {' '.join(sys.argv[1:]) or '(all)'}", flush=True)
    # SIGTERM (timeout, kill): unwind like Ctrl-C, so the nodes and PostgreSQL are stopped
    signal.signal(signal.SIGTERM, lambda *_: signal.raise_signal(signal.SIGINT))
    pg = PgCluster()
    pg.start()
    try:
        if args.pg_stats:
            enable_pg_stats(pg)
            PG_STATS = True
        ver = pg_rows(pg.url(), "SHOW server_version")[0][0]
        print(f"PostgreSQL {ver} on 127.0.0.1:{pg.port} (fsync on, synchronous_commit on)", flush=True)
        for name in args.which or list(BENCHES):
            ns = argparse.Namespace(**vars(args))
            if ns.tasks is None:
                ns.tasks = {"dispatch": 1000, "throughput": 6000}.get(name, 0)
            if ns.workers is None:
                ns.workers = {"dispatch": 4, "throughput": 16, "recovery": 4}.get(name, 0)
            trio.run(reset_pg_stats, pg)
            trio.run(BENCHES[name], pg, ns)
            trio.run(print_pg_stats, pg)
    finally:
        pg.close()


if __name__ == "__main__":
    main()
