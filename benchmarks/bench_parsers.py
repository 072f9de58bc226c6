#!/usr/bin/env python3
"""Dialect parser benchmarks: completion detection delay, output-flood throughput, bounded memory.

    python benchmarks/bench_parsers.py            # about half a minute
    python benchmarks/bench_parsers.py --quick    # a few seconds, smaller samples

Figures printed:

1. Throughput of `feed()` through the prompt and marker dialects (a task open, so output is also
   captured for its result) on the fake agent's `[[flood]]` output: syntax-highlighting-style ANSI,
   about 116 escape sequences per KB. Chunks of 4 KiB (what one read of a PTY returns) and 64 KiB.
   CPU time is the figure to compare (the machine may be shared); wall time is printed beside it.
   Goal: at least 50 MB/s.
2. Memory: what a dialect still holds after a long flood in one task (it must not grow with output).
3. Completion detection delay in-process: the time `feed()` takes for the chunk holding the agent's
   last bytes (reply + prompt box, result line, or marker) to return TaskDone. Goal: at most 1 ms.
4. The same through a real PTY with the fake agent: from the read that returned the agent's last
   bytes to TaskDone, plus the whole submit-to-TaskDone round trip for reference.
5. Fake agent start-up: spawn to Ready in a PTY, beside `python -c pass`.
6. The issue-16 rules on real Claude Code output: throughput of the prompt dialect on the raw PTY
   captures of CLI 2.1.332 (retry spinners, API error lines; tests/fixtures/claude-code/corpus/*.ansi)
   and of stream-json on the real headless captures (api_retry storms, synthetic error messages,
   results), a new task started whenever one ends; and the detection delay of an API failure
   (the chunk with `● API Error: 529` and the prompt box, or the error result) -> RateLimited.
   Goals as above: at least 50 MB/s, at most 1 ms.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import json
import os
import resource
import select
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
FAKE_AGENT = ROOT / "examples" / "agents" / "fake_agent.py"
CORPUS = ROOT / "tests" / "fixtures" / "claude-code" / "corpus"
sys.path.insert(0, str(ROOT))

from shoal.protocols.dialects import make_dialect  # noqa: E402
from shoal.protocols.dialects.base import Dialect, RateLimited, Ready, TaskDone, TaskFailed  # noqa: E402
from shoal.protocols.tasks import Assignment  # noqa: E402

TASK = Assignment(task_id="bench", attempt=1, prompt="benchmark task")
RULE = "\x1b[38;5;244m" + "─" * 119 + "\x1b[0m"
RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": "Done: benchmark task",
    "total_cost_usd": 0.001,
    "usage": {"input_tokens": 10, "output_tokens": 5},
}
RESULT_LINE = (json.dumps(RESULT) + "\n").encode()
ERASE5 = "\x1b[2K\x1b[1A" * 5 + "\x1b[2K\x1b[G"  # Ink erasing a six-line dynamic region


def load_fake() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fake_agent", FAKE_AGENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frame(spinner: str | None) -> str:
    lines = [f"\x1b[38;5;174m{spinner}\x1b[0m", ""] if spinner else []
    return "\r\n".join([*lines, RULE, "\x1b[1m>\x1b[0m\xa0", RULE, "  \x1b[2m? for shortcuts\x1b[0m"])


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def fmt_us(seconds: float) -> str:
    return f"{seconds * 1e6:8.1f} µs"


# ------------------------------------------------------------------------------------------------


def throughput(flood: bytes, total: int) -> None:
    density = flood.count(b"\x1b") * 1000 / len(flood)
    print(f"\n1. feed() throughput, {total / 1e6:.0f} MB of [[flood]] ({density:.0f} escapes/KB), task open")
    data = flood * (total // len(flood) + 1)
    data = data[:total]
    for name in ("prompt", "marker"):
        for size in (4096, 65536):
            dialect = make_dialect(name, {})
            dialect.start_task(TASK, 0.0)
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            cpu, wall = time.process_time(), time.perf_counter()
            for chunk in chunks:
                dialect.feed(chunk, 1.0)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rate, wall_rate = total / cpu / 1e6, total / wall / 1e6
            print(f"   {name:7s} {size // 1024:3d} KiB chunks: {rate:6.1f} MB/s CPU ({wall_rate:.1f} wall)")


def memory(flood: bytes, total: int) -> None:
    print(f"\n2. memory after {total / 1e6:.0f} MB in one task (prompt dialect)")
    dialect = make_dialect("prompt", {})
    dialect.start_task(TASK, 0.0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    fed = 0
    while fed < total:
        dialect.feed(flood, 1.0)
        fed += len(flood)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    task = dialect._task  # type: ignore[attr-defined]
    held = task.capture._size if task is not None else 0
    print(f"   capture held: {held / 1e6:.2f} M chars (bounded: 4 x max_result_chars at most)")
    print(f"   pending line: {len(dialect._pending)} chars, look-back: {len(dialect._lookback)} chars")  # type: ignore[attr-defined]
    print(f"   peak RSS grew by {(after - before) / 1024:.1f} MiB while feeding")
    start = time.perf_counter()
    signals = dialect.feed((ERASE5 + "\r\n\x1b[1m●\x1b[0m the end\r\n\r\n" + frame(None)).encode(), 2.0)
    took = time.perf_counter() - start
    assert any(isinstance(s, TaskDone) for s in signals), signals
    print(f"   TaskDone after the flood (result from the last 2 x max_result_chars): {took * 1e3:.1f} ms")


def detection(samples: int) -> None:
    print(
        f"\n3. completion detection delay in-process ({samples} samples each): feed(last chunk) -> TaskDone"
    )
    busy = "".join(f"{ERASE5}{frame(f'✻ Thinking… ({n}s · esc to interrupt)')}" for n in range(5)).encode()
    last_tui = f"{ERASE5}\r\n\x1b[1m●\x1b[0m Done: benchmark task\r\n\r\n{frame(None)}".encode()
    cases: dict[str, tuple[dict[str, object], bytes, bytes]] = {
        "prompt (reply + prompt box)": ({}, busy, last_tui),
        "marker (SHOAL_DONE line)": ({}, b"working\r\nDone: benchmark task\r\n", b"SHOAL_DONE\r\n"),
        "stream-json (result event)": ({}, b"", RESULT_LINE),
    }
    for label, (options, before, last) in cases.items():
        name = label.split()[0]
        times: list[float] = []
        cpu: list[float] = []
        for _ in range(samples):
            dialect: Dialect = make_dialect(name, options)
            dialect.tick(0.0)
            dialect.start_task(TASK, 0.0)
            if before:
                dialect.feed(before, 0.5)
            start, start_cpu = time.perf_counter(), time.process_time()
            signals = dialect.feed(last, 1.0)
            cpu.append(time.process_time() - start_cpu)
            times.append(time.perf_counter() - start)
            assert any(isinstance(s, TaskDone) for s in signals), (label, signals)
        print(
            f"   {label:28s} wall p50 {fmt_us(pct(times, 0.5))} p99 {fmt_us(pct(times, 0.99))};"
            f" CPU p99 {fmt_us(pct(cpu, 0.99))}"
        )
    tick = fmt_us(idle_tick_cost(samples))
    print(f"   idle: TaskDone comes idle_ms after the last byte by design; tick() itself costs {tick}")


def idle_tick_cost(samples: int) -> float:
    times = []
    for _ in range(samples):
        dialect = make_dialect("idle", {"idle_ms": 100})
        dialect.tick(0.0)
        dialect.start_task(TASK, 0.0)
        dialect.feed(b"an answer\r\n", 0.1)
        start = time.perf_counter()
        signals = dialect.tick(0.2)
        times.append(time.perf_counter() - start)
        assert any(isinstance(s, TaskDone) for s in signals)
    return pct(times, 0.5)


# ------------------------------------------------------------------------------------------------


class PtyAgent:
    """The fake agent in a PTY, read with select/os.read; the dialect fed with every chunk."""

    def __init__(self, args: list[str], dialect: str) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, str(FAKE_AGENT), *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)
        self.master = master
        self.dialect = make_dialect(dialect, {})

    def until(self, kind: type, timeout: float = 30.0) -> tuple[float, float]:
        """(time the last read returned, time the dialect returned `kind`)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            deadline = self.dialect.next_deadline()
            wait = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            ready, _, _ = select.select([self.master], [], [], wait)
            signals = []
            got = time.perf_counter()
            if ready:
                signals = self.dialect.feed(os.read(self.master, 65536), time.monotonic())
            signals += self.dialect.tick(time.monotonic())
            if any(isinstance(s, kind) for s in signals):
                return got, time.perf_counter()
        raise TimeoutError(kind)

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        os.close(self.master)


