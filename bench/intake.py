"""Time signed, durable webhook intake (mendbot serve; uvicorn app:app + mendbot worker) beside a bare 202."""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from fastapi import FastAPI, Request, Response

from tests.app_support import APP_ID, INSTALLATION, SECRET, fixture_payload, free_port, rsa_keys, signed, wait_for

REPO = Path(__file__).resolve().parent.parent
COMMAND = "python -m bench.intake"
BARE = "bare FastAPI 202 (baseline)"
SERVE = "mendbot serve"
SPLIT = "uvicorn app:app + mendbot worker"
SETUPS = {"bare": BARE, "serve": SERVE, "split": SPLIT}
#: Distinct signed bodies the load cycles through; every request still carries a fresh delivery id.
BODIES = 256


def bare_app() -> FastAPI:
    """The baseline: FastAPI reading the body and answering 202, with no signature check and no disk."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/webhook")
    async def webhook(request: Request) -> Response:
        await request.body()
        return Response(status_code=202)

    return app


# The baseline runs under the same uvicorn call and options as `mendbot serve` (bot/cli.py).
_BARE_SERVER = """
import sys, uvicorn
from bench.intake import bare_app
uvicorn.run(bare_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="info", proxy_headers=True, access_log=False)
"""


def bodies(count: int) -> list[bytes]:
    """workflow_run.completed deliveries of green runs derived from GitHub's example, each a different run.

    Most runs succeed, so this is what most deliveries look like: verified and stored, then, since the payload
    alone shows there is nothing to diagnose, answered without going through the queue.
    """
    template = fixture_payload()
    template["installation"] = {"id": INSTALLATION, "node_id": f"MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{INSTALLATION}"}
    out = []
    for number in range(count):
        payload = copy.deepcopy(template)
        payload["workflow_run"]["id"] += number
        out.append(json.dumps(payload).encode())
    return out


@dataclass
class Load:
    """What one load run saw: replies by status and the latency of every reply, in seconds."""

    seconds: float
    latencies: list[float]
    statuses: dict[int, int]
    errors: int
    #: CPU seconds the server process used during the run; steadier than wall time on a shared machine.
    server_cpu: float = float("nan")

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile(self, share: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


class Connection:
    """One keep-alive HTTP/1.1 connection that posts prepared requests and reads the status of each reply.

    The load comes from raw asyncio streams, not an HTTP client library: on a 2-core machine httpx spent
    more CPU per request than the servers under test, and the figures would have measured the client.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, url: str) -> Connection:
        address = httpx.URL(url)
        return cls(*await asyncio.open_connection(address.host, address.port))

    async def post(self, request: bytes) -> int:
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                await self.reader.readexactly(int(value))
        return status

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def webhook_request(body: bytes, host: str) -> bytes:
    """The bytes of one signed delivery as GitHub posts it, under a fresh delivery id."""
    headers = {"Host": host, **signed(body, delivery_id=str(uuid.uuid4())), "Content-Length": str(len(body))}
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return f"POST /webhook HTTP/1.1\r\n{head}\r\n".encode() + body


async def drive(url: str, payloads: list[bytes], *, clients: int, seconds: float, rate: float | None) -> Load:
    """Post deliveries for `seconds` over `clients` connections: at a steady offered `rate` (open loop), or
    each connection sending its next request as soon as the last was answered (closed loop).

    In the open loop a request's latency counts from when it was due, so a stalled server is not hidden by
    requests waiting for a free connection.
    """
    host = httpx.URL(url).netloc.decode()
    bodies = itertools.cycle(payloads)
    connections: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(clients):
        connections.put_nowait(await Connection.open(url))
    load = Load(0.0, [], {}, 0)
    start = time.perf_counter()
    deadline = start + seconds

    async def send(due: float) -> None:
        connection = await connections.get()
        try:
            status = await connection.post(webhook_request(next(bodies), host))
        except (OSError, asyncio.IncompleteReadError, ValueError):
            load.errors += 1
            connection = await Connection.open(url)
        else:
            load.latencies.append(time.perf_counter() - due)
            load.statuses[status] = load.statuses.get(status, 0) + 1
        connections.put_nowait(connection)

    if rate is None:

        async def client() -> None:
            while (now := time.perf_counter()) < deadline:
                await send(now)

        await asyncio.gather(*(client() for _ in range(clients)))
    else:
        tasks = []
        for number in range(int(seconds * rate)):
            due = start + number / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            tasks.append(asyncio.create_task(send(due)))
        await asyncio.gather(*tasks)
    load.seconds = time.perf_counter() - start
    while not connections.empty():
        await connections.get_nowait().close()
    return load


