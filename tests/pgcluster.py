"""A throwaway PostgreSQL cluster for tests and benchmarks, made with initdb and run with pg_ctl.

Plain synchronous code with no pytest dependency, so benchmark scripts use it too. Real PostgreSQL,
real password authentication (scram-sha-256 on 127.0.0.1), a free port, everything in one temp dir
that close() removes. PostgreSQL refuses to run as root, so under root the cluster runs as the
`postgres` system user (Debian's package creates it) through `runuser`.

    cluster = PgCluster()
    cluster.start()
    url = cluster.create_database()   # a fresh empty database for one test
    ...
    cluster.close()                   # also run at exit: no postgres process is ever left behind
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

import psutil
import psycopg
from psycopg import sql

__all__ = ["PgCluster", "PgClusterError", "find_pg_bin"]

USER = "shoal"
PASSWORD = "shoal-test-password"  # a throwaway cluster on 127.0.0.1 only
RUN_AS_WHEN_ROOT = "postgres"
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_STOP_MODES = ("smart", "fast", "immediate")


class PgClusterError(RuntimeError):
    """The cluster could not be made, started or stopped; the message ends with PostgreSQL's log tail."""


def find_pg_bin() -> Path:
    """PostgreSQL's server binaries: $SHOAL_PG_BIN (scripts/test sets it), else the newest
    /usr/lib/postgresql/<version>/bin (Debian's layout), else the directory of `initdb` on PATH."""
    configured = os.environ.get("SHOAL_PG_BIN")
    if configured:
        path = Path(configured)
        if not (path / "initdb").is_file():
            raise PgClusterError(f"SHOAL_PG_BIN={configured} has no initdb")
        return path
    found = sorted(
        (p.parent for p in Path("/usr/lib/postgresql").glob("*/bin/initdb") if os.access(p, os.X_OK)),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else -1,
    )
    if found:
        return found[-1]
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PgClusterError(
        "PostgreSQL's server binaries are missing (no /usr/lib/postgresql/*/bin/initdb): "
        "scripts/test and .ci/run install Debian's `postgresql` package, or set SHOAL_PG_BIN"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgCluster:
    """One throwaway cluster: start(), then url()/create_database(); stop()/start()/restart()/kill()
    for fault tests; close() stops it and removes its directory (idempotent, also run at exit)."""

    def __init__(
        self,
        bin_dir: str | os.PathLike[str] | None = None,
        *,
        max_connections: int = 300,
        timeout: float = 60.0,
    ) -> None:
        self.bin_dir: Path = Path(bin_dir) if bin_dir is not None else find_pg_bin()
        self.user = USER
        self.password = PASSWORD
        self.max_connections = max_connections
        self.timeout = timeout
        self.port: int = 0  # chosen at the first start(), kept across restarts
        self.base_dir: Path | None = None  # the temp dir: data/, sock/, postgres.log
        self._running = False
        self._closed = False
        self._as_root = os.geteuid() == 0

    # -- paths -----------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        return self._base / "data"

    @property
    def log_path(self) -> Path:
        return self._base / "postgres.log"

    @property
    def running(self) -> bool:
        return self._running

    @property
    def _base(self) -> Path:
        if self.base_dir is None:
            raise PgClusterError("the cluster has not been started")
        return self.base_dir

    # -- URLs and databases ----------------------------------------------------------------------

    def url(self, dbname: str = "shoal", password: str | None = None) -> str:
        """postgresql://shoal:<password>@127.0.0.1:<port>/<dbname>; password defaults to the real one."""
        pw = self.password if password is None else password
        return f"postgresql://{self.user}:{quote(pw, safe='')}@127.0.0.1:{self.port}/{quote(dbname)}"

    def create_database(self, name: str | None = None) -> str:
        """Create a fresh empty database (a unique name unless given) and return its URL."""
        name = name or f"t_{uuid.uuid4().hex[:16]}"
        if not _DB_NAME.fullmatch(name):
            raise ValueError(f"database name {name!r}: lowercase letters, digits and _ only, ≤ 63")
        with psycopg.connect(
            self.url("postgres"), autocommit=True, connect_timeout=int(self.timeout)
        ) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Make the cluster on the first call (initdb in a fresh temp dir, a free port), then run it
        with pg_ctl, which waits until it accepts connections. Later calls reuse the same data."""
        if self._closed:
            raise PgClusterError("the cluster is closed")
        if self._running:
            raise PgClusterError(f"the cluster is already running on port {self.port}")
        first = self.base_dir is None
        if not first:
            self._start()
            return
        atexit.register(self.close)
        try:
            self._init()
            self._start(port_attempts=3)
            self.create_database("shoal")
        except BaseException:
            self.close()  # a cluster that never came up leaves nothing behind
            raise

    def _start(self, port_attempts: int = 1) -> None:
        attempts = port_attempts
        for attempt in range(attempts):
            try:
                self._pg_ctl("start", "-l", str(self.log_path))
                break
            except PgClusterError as e:
                # the free port was taken between choosing and binding it: choose another
                if attempt + 1 < attempts and "could not bind" in str(e):
                    self.port = _free_port()
                    self._write_port()
                    continue
                raise
        self._running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the postmaster (pg_ctl stop -m mode, waiting); the data stays for start()."""
        if mode not in _STOP_MODES:
            raise ValueError(f"stop mode {mode!r}: one of {', '.join(_STOP_MODES)}")
        if not self._running:
            return
        self._pg_ctl("stop", "-m", mode)
        self._running = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes, as a power loss would; start() recovers."""
        if not self._running:
            return
        self._kill_all()
        self._running = False
        # a dead postmaster that nobody reaped yet (a zombie: pg_ctl daemonizes it, so it is not our
        # child) still answers kill(pid, 0), and the next postmaster would take its stale lock files
        # for a live one's; we know it is dead
        for lock in [self.data_dir / "postmaster.pid", *(self._base / "sock").glob(".s.PGSQL.*.lock")]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def close(self) -> None:
        """Stop the cluster (killing it if a clean stop fails) and remove its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self.base_dir is None:
            return
        try:
            if self._running:
                try:
                    self.stop("fast")
                except PgClusterError:
                    self.kill()
            self._kill_all()  # anything left, e.g. a backend that outlived its postmaster
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------------

    def _init(self) -> None:
        # resolved: the processes are found by their working directory, which the kernel reports resolved
        base = Path(tempfile.mkdtemp(prefix="shoal-pg-")).resolve()
        self.base_dir = base
        (base / "sock").mkdir()
        pwfile = base / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            # postgres refuses to run as root: hand the directory to the postgres system user
            try:
                account = pwd.getpwnam(RUN_AS_WHEN_ROOT)
            except KeyError:
                raise PgClusterError(
                    f"running as root, and there is no `{RUN_AS_WHEN_ROOT}` user to run PostgreSQL as "
                    "(Debian's postgresql package creates it)"
                ) from None
            for path in (base, base / "sock", pwfile):
                os.chown(path, account.pw_uid, account.pw_gid)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D", str(self.data_dir),
                "-U", self.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E", "UTF8",
                "--no-locale",
                "--no-sync",  # a throwaway cluster: the OS flushes it eventually; fsync stays on at run time
            ],
            "initdb",
        )  # fmt: skip
        pwfile.unlink()
        # only password logins over TCP on 127.0.0.1 and the private socket: a wrong password fails
        (self.data_dir / "pg_hba.conf").write_text(
            "local all all scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n"
        )
        self.port = _free_port()
        self._write_port()

    def _write_port(self) -> None:
        """Settings in postgresql.auto.conf (read last, so they win), kept across restarts."""
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self._base / "sock"),
            "max_connections": str(self.max_connections),
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
        }
        text = "".join(f"{key} = '{value}'\n" for key, value in settings.items())
        auto = self.data_dir / "postgresql.auto.conf"
        auto.write_text(text)
        if self._as_root:
            account = pwd.getpwnam(RUN_AS_WHEN_ROOT)
            os.chown(auto, account.pw_uid, account.pw_gid)

    def _pg_ctl(self, action: str, *args: str) -> None:
        timeout = str(max(1, int(self.timeout)))
        self._run(
            [str(self.bin_dir / "pg_ctl"), action, "-D", str(self.data_dir), "-w", "-t", timeout, *args],
            f"pg_ctl {action}",
        )

    def _run(self, argv: list[str], what: str) -> None:
        if self._as_root:
            argv = ["runuser", "-u", RUN_AS_WHEN_ROOT, "--", *argv]
        # PG* variables of the caller (PGDATA, PGPORT, ...) must not redirect our cluster
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        try:
            done = subprocess.run(
                argv,
                cwd=self._base,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=self.timeout + 10,
            )
        except subprocess.TimeoutExpired as e:
            raise PgClusterError(f"{what} timed out after {e.timeout:.0f} s{self._log_tail()}") from None
        if done.returncode != 0:
            output = (done.stdout + done.stderr).strip()
            raise PgClusterError(f"{what} failed (exit {done.returncode}): {output}{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        if self.base_dir is None:
            return ""
        try:
            tail = self.log_path.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return "\nPostgreSQL log (last lines):\n" + "\n".join(tail) if tail else ""

    def _processes(self) -> list[psutil.Process]:
        """The cluster's processes: every process whose working directory is the data dir (the
        postmaster and each backend chdir there), so none is missed once the postmaster is gone."""
        if self.base_dir is None:
            return []
        data = str(self.data_dir)
        found = []
        for proc in psutil.process_iter(["cwd", "status"]):
            cwd = proc.info.get("cwd")
            if cwd == data and proc.info.get("status") != psutil.STATUS_ZOMBIE:
                found.append(proc)
        return found

    def _kill_all(self) -> None:
        """SIGKILL every process of the cluster and wait for each to exit. Repeated until none is
        left, so a backend the postmaster forked just before its own SIGKILL is caught too."""
        for _ in range(10):
            procs = self._processes()
            if not procs:
                return
            waiting = _exit_waiters([p.pid for p in procs])
            try:
                for proc in procs:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        proc.send_signal(signal.SIGKILL)
                _wait_exits(waiting, self.timeout)
            finally:
                for fd in waiting:
                    os.close(fd)
        raise PgClusterError(f"postgres processes keep appearing in {self.data_dir} after SIGKILL")


def _exit_waiters(pids: list[int]) -> list[int]:
    """A pidfd per live pid: it turns readable when the process exits (reaped or not; these are not
    our children), so we wait on the event instead of polling the process table."""
    fds = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds.append(os.pidfd_open(pid))
    return fds


def _wait_exits(fds: list[int], timeout: float) -> None:
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pending = set(fds)
    deadline = time.monotonic() + timeout
    while pending:
        left = deadline - time.monotonic()
        if left <= 0:
            raise PgClusterError(f"{len(pending)} postgres processes outlived SIGKILL for {timeout:.0f} s")
        for fd, _ in poller.poll(left * 1000):
            pending.discard(fd)
            poller.unregister(fd)
