"""Agent processes: spawn in a pseudo-terminal or on pipes, read, write, resize, stop, reap.

Spawning runs `subprocess.Popen` directly on the trio thread. With no `preexec_fn` CPython starts the
child with vfork + exec and closes inherited descriptors with close_range, so the caller blocks only
until the child has exec'd (≈0.1 ms measured, independent of the parent's size). Running Popen in a
worker thread instead stalls the loop *more* (GIL hand-offs, ≥5 ms with the default switch interval),
and ptyprocess blocks ≈100 ms per spawn; see docs/workers.md for the measurements.

A PTY child needs a controlling terminal (job control, SIGWINCH on resize, ^C, /dev/tty for hooks).
Setting one up in the child needs setsid() + ioctl(TIOCSCTTY) between fork and exec; doing that in a
`preexec_fn` forces a real fork with the GIL held (≈4 ms per spawn with a 200 MB parent). Instead the
child execs util-linux `setsid --ctty <command>`, which does both and execs the command in the same
process (same pid). Without util-linux we fall back to the `preexec_fn`.

The process is reaped through a pidfd (readable when the child exits; no thread, no SIGCHLD). Before
reaping, the rest of its process group is killed, so an agent never leaves helpers behind. Reading a
PTY master after the child exited raises EIO on Linux: that is end of file.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import os
import shutil
import signal
import struct
import subprocess
import termios
import threading
from collections.abc import Mapping, Sequence
from typing import Literal

import attrs
import trio

from ..protocols.errors import ShoalError, ValidationError

Transport = Literal["pty", "pipe"]

READ_SIZE = 65536
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class SpawnError(ShoalError):
    """The agent's command cannot be started (missing, not executable, bad cwd)."""

    def __init__(self, command: str, err: int, detail: str | None = None) -> None:
        self.command = command
        self.errno = err
        self.detail = detail or os.strerror(err)
        name = errno.errorcode.get(err, str(err))
        super().__init__(f"cannot start {command!r}: {self.detail} ({name})")


@attrs.frozen
class ExitStatus:
    """How a process ended: exactly one of `exit_code` and `signal` is set."""

    exit_code: int | None
    signal: int | None

    @classmethod
    def from_returncode(cls, returncode: int) -> ExitStatus:
        if returncode < 0:
            return cls(None, -returncode)
        return cls(returncode, None)

    def describe(self) -> str:
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"killed by {name}"
        return f"exit code {self.exit_code}"