@contextmanager
def worker_process(argv: list[str] | None, env: dict[str, str], log: Path) -> Iterator[None]:
    """`mendbot worker` in its own process while the web server runs, when `argv` names it."""
    if argv is None:
        yield
        return
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)
        try:
            yield
        finally:
            process.terminate()
            process.wait(30)


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far, all its threads together (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def running(argv: list[str], env: dict[str, str], port: int, log: Path) -> Iterator[tuple[str, int]]:
    """A server process on 127.0.0.1:`port` (its log in `log`), stopped with SIGTERM afterwards."""
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, env=env, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT)

        def up() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"{argv[2:4]} exited; see {log}")
            try:
                httpx.get(f"{url}/healthz", timeout=1)
            except httpx.HTTPError:
                return False
            return True

        try:
            wait_for(up, 60, "the server to start")
            yield url, process.pid
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def mendbot_env(tmp: Path, api_url: str = "http://127.0.0.1:9") -> dict[str, str]:
    """`mendbot serve`'s environment: a SQLite store in `tmp`, GitHub at `api_url`, other settings default."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("MENDBOT_")}
    env.update(
        MENDBOT_APP_ID=APP_ID,
        MENDBOT_PRIVATE_KEY=rsa_keys()[0],
        MENDBOT_WEBHOOK_SECRET=SECRET,
        MENDBOT_GITHUB_API_URL=api_url,
        MENDBOT_DATABASE_URL=f"sqlite:///{tmp / 'state.db'}",
    )
    return env


def stored(database: Path) -> int:
    with sqlite3.connect(database) as connection:
        return int(connection.execute("SELECT count(*) FROM deliveries").fetchone()[0])


def backlog(database: Path) -> int:
    """Deliveries accepted but not yet finished by the worker: intake can outrun processing for a while."""
    with sqlite3.connect(database) as connection:
        query = "SELECT count(*) FROM deliveries WHERE status IN ('pending', 'running')"
        return int(connection.execute(query).fetchone()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load run")
    parser.add_argument("--rate", type=float, default=300.0, help="offered deliveries per second (open loop)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent connections")
    parser.add_argument("--only", choices=sorted(SETUPS), action="append",
                        help="run only this setup (repeatable); the default runs all three")
    parser.add_argument("--loads", choices=("open", "closed"), action="append",
                        help="run only this kind of load (repeatable); the default runs both")
    args = parser.parse_args(argv)
    chosen = {SETUPS[key] for key in args.only or SETUPS}
    loads = args.loads or ["open", "closed"]
    payloads = bodies(BODIES)
    print(f"$ {COMMAND} --seconds {args.seconds:g} --rate {args.rate:g} --clients {args.clients}")
    print(
        f"{len(payloads[0]) / 1000:.0f} KB signed workflow_run deliveries, {args.clients} connections, "
        f"{args.seconds:g} s per run; open loop at {args.rate:g}/s, then closed loop (as fast as answered)"
    )
    print(f"{'server':<34}{'load':<14}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'CPU ms/req':>11}  replies")
    rows: dict[str, dict[str, Load]] = {}
    with tempfile.TemporaryDirectory(prefix="mendbot-bench-") as scratch:
        tmp = Path(scratch)
        # Green runs never reach GitHub, so nothing needs to listen at the default API address. Each setup
        # has its own database, so one's backlog is not the next one's.
        (tmp / "serve").mkdir()
        (tmp / "split").mkdir()
        servers = (
            (BARE, [sys.executable, "-c", _BARE_SERVER, "{port}"], dict(os.environ), None, None),
            (SERVE, [sys.executable, "-m", "bot.cli", "serve", "--port", "{port}"], mendbot_env(tmp / "serve"),
             None, tmp / "serve"),
            (SPLIT, [sys.executable, "-m", "uvicorn", "app:app", "--port", "{port}", "--no-access-log"],
             mendbot_env(tmp / "split"), [sys.executable, "-m", "bot.cli", "worker"], tmp / "split"),
        )
        accepted = on_disk = 0
        for name, command, env, worker, data in servers:
            if name not in chosen:
                continue
            port = free_port()
            argv = [part.format(port=port) for part in command]
            log = tmp / f"{name.split()[0]}.log"
            with worker_process(worker, env, log.with_suffix(".worker.log")), \
                    running(argv, env, port, log) as (url, pid):
                rows[name] = {}
                runs = {"open": (f"{args.rate:g}/s open", args.rate), "closed": ("closed", None)}
                for load, rate in (runs[kind] for kind in loads):
                    before = cpu_seconds(pid)
                    result = asyncio.run(drive(url, payloads, clients=args.clients, seconds=args.seconds, rate=rate))
                    result.server_cpu = cpu_seconds(pid) - before
                    rows[name][load] = result
                    replies = ", ".join(f"{code}: {count}" for code, count in sorted(result.statuses.items()))
                    if result.errors:
                        replies += f", errors: {result.errors}"
                    if data is not None:
                        replies += f"; left for the worker: {backlog(data / 'state.db')}"
                    print(
                        f"{name:<34}{load:<14}{result.rate:>8.0f}{result.percentile(0.5) * 1000:>9.1f}"
                        f"{result.percentile(0.99) * 1000:>9.1f}{max(result.latencies) * 1000:>9.1f}"
                        f"{result.server_cpu * 1000 / len(result.latencies):>11.2f}  {replies}",
                        flush=True,
                    )
            if data is not None:
                accepted += sum(load.statuses.get(202, 0) for load in rows[name].values())
                on_disk += stored(data / "state.db")
        print(f"202 replies from mendbot: {accepted}; deliveries on disk afterwards: {on_disk}")
    open_loop = f"{args.rate:g}/s open"
    for name in (SERVE, SPLIT):
        if name not in rows or BARE not in rows or len(loads) < 2:
            continue
        ours, base = rows[name], rows[BARE]
        print(
            f"{name}: closed-loop rate {ours['closed'].rate / base['closed'].rate:.2f}x the bare endpoint's; "
            f"p99 at {args.rate:g}/s {ours[open_loop].percentile(0.99) * 1000:.1f} ms "
            f"vs {base[open_loop].percentile(0.99) * 1000:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
