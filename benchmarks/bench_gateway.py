"""Gateway benchmarks: submit round trip, submit → prompt at a worker, event fan-out.

    python benchmarks/bench_gateway.py                  # all three with the issue's sizes
    python benchmarks/bench_gateway.py rtt --calls 10000
    python benchmarks/bench_gateway.py dispatch --tasks 1000
    python benchmarks/bench_gateway.py fanout --clients 50 --rate 1000 --seconds 5

rtt: `tasks.submit` over the websocket with the durable SQLite store (on disk before the reply),
one call after the other from `shoal.runtime.connect`: p50/p99 of the round trip (goal p99 ≤ 3 ms).
dispatch: `tasks.submit` over the gateway → the first byte of the prompt read by an idle worker's
agent, stamped by the agent itself (a tiny marker-dialect agent on a pipe): p50/p99 (goal p99 ≤ 5 ms).
fanout: 50 clients (in 2 separate processes) subscribed with `batch: true` to every topic (`--topics`)
while 8 workers (a tiny marker agent on pipes) complete tasks submitted at 1,000 per second: delivery
delay of each event (publish → received by a client) p99 (goal ≤ 20 ms), and the tasks completed per
second with and without those subscribers (goal: within 10 %), also flat out (reported, no goal),
with the CPU used by Shoal's process and by the client processes.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without install

from shoal.actors.client import connect
from shoal.actors.swarm import SwarmHandle
from shoal.actors.tree import open_swarm
from shoal.protocols.config import config_from_dict
from shoal.runtime.eventbus import Event

AGENT = textwrap.dedent(
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


TS = re.compile(r'\{"seq":\d+,"ts":([0-9.e+-]+)')  # an event's publish time in a notification's JSON


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(name: str, values_s: list[float], goal_ms: float | None = None) -> None:
    ms = [v * 1000 for v in values_s]
    line = (
        f"{name}: n={len(ms)} p50={pct(ms, 50):.3f} ms p90={pct(ms, 90):.3f} ms "
        f"p99={pct(ms, 99):.3f} ms max={max(ms):.3f} ms mean={statistics.fmean(ms):.3f} ms"
    )
    if goal_ms is not None:
        line += f"  (goal p99 ≤ {goal_ms:g} ms: {'met' if pct(ms, 99) <= goal_ms else 'NOT met'})"
    print(line, flush=True)


def base_config(state_dir: str, **sections: Any) -> Any:
    data: dict[str, Any] = {
        "state_dir": state_dir,
        "gateway": {"enabled": True, "port": 0, "max_requests_per_s": 1e9},
        "http": {"enabled": False},
        "scaling": {"max_workers": 0},
        "log": {"level": "warning"},
    }
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return config_from_dict(data)


# ---- rtt ---------------------------------------------------------------------------------------------


async def bench_rtt(calls: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        async with open_swarm(base_config(state)) as swarm:
            assert swarm.gateway_url
            async with connect(swarm.gateway_url, swarm.token) as c:
                for i in range(200):  # warm up (imports, caches, SQLite pages)
                    await c.call("tasks.submit", {"task": {"prompt": f"warm {i}"}})
                times: list[float] = []
                start = time.perf_counter()
                for i in range(calls):
                    t0 = time.perf_counter()
                    await c.call("tasks.submit", {"task": {"prompt": f"task {i}", "category": "bench"}})
                    times.append(time.perf_counter() - t0)
                took = time.perf_counter() - start
    print(f"store: SQLite (WAL, synchronous={swarm.config.store.synchronous}) in a temporary directory")
    report("tasks.submit round trip", times, goal_ms=3)
    print(f"  {calls / took:.0f} sequential calls/s")


# ---- dispatch ----------------------------------------------------------------------------------------


async def bench_dispatch(tasks: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        agent = Path(state) / "stamp_agent.py"
        agent.write_text(AGENT)
        profile = {
            "argv": [sys.executable, "-u", str(agent)],
            "dialect": "marker",
            "transport": "pipe",
            "startup_timeout_s": 10.0,
        }
        config = base_config(
            state,
            workers={"profiles": {"stamp": profile}, "profile": "stamp"},
            scaling={"min_workers": workers, "max_workers": workers, "tick_s": 0.05},
        )
        async with open_swarm(config) as swarm:
            assert swarm.gateway_url
            await _wait_idle(swarm, workers)
            async with (
                connect(swarm.gateway_url, swarm.token) as c,
                c.events(["task.done", "task.dead"]) as st,
            ):
                sent: dict[str, float] = {}
                for i in range(tasks + 50):
                    t0 = time.time()
                    task = await c.submit({"prompt": f"prompt {i}"})
                    sent[task.id] = t0
                    while True:  # one at a time: a worker is idle for each submit
                        item = await st.__anext__()
                        if isinstance(item, Event) and item.data.get("task_id") == task.id:
                            break
                delays = []
                for n, (tid, t0) in enumerate(sent.items()):
                    done = await c.get(tid)
                    assert done.result and done.result.startswith("recv "), done
                    if n >= 50:  # the first 50 warm up
                        delays.append(float(done.result.split()[1]) - t0)
    report(f"submit → prompt read by an idle worker ({workers} workers)", delays, goal_ms=5)


async def _wait_idle(swarm: SwarmHandle, n: int) -> None:
    with swarm.events(["worker.state"]) as sub, trio.fail_after(60):
        while sum(1 for w in swarm.workers() if w.state == "idle") < n:
            await sub.receive()


# ---- fanout ------------------------------------------------------------------------------------------


async def _open_raw_websocket(url: str, token: str) -> tuple[trio.SocketStream, bytearray]:
    """A websocket handshake by hand (RFC 6455 4.1); returns the stream and bytes read past it."""
    host, port = url.split("//", 1)[1].rstrip("/").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n".encode()
    )
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        buf += await stream.receive_some(1 << 16)
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, bytearray(rest)


def _client_frame(opcode: int, payload: bytes) -> bytes:
    """A client frame, masked as RFC 6455 requires (with a zero key: the payload is unchanged)."""
    n = len(payload)
    length = bytes((0x80 | n,)) if n < 126 else bytes((0x80 | 126,)) + n.to_bytes(2, "big")
    return bytes((0x80 | opcode,)) + length + b"\0\0\0\0" + payload


async def fanout_client(url: str, token: str, clients: int, topics: list[str]) -> None:
    """(In a child process) `clients` connections subscribed with `batch`; print delays as JSON.

    Kept light so that what is measured is the gateway, not this process (it shares the machine's
    two cores with the swarm): a websocket read by hand (server frames are unmasked and whole), the
    publish times taken with a regex rather than by decoding every event. Delays (receipt − the
    event's publish time; one clock, one machine) are recorded between the `bench.paced` and
    `bench.flat` marks; `bench.stop` ends.
    """
    delays: list[float] = []
    dropped = received = frames = started = 0
    ready = trio.Event()
    params = {"topics": [*topics, "bench.*"], "batch": True}
    subscribe = json.dumps({"jsonrpc": "2.0", "method": "events.subscribe", "params": params, "id": 1})

    async def one() -> None:
        nonlocal dropped, started, received, frames
        recording = False
        stream, buf = await _open_raw_websocket(url, token)
        await stream.send_all(_client_frame(0x1, subscribe.encode()))
        subscribed = False
        while True:
            data = await stream.receive_some(1 << 16)
            now = time.time()
            if not data:
                return
            buf += data
            while len(buf) >= 2:
                n, at = buf[1] & 0x7F, 2
                if n == 126:
                    n, at = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, at = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < at + n:
                    break
                opcode = buf[0] & 0x0F
                payload = bytes(buf[at : at + n])
                del buf[: at + n]
                if opcode == 0x9:  # ping: pong
                    await stream.send_all(_client_frame(0xA, payload))
                    continue
                if opcode == 0x8:
                    return
                text = payload.decode()
                if not subscribed:
                    assert '"result"' in text, text
                    subscribed = True
                    started += 1
                    if started == clients:
                        ready.set()
                elif '"bench.' in text or '"events.overflow"' in text:
                    msg = json.loads(text)
                    if msg["method"] == "events.overflow":
                        dropped += msg["params"]["dropped"]
                        continue
                    for event in msg["params"]["events"]:
                        if event["topic"] == "bench.stop":
                            await stream.aclose()
                            return
                        if event["topic"].startswith("bench."):
                            recording = event["topic"] == "bench.paced"
                        elif recording:
                            received += 1
                            delays.append(now - event["ts"])
                elif recording:
                    stamps = TS.findall(text)
                    frames += 1
                    received += len(stamps)
                    delays.extend([now - float(ts) for ts in stamps])

    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one)
        await ready.wait()
        print("READY", flush=True)
    out = {"delays": delays, "dropped": dropped, "received": received, "frames": frames}
    print(json.dumps(out), flush=True)


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Load:
    """Submits tasks and counts completions (from the bus, as the swarm sees them)."""

    def __init__(self, swarm: SwarmHandle) -> None:
        self.swarm = swarm
        self.submitted = 0
        self.done = 0
        self._changed = trio.Event()

    async def count(self) -> None:
        with self.swarm.events(["task.done", "task.failed", "task.dead"]) as sub:
            async for _event in sub:
                self.done += 1
                self._changed.set()
                self._changed = trio.Event()

    async def run(self, seconds: float, rate: float | None, batch: int = 10) -> float:
        """Submit for `seconds` at `rate`/s (None: flat out, keeping ≤ 500 tasks queued); wait for
        every task to finish; return the completions per second during the window."""
        start = trio.current_time()
        done_at_start = self.done
        deadline = start + seconds
        n = 0
        while trio.current_time() < deadline:
            if rate is None:
                while self.submitted - self.done >= 500:
                    await self._changed.wait()
            await self.swarm.submit_many([{"prompt": f"load {n + i}"} for i in range(batch)])
            n += batch
            self.submitted += batch
            if rate:
                await trio.sleep_until(start + n / rate)
        finished = self.done - done_at_start
        with trio.fail_after(120):
            while self.done < self.submitted:
                await self._changed.wait()
        return finished / seconds


async def bench_fanout(
    clients: int, rate: float, seconds: float, procs: int, workers: int, topics: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as state:
        agent = Path(state) / "stamp_agent.py"
        agent.write_text(AGENT)
        profile = {"argv": [sys.executable, "-u", str(agent)], "dialect": "marker", "transport": "pipe"}
        config = base_config(
            state,
            gateway={"client_buffer": 10_000, "max_connections": clients + 16},
            workers={"profiles": {"stamp": profile}, "profile": "stamp"},
            scaling={"min_workers": workers, "max_workers": workers},
        )
        async with open_swarm(config) as swarm, trio.open_nursery() as counting:
            assert swarm.gateway_url
            await _wait_idle(swarm, workers)
            load = _Load(swarm)
            counting.start_soon(load.count)
            await load.run(1.0, rate)  # warm up
            base0 = os.times()
            base_paced = await load.run(seconds, rate)
            base1 = os.times()
            base_cpu = (base1.user + base1.system - base0.user - base0.system) / seconds
            base_flat = await load.run(seconds, None)
            per_event = swarm.bus.published_total / max(load.submitted, 1)
            print(
                f"no subscribers: {base_paced:.0f} tasks/s done at {rate:g}/s offered; "
                f"{base_flat:.0f} tasks/s flat out; ≈{per_event:.1f} events per task",
                flush=True,
            )

            per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
            children = []
            for count in per:
                proc = await trio.lowlevel.open_process(
                    [sys.executable, __file__, "_client", str(count), *topics],
                    stdout=subprocess.PIPE,
                    env={**os.environ, "SHOAL_URL": swarm.gateway_url, "SHOAL_TOKEN": swarm.token},
                )
                children.append(proc)
            outputs: list[bytes] = [b""] * len(children)
            all_ready = trio.Event()

            async def read_all(i: int, proc: trio.Process) -> None:
                assert proc.stdout is not None
                async for chunk in proc.stdout:
                    outputs[i] += chunk
                    if sum(o.count(b"READY") for o in outputs) == len(children):
                        all_ready.set()

            async with trio.open_nursery() as nursery:
                for i, proc in enumerate(children):
                    nursery.start_soon(read_all, i, proc)
                with trio.fail_after(60):
                    await all_ready.wait()
                cpu0 = os.times()
                clients_cpu0 = sum(_cpu_s(proc.pid) for proc in children)
                published0 = swarm.bus.published_total
                swarm.bus.publish("bench.paced", {})
                paced = await load.run(seconds, rate)
                cpu1 = os.times()
                clients_cpu = (sum(_cpu_s(proc.pid) for proc in children) - clients_cpu0) / seconds
                published = swarm.bus.published_total - published0
                swarm.bus.publish("bench.flat", {})
                flat = await load.run(seconds, None)
                swarm.bus.publish("bench.stop", {})

                async def stop_until_all_exit() -> None:
                    # a client whose buffer overflowed may have lost the first stop: repeat it
                    while any(proc.returncode is None for proc in children):
                        swarm.bus.publish("bench.stop", {})
                        await trio.sleep(1)

                nursery.start_soon(stop_until_all_exit)
            for proc in children:
                await proc.wait()
            counting.cancel_scope.cancel()
    delays: list[float] = []
    dropped = received = frames = 0
    for out in outputs:
        result = json.loads(out.decode().splitlines()[-1])
        delays += result["delays"]
        dropped += result["dropped"]
        received += result["received"]
        frames += result["frames"]
    shoal_cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / seconds
    print(f"{clients} subscribers to {topics} (batch), in {procs} client processes, {workers} workers:")
    print(
        f"  throughput at {rate:g}/s offered: {paced:.0f} tasks/s done vs {base_paced:.0f} without "
        f"({(paced - base_paced) / base_paced * 100:+.1f} %; goal within 10 %)"
    )
    print(
        f"  throughput flat out: {flat:.0f} tasks/s done vs {base_flat:.0f} without "
        f"({(flat - base_flat) / base_flat * 100:+.1f} %)"
    )
    print(
        f"  paced window: {published} events published, {received} delivered to clients "
        f"({received / seconds:.0f}/s) in {frames} frames; CPU: Shoal's process {shoal_cpu * 100:.0f} % "
        f"of a core ({base_cpu * 100:.0f} % without subscribers), the client processes "
        f"{clients_cpu * 100:.0f} %"
    )
    report("  event delivery delay (publish → client)", delays, goal_ms=20)
    if dropped:
        print(f"  events dropped for slow clients: {dropped}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "which", nargs="?", default="all", choices=["all", "rtt", "dispatch", "fanout", "_client"]
    )
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=1_000)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--procs", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--fanout-workers", type=int, default=8)
    parser.add_argument("--topics", nargs="+", default=["*"])
    args = parser.parse_args()
    if args.which == "_client":
        count, *topics = args.args
        trio.run(fanout_client, os.environ["SHOAL_URL"], os.environ["SHOAL_TOKEN"], int(count), topics)
        return
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    if args.which in ("all", "rtt"):
        trio.run(bench_rtt, args.calls)
    if args.which in ("all", "dispatch"):
        trio.run(bench_dispatch, args.tasks, args.workers)
    if args.which in ("all", "fanout"):
        trio.run(
            bench_fanout, args.clients, args.rate, args.seconds, args.procs, args.fanout_workers, args.topics
        )


if __name__ == "__main__":
    main()