@functools.cache
def _setsid_path() -> str | None:
    """util-linux setsid with --ctty, or None (then a slower preexec_fn is used)."""
    path = shutil.which("setsid")
    if path is None:
        return None
    try:
        out = subprocess.run([path, "--help"], capture_output=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return path if b"--ctty" in out else None


def _become_ctty_session_leader() -> None:  # pragma: no cover - runs in the child
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def resolve_command(command: str, env: Mapping[str, str], cwd: str | None) -> str:
    """The absolute path `command` runs, checked executable; SpawnError naming it otherwise.

    Done before spawning (in a thread: it stats the PATH) so a missing command fails the spawn itself
    rather than the exec helper with an exit status.
    """
    if not command:
        raise SpawnError(command, errno.ENOENT, "empty command")
    if cwd is not None and not os.path.isdir(cwd):
        raise SpawnError(command, errno.ENOENT, f"working directory {cwd!r} does not exist")
    if "/" in command:
        path = command if os.path.isabs(command) else os.path.join(cwd or os.getcwd(), command)
        if not os.path.exists(path):
            raise SpawnError(command, errno.ENOENT)
        if os.path.isdir(path) or not os.access(path, os.X_OK):
            raise SpawnError(command, errno.EACCES, "not an executable file")
        return os.path.abspath(path)
    search = env.get("PATH", os.defpath)
    found = shutil.which(command, path=search)
    if found is None:
        for entry in search.split(os.pathsep):
            candidate = os.path.join(entry or ".", command)
            if os.path.exists(candidate):
                raise SpawnError(command, errno.EACCES, f"{candidate} is not an executable file")
        raise SpawnError(command, errno.ENOENT, "command not found on PATH")
    return os.path.abspath(found) if not os.path.isabs(found) else found


def _winsize(rows: int, cols: int) -> bytes:
    for name, value in (("rows", rows), ("cols", cols)):
        if not isinstance(value, int) or not 1 <= value <= 0xFFFF:
            raise ValidationError(name, "must be an integer between 1 and 65535", value)
    return struct.pack("HHHH", rows, cols, 0, 0)


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


class AgentProcess:
    """One running agent process and its descriptors. Created by `spawn`.

    `read()` returns output (b"" at end of file), `read_stderr()` the separate stderr pipe (pipe
    transport only), `write()` serialises writers, `wait()` reaps, `stop()` runs the stop ladder,
    `aclose()` kills, reaps and closes every descriptor (idempotent, bounded, safe when cancelled).
    """

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        argv: list[str],
        transport: Transport,
        output: trio.lowlevel.FdStream,
        stdin: trio.lowlevel.FdStream | None,
        stderr: trio.lowlevel.FdStream | None,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.argv = argv
        self.transport: Transport = transport
        self._output = output
        self._stdin = stdin  # pipe transport; a PTY writes to the master (`output`)
        self._stderr = stderr
        self._write_lock = trio.Lock()
        self._wait_lock = trio.Lock()
        self._status: ExitStatus | None = None
        self._pidfd: int | None = None
        try:
            self._pidfd = os.pidfd_open(self.pid)
        except (AttributeError, OSError):  # pragma: no cover - kernels before 5.3
            self._pidfd = None
        self._closed = False
        self._cpu_sample: tuple[float, int] | None = None  # (monotonic, ticks)

    # ---- status -------------------------------------------------------------------------------

    @property
    def exit_status(self) -> ExitStatus | None:
        """None while running (or exited but not yet reaped)."""
        return self._status

    @property
    def master_fd(self) -> int | None:
        return self._output.fileno() if self.transport == "pty" and not self._closed else None

    # ---- I/O ---------------------------------------------------------------------------------

    async def read(self, max_bytes: int = READ_SIZE) -> bytes:
        """Next chunk of output; b"" at end of file (EIO on a PTY master, or closed by us)."""
        return await self._read(self._output, max_bytes)

    async def read_stderr(self, max_bytes: int = READ_SIZE) -> bytes:
        if self._stderr is None:
            return b""
        return await self._read(self._stderr, max_bytes)

    @staticmethod
    async def _read(stream: trio.lowlevel.FdStream, max_bytes: int) -> bytes:
        try:
            return await stream.receive_some(max_bytes)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return b""  # EIO after the child exited: end of file

    async def write(self, data: bytes) -> bool:
        """Write all of `data` (waits while the child does not read). False if the input is gone."""
        stream = self._stdin if self.transport == "pipe" else self._output
        if stream is None or not data:
            return stream is not None
        async with self._write_lock:
            try:
                await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return True

    def close_input(self) -> None:
        """End of input for a pipe child (its polite quit); no-op on a PTY."""
        if self._stdin is not None:
            self._stdin.close()

    def resize(self, rows: int, cols: int) -> None:
        """Set the PTY window size (TIOCSWINSZ); the kernel sends SIGWINCH to the foreground group."""
        packed = _winsize(rows, cols)
        fd = self.master_fd
        if fd is None:
            raise ValidationError("transport", "only a PTY worker has a window size", self.transport)
        fcntl.ioctl(fd, termios.TIOCSWINSZ, packed)

    # ---- signals and reaping ------------------------------------------------------------------

    def signal_group(self, sig: int) -> bool:
        """Signal the child's process group (it leads its own session). False if it already exited.

        Only while the child is unreaped: its pid (= the group id) cannot be reused before that.
        """
        if self._status is not None:
            return False
        try:
            os.killpg(self.pid, sig)
            return True
        except (ProcessLookupError, PermissionError):
            # No such group yet: the exec helper has not called setsid() (a Stop right after the
            # spawn). The child itself is alive and unreaped, so signal it directly.
            pass
        try:
            os.kill(self.pid, sig)
        except OSError:
            return False
        return True

    async def wait(self) -> ExitStatus:
        """Wait for the child to exit and reap it (no thread with a pidfd). Safe from many tasks."""
        status = self._status
        if status is not None:
            return status
        async with self._wait_lock:
            status = self._status
            if status is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:  # pragma: no cover - no pidfd: a thread waits without reaping (WNOWAIT)
                    await trio.to_thread.run_sync(
                        functools.partial(os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT),
                        abandon_on_cancel=True,
                    )
                status = self._reap()
        return status

    def _reap(self) -> ExitStatus:
        # The leader is a zombie: its group id is still ours. Kill helpers it left behind, then reap.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        returncode = self._popen.poll()
        if returncode is None:  # pragma: no cover - pidfd said exited; waitpid must succeed
            returncode = self._popen.wait()
        self._status = status = ExitStatus.from_returncode(returncode)
        self._close_pidfd()
        return status

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            fd, self._pidfd = self._pidfd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)

    async def wait_for(self, timeout: float) -> ExitStatus | None:
        """Wait at most `timeout` seconds; None if still running."""
        with trio.move_on_after(timeout):
            return await self.wait()
        return None

    async def stop(self, quit_bytes: bytes | None, rung_timeout: float) -> tuple[ExitStatus | None, str]:
        """The stop ladder: polite quit, SIGTERM to the group, SIGKILL; each rung bounded.

        Returns the exit status (None only if even SIGKILL did not end it in time) and the rung that
        ended it: "quit", "sigterm", "sigkill" or "exited" (it had already gone).
        """
        if self._status is not None:
            return self._status, "exited"
        polite = False
        if quit_bytes:
            with trio.move_on_after(rung_timeout):
                polite = await self.write(quit_bytes)
        if self.transport == "pipe":
            self.close_input()
            polite = True
        if polite:
            status = await self.wait_for(rung_timeout)
            if status is not None:
                return status, "quit"
        if self.signal_group(signal.SIGTERM):
            status = await self.wait_for(rung_timeout)
            if status is not None:
                return status, "sigterm"
        self.signal_group(signal.SIGKILL)
        status = await self.wait_for(max(rung_timeout, 1.0))
        return status, "sigkill"

    # ---- resource use -------------------------------------------------------------------------

    def sample(self, now: float) -> tuple[float | None, int | None]:
        """(CPU % since the previous sample, resident bytes) from /proc/<pid>/stat (never blocks)."""
        if self._status is not None:
            return None, None
        try:  # os.open/os.read: ~5 µs, a sixth of a buffered open(); listings sample many workers
            fd = os.open(f"/proc/{self.pid}/stat", os.O_RDONLY)
            try:
                raw = os.read(fd, 4096)
            finally:
                os.close(fd)
            fields = raw.rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return None, None
        ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
        rss = int(fields[21]) * _PAGE  # field 24
        cpu: float | None = None
        if self._cpu_sample is not None:
            then, old = self._cpu_sample
            if now > then:
                cpu = round(100.0 * (ticks - old) / _CLK_TCK / (now - then), 1)
        self._cpu_sample = (now, ticks)
        return cpu, rss

    # ---- teardown -----------------------------------------------------------------------------

    async def aclose(self, grace: float = 0.0) -> ExitStatus | None:
        """Kill (SIGTERM, then SIGKILL after `grace`), reap, and close every descriptor. Shielded.

        Never hangs: waits at most `grace` + 5 s; a child that survives SIGKILL that long (stuck in
        the kernel) is left to a daemon thread's blocking waitpid so it still gets reaped.
        """
        with trio.CancelScope(shield=True):
            if self._status is None:
                if grace > 0 and self.signal_group(signal.SIGTERM):
                    await self.wait_for(grace)
                self.signal_group(signal.SIGKILL)
                if await self.wait_for(5.0) is None:  # pragma: no cover - unkillable (D state)
                    self._close_pidfd()
                    threading.Thread(target=self._popen.wait, daemon=True).start()
            self._close_streams()
        return self._status

    def _close_streams(self) -> None:
        if self._closed:
            return
        self._closed = True
        for stream in (self._output, self._stdin, self._stderr):
            if stream is not None:
                stream.close()  # FdStream.close is idempotent and wakes blocked readers

    def __repr__(self) -> str:
        state = "running" if self._status is None else self._status.describe()
        return f"<AgentProcess pid={self.pid} {self.transport} {self.argv[0]!r} {state}>"