def end_to_end(tasks: int) -> None:
    print(f"\n4. through a real PTY with the fake agent, {tasks} tasks (prompt dialect)")
    agent = PtyAgent([], "prompt")
    try:
        agent.until(Ready)
        delays, rounds = [], []
        for n in range(tasks):
            task = Assignment(f"t{n}", 1, f"task number {n}")
            start = time.perf_counter()
            agent.dialect.start_task(task, time.monotonic())
            os.write(agent.master, agent.dialect.encode(task))
            got, done = agent.until(TaskDone)  # Ready comes in the same batch: the prompt is back
            delays.append(done - got)
            rounds.append(done - start)
        print(f"   last read -> TaskDone   p50 {fmt_us(pct(delays, 0.5))}  p99 {fmt_us(pct(delays, 0.99))}")
        p50, p99 = pct(rounds, 0.5) * 1e3, pct(rounds, 0.99) * 1e3
        print(
            f"   submit -> TaskDone      p50 {p50:8.2f} ms  p99 {p99:6.2f} ms (the agent's own work included)"
        )
    finally:
        agent.close()


def startup(spawns: int) -> None:
    print(f"\n5. fake agent start-up ({spawns} spawns): spawn -> Ready in a PTY")
    readies = []
    for _ in range(spawns):
        agent = PtyAgent([], "prompt")
        try:
            _, ready = agent.until(Ready)
            readies.append(ready - agent.started)
        finally:
            agent.close()
    baseline = []
    for _ in range(spawns):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        baseline.append(time.perf_counter() - start)
    print(f"   fake agent to Ready   median {statistics.median(readies) * 1e3:6.1f} ms")
    print(f"   python -c pass        median {statistics.median(baseline) * 1e3:6.1f} ms (interpreter floor)")


