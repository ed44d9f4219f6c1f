"""Real, throwaway PostgreSQL and Redis servers for tests, started on free ports in temporary directories.

Use the fixtures by loading this module as a plugin at the top of a test module:

    pytest_plugins = ["tests.servers"]

(`from tests.servers import postgres_url, redis_url` works too, but ruff then needs `noqa: F401, F811`.)

- `postgres_url`: a fresh, empty database (postgresql+psycopg://...) on a PostgreSQL server shared by
  the whole session.
- `redis_url`: database 0 of a Redis server shared by the whole session, flushed before each test.
- `own_postgres`, `own_redis`: a started server for this test alone, which it may stop and start.
The shared servers start on first use and stop when the session ends.

Tests skip, saying why, only when the server binaries are not installed (`make system-deps` installs
them). When the tests run as root, PostgreSQL (which refuses to run as root) runs as the `postgres`
user if there is one, else as `nobody`.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Self, TypeVar

import psycopg
import pytest
import redis

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def postgres_bindir() -> Path | None:
    """Directory holding initdb and postgres: Debian's versioned layout first (newest), then PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key, reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parent.parent.name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _unprivileged_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as, or None to run it as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' account exists")


class PostgresServer:
    """A PostgreSQL cluster in a temp dir, trusting local connections, listening on 127.0.0.1 only."""

    user = "mendbot"

    def __init__(self) -> None:
        bindir = postgres_bindir()
        if bindir is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, postgres) are not installed")
        self.bindir = bindir
        self.account = _unprivileged_account()
        self.root = Path(tempfile.mkdtemp(prefix="mendbot-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        if self.account is not None:
            os.chown(self.root, self.account.pw_uid, self.account.pw_gid)
        self._run_as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", self.user,
                            "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])

    def _owner_kwargs(self) -> dict[str, object]:
        if self.account is None:
            return {}
        return {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": [],
                "env": {**os.environ, "HOME": str(self.root), "USER": self.account.pw_name}}

    def _run_as_owner(self, argv: list[str]) -> None:
        result = subprocess.run(argv, capture_output=True, cwd=self.root, **self._owner_kwargs())  # type: ignore[call-overload]
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {result.stderr.decode(errors='replace')}")

    def start(self) -> None:
        log = open(self.root / "postgres.log", "ab")  # noqa: SIM115 - the child owns it for its lifetime
        # Durability settings are off: these clusters are thrown away.
        argv = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.root}",
                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                        **self._owner_kwargs())  # type: ignore[call-overload]
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                psycopg.connect(self._dsn("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # "fast" shutdown: disconnect clients, then exit
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def _dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={self.user} dbname={database}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self._dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class RedisServer:
    """A redis-server without persistence in a temp dir, listening on 127.0.0.1 and a unix socket."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed")
        self.binary = binary
        self.root = Path(tempfile.mkdtemp(prefix="mendbot-redis-"))
        self.socket_path = self.root / "redis.sock"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--unixsocket", str(self.socket_path), "--unixsocketperm", "700",
                "--dir", str(self.root), "--save", "", "--appendonly", "no",
                "--logfile", str(self.root / "redis.log")]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        while True:
            try:
                client.ping()
                client.close()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.root / "redis.log"
                    reason = log.read_text(errors="replace") if log.exists() else ""
                    raise RuntimeError(f"redis-server did not start:\n{reason}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


# One server of each kind per test process. A session-scoped fixture would not do: every module that
# imports a fixture gets its own copy of it, which would start one server per module.
_shared: dict[str, PostgresServer | RedisServer] = {}
Server = TypeVar("Server", PostgresServer, RedisServer)


def _shared_server(kind: type[Server], session: pytest.Session) -> Server:
    server = _shared.get(kind.__name__)
    if server is None:
        try:
            server = kind()
        except FileNotFoundError as missing:
            pytest.skip(str(missing))
        server.start()
        _shared[kind.__name__] = server
        atexit.register(server.close)  # backstop for an interrupted session
        session.addfinalizer(lambda: _shared.pop(kind.__name__).close())
    assert isinstance(server, kind)
    return server


@pytest.fixture
def postgres_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a fresh, empty database on the shared PostgreSQL server."""
    return _shared_server(PostgresServer, request.session).create_database()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """URL of database 0 on the shared Redis server, emptied before the test."""
    server = _shared_server(RedisServer, request.session)
    client = redis.Redis.from_url(server.url)
    client.flushdb()
    client.close()
    return server.url


def _own_server(kind: type[Server]) -> Iterator[Server]:
    try:
        server = kind()
    except FileNotFoundError as missing:
        pytest.skip(str(missing))
    with server:
        yield server


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A running PostgreSQL server for this test alone."""
    yield from _own_server(PostgresServer)


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A running Redis server for this test alone."""
    yield from _own_server(RedisServer)