async def spawn(
    argv: Sequence[str],
    *,
    transport: Transport,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    rows: int = 40,
    cols: int = 120,
    term: str = "xterm-256color",
) -> AgentProcess:
    """Start `argv` (never through a shell) on a PTY or on pipes. Raises `SpawnError`.

    `env` is merged over the parent's environment; a PTY child also gets TERM (unless `env` sets it)
    and the window size. The child leads a new session (and, on a PTY, has it as controlling
    terminal), so the stop ladder can signal its whole process group.
    """
    argv = list(argv)
    if not argv:
        raise SpawnError("", errno.ENOENT, "empty argv")
    if transport not in ("pty", "pipe"):
        raise ValidationError("transport", "must be 'pty' or 'pipe'", transport)
    winsize = _winsize(rows, cols)
    child_env = dict(os.environ)
    if transport == "pty":
        child_env["TERM"] = term
    if env:
        child_env.update(env)
    # Stats of PATH entries and of cwd go to a thread; the spawn itself stays on the loop (see top).
    path, helper = await trio.to_thread.run_sync(_prepare, argv[0], child_env, cwd, transport)
    if transport == "pty":
        return _spawn_pty(argv, path, child_env, cwd, winsize, helper)
    return _spawn_pipe(argv, path, child_env, cwd)