def real_output(total: int, samples: int) -> None:
    print(f"\n6. issue-16 rules on real Claude Code 2.1.332 output ({total / 1e6:.0f} MB each), task open")
    ends = (TaskDone, TaskFailed, RateLimited)
    for name, pattern in (("prompt", "real-tui-*.ansi"), ("stream-json", "real-headless-*.jsonl")):
        files = sorted(CORPUS.glob(pattern))
        sample = b"".join(f.read_bytes() for f in files)
        density = sample.count(b"\x1b") * 1000 / len(sample)
        data = (sample * (total // len(sample) + 1))[:total]
        for size in (4096, 65536):
            dialect = make_dialect(name, {}, wall_clock=lambda: 1_780_000_000.0)
            dialect.tick(0.0)
            dialect.start_task(TASK, 0.0)
            chunks = [data[i : i + size] for i in range(0, len(data), size)]
            outcomes = 0
            cpu, wall = time.process_time(), time.perf_counter()
            for chunk in chunks:
                for signal in dialect.feed(chunk, 1.0):
                    if isinstance(signal, ends):
                        outcomes += 1
                        dialect.start_task(TASK, 1.0)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            rate, wall_rate = total / cpu / 1e6, total / wall / 1e6
            print(
                f"   {name:11s} {size // 1024:3d} KiB chunks: {rate:6.1f} MB/s CPU ({wall_rate:.1f} wall);"
                f" {len(files)} captures, {density:.0f} escapes/KB, {outcomes} outcomes"
            )
    busy = "".join(
        f"{ERASE5}{frame(f'✻ 529 Overloaded · retrying in {n}s · attempt {n}/10')}" for n in range(5)
    )
    error = "\x1b[1m●\x1b[0m API Error: 529 Overloaded. This is a server-side issue, usually temporary"
    last_tui = f"{ERASE5}\r\n{error}\r\n\r\n{frame(None)}".encode()
    retry = (
        b'{"type":"system","subtype":"api_retry","attempt":3,"max_retries":10,"retry_delay_ms":2188,'
        b'"error_status":529,"error":"overloaded"}\n'
    )
    failure = {**RESULT, "is_error": True, "api_error_status": 529, "terminal_reason": "api_error"}
    failure["result"] = "API Error: 529 Overloaded."
    cases = {
        "prompt (● API Error: 529)": (busy.encode(), last_tui),
        "stream-json (529 result)": (retry * 3, (json.dumps(failure) + "\n").encode()),
    }
    print(f"   detection of an API failure ({samples} samples each): feed(last chunk) -> RateLimited")
    for label, (before, last) in cases.items():
        times: list[float] = []
        cpu_times: list[float] = []
        for _ in range(samples):
            dialect = make_dialect(label.split()[0], {}, wall_clock=lambda: 1_780_000_000.0)
            dialect.tick(0.0)
            dialect.start_task(TASK, 0.0)
            dialect.feed(before, 0.5)
            start, start_cpu = time.perf_counter(), time.process_time()
            signals = dialect.feed(last, 1.0)
            cpu_times.append(time.process_time() - start_cpu)
            times.append(time.perf_counter() - start)
            assert any(isinstance(s, RateLimited) for s in signals), (label, signals)
        print(
            f"   {label:28s} wall p50 {fmt_us(pct(times, 0.5))} p99 {fmt_us(pct(times, 0.99))};"
            f" CPU p99 {fmt_us(pct(cpu_times, 0.99))}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smaller samples, a few seconds")
    args = parser.parse_args()
    flood = load_fake().flood_block(7)
    load = os.getloadavg()[0]
    print(
        f"Python {sys.version.split()[0]} on {os.uname().machine}, {os.cpu_count()} CPUs, load avg {load:.2f}"
    )
    throughput(flood, 20_000_000 if args.quick else 100_000_000)
    memory(flood, 20_000_000 if args.quick else 200_000_000)
    detection(200 if args.quick else 2000)
    end_to_end(10 if args.quick else 100)
    startup(3 if args.quick else 15)
    real_output(20_000_000 if args.quick else 100_000_000, 200 if args.quick else 2000)


if __name__ == "__main__":
    main()