def _prepare(command: str, env: Mapping[str, str], cwd: str | None, transport: str) -> tuple[str, str | None]:
    return resolve_command(command, env, cwd), _setsid_path() if transport == "pty" else None


def _popen_error(command: str, exc: OSError) -> SpawnError:
    return SpawnError(command, exc.errno or errno.EIO, exc.strerror)


def _spawn_pty(
    argv: list[str], path: str, env: dict[str, str], cwd: str | None, winsize: bytes, helper: str | None
) -> AgentProcess:
    master, slave = os.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, winsize)
        try:
            if helper is not None:
                popen = subprocess.Popen(
                    [helper, "--ctty", path, *argv[1:]],
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=cwd,
                    env=env,
                    close_fds=True,
                )
            else:  # pragma: no cover - no util-linux
                popen = subprocess.Popen(
                    [path, *argv[1:]],
                    stdin=slave,
                    stdout=slave,
                    stderr=slave,
                    cwd=cwd,
                    env=env,
                    close_fds=True,
                    preexec_fn=_become_ctty_session_leader,
                )
        except OSError as exc:
            raise _popen_error(argv[0], exc) from None
    except BaseException:
        _close_quietly(master)
        raise
    finally:
        _close_quietly(slave)  # the child holds the only copy: its exit gives EIO on the master
    return AgentProcess(popen, argv, "pty", trio.lowlevel.FdStream(master), None, None)


def _spawn_pipe(argv: list[str], path: str, env: dict[str, str], cwd: str | None) -> AgentProcess:
    fds: list[int] = []
    try:
        in_r, in_w = os.pipe()
        fds += [in_r, in_w]
        out_r, out_w = os.pipe()
        fds += [out_r, out_w]
        err_r, err_w = os.pipe()
        fds += [err_r, err_w]
        try:
            popen = subprocess.Popen(
                [path, *argv[1:]],
                stdin=in_r,
                stdout=out_w,
                stderr=err_w,
                cwd=cwd,
                env=env,
                close_fds=True,
                start_new_session=True,
            )
        except OSError as exc:
            raise _popen_error(argv[0], exc) from None
    except BaseException:
        for fd in fds:
            _close_quietly(fd)
        raise
    for fd in (in_r, out_w, err_w):
        _close_quietly(fd)
    return AgentProcess(
        popen,
        argv,
        "pipe",
        trio.lowlevel.FdStream(out_r),
        trio.lowlevel.FdStream(in_w),
        trio.lowlevel.FdStream(err_r),
    )
