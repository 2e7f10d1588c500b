"""python -m devstack run | test [pytest args] | exec -- COMMAND [args]

run   Start web, Celery worker and Celery beat in the foreground until Ctrl-C. For each of
      DATABASE_URL, REDIS_URL and S3_ENDPOINT_URL not set, an embedded server keeps its data
      under .data/. Migrates, collects static files and seeds demo data first.
test  Run pytest against Postgres and Redis on 127.0.0.1:5432/6379 when they answer, else
      against embedded ones in a temporary directory. DATABASE_URL names `fieldsync` (pytest-django
      creates `test_fieldsync` from it), REDIS_URL names db 15. "No tests collected" fails.
exec  Like test, with database `fieldsync_bench`, Redis db 14 and a temporary SeaweedFS, then
      run COMMAND (`make bench`). An embedded Postgres takes BENCH_PG_MAX_CONNECTIONS
      (default 100, Postgres' own) as its max_connections.

Set DEVSTACK_FORCE_EMBEDDED=1 to start embedded servers even where an outside one is set or
answers.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from devstack import services, supervisor
from devstack.ensure_bucket import BucketError, S3Settings, ensure_bucket
from devstack.supervisor import say

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / ".data"
LOCAL_POSTGRES = "postgres://postgres@127.0.0.1:5432/postgres"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
PYTEST_NO_TESTS_COLLECTED = 5


def force_embedded() -> bool:
    return os.environ.get("DEVSTACK_FORCE_EMBEDDED", "") not in {"", "0"}


# --- run ------------------------------------------------------------------------------------


def run(stopper: supervisor.StopOnSignal) -> int:
    DATA.mkdir(exist_ok=True)
    with ExitStack() as stack:
        try:
            code = run_with(stack, dict(os.environ))
        finally:
            # The stack now stops the servers; a signal must not cut that short.
            stopper.stopping = True
    return code


def run_with(stack: ExitStack, env: dict[str, str]) -> int:
    children: list[supervisor.Child] = []
    try:
        used = start_run_services(stack, env)
        local_settings(env, DATA / "secret_key")
        prepare(env, should_seed(used, env))
        # Registered after the servers, so the children stop first.
        stack.callback(supervisor.stop, children)
        start_processes(env, children)
    except KeyboardInterrupt:
        say("interrupted while starting; stopping")
        return 130
    except (services.ServiceError, subprocess.CalledProcessError) as error:
        say(f"could not start: {error}")
        return 1
    port = int(env.get("PORT", "8000"))
    return supervisor.supervise(
        children,
        ready=lambda: port_answers(port),
        announce=lambda: print(banner(port, used), flush=True),
    )


def start_run_services(stack: ExitStack, env: dict[str, str]) -> list[services.Service]:
    """Embedded servers under .data/ for whatever the environment does not configure."""
    used: list[services.Service] = []
    if force_embedded() or not env.get("DATABASE_URL"):
        postgres = keep(stack, services.start_postgres(DATA / "postgres"))
        services.ensure_database(postgres.url, "fieldsync")
        env["DATABASE_URL"] = services.with_path(postgres.url, "fieldsync")
        used.append(postgres)
    if force_embedded() or not env.get("REDIS_URL"):
        redis = keep(stack, services.start_redis(DATA / "redis", persistent=True))
        env["REDIS_URL"] = redis.url
        used.append(redis)
    if force_embedded() or not env.get("S3_ENDPOINT_URL"):
        s3 = keep(stack, services.start_seaweedfs(DATA / "seaweedfs", env))
        env.update(s3.env)
        used.append(s3)
    return used


def should_seed(used: list[services.Service], env: dict[str, str]) -> bool:
    """The demo users have well-known passwords: they go only into the embedded database,
    never into one the environment names, unless SEED_DEMO=1 asks for them."""
    return any(s.name == "postgres" for s in used) or env.get("SEED_DEMO", "") == "1"


def local_settings(env: dict[str, str], secret_file: Path | None) -> None:
    """What a deployment must choose itself (the settings refuse to start without it), chosen
    for this machine's own stack: a secret key kept under .data/ so sessions survive a
    restart (or made for one test run), and any host name."""
    if not env.get("SECRET_KEY"):
        if secret_file is None:
            env["SECRET_KEY"] = secrets.token_urlsafe(50)
        else:
            if not secret_file.exists():
                secret_file.write_text(secrets.token_urlsafe(50))
                secret_file.chmod(0o600)
            env["SECRET_KEY"] = secret_file.read_text().strip()
    if not env.get("ALLOWED_HOSTS"):
        env["ALLOWED_HOSTS"] = "*"


def prepare(env: dict[str, str], seed: bool) -> None:
    manage(env, "migrate", "--noinput")
    if manage(env, "collectstatic", "--noinput", check=False).returncode != 0:
        say("collectstatic failed; continuing without collected static files")
    if not seed:
        say("DATABASE_URL is configured: no demo data (SEED_DEMO=1 adds it)")
    elif "seed_demo" not in manage_commands(env):
        say("no seed_demo command yet; skipping demo data")
    elif manage(env, "seed_demo", check=False).returncode != 0:
        say("seed_demo failed; continuing without demo data")


def start_processes(env: dict[str, str], children: list[supervisor.Child]) -> None:
    """Start web, worker and beat, adding each to `children` as soon as it exists."""
    python = sys.executable
    # Prometheus' multiprocess files belong to one run of the web processes only.
    metrics = DATA / "prometheus"
    shutil.rmtree(metrics, ignore_errors=True)
    metrics.mkdir()
    web_env = {**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
    celery = [python, "-m", "celery", "-A", "syncserver"]
    worker = [*celery, "worker", "-Q", "fieldsync", "-c", "2", "--loglevel", "INFO"]
    schedule = str(DATA / "celerybeat-schedule")
    beat = [*celery, "beat", "--schedule", schedule, "--loglevel", "INFO"]
    gunicorn = [python, "-m", "gunicorn", "-c", "gunicorn.conf.py", "syncserver.wsgi:application"]
    for name, command, child_env in [
        ("web", gunicorn, web_env),
        # The worker shares web's metrics directory (one host): /metrics shows its tasks too.
        ("worker", worker, web_env),
        ("beat", beat, env),
    ]:
        children.append(supervisor.start(name, command, child_env, ROOT))


def manage(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], env=env, cwd=ROOT, check=check, text=True
    )


def manage_commands(env: dict[str, str]) -> set[str]:
    listed = subprocess.run(
        [sys.executable, "manage.py", "help", "--commands"],
        env=env,
        cwd=ROOT,
        check=True,
        text=True,
        stdout=subprocess.PIPE,
    )
    return set(listed.stdout.split())


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def banner(port: int, used: list[services.Service]) -> str:
    base = f"http://127.0.0.1:{port}"
    lines = [
        "",
        "fieldsync is running (web, Celery worker, Celery beat)",
        f"  API      {base}/api/v1/   (docs {base}/api/docs/)",
        f"  admin    {base}/admin/",
    ]
    lines += [f"  {service.name:<8} {service.url}  (embedded)" for service in used]
    if used:
        lines.append(f"  data     {DATA}/")
    lines += ["Ctrl-C stops everything.", ""]
    return "\n".join(lines)


# --- test and exec --------------------------------------------------------------------------


class Scratch:
    """A temporary directory made on first use and removed when the stack closes."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._path: Path | None = None

    def __call__(self, name: str) -> Path:
        if self._path is None:
            self._path = Path(tempfile.mkdtemp(prefix="fieldsync-devstack-"))
            # Registered before any server that lives in it, so it is removed after they stop.
            self._stack.callback(shutil.rmtree, self._path, ignore_errors=True)
        return self._path / name


def keep(stack: ExitStack, service: services.Service) -> services.Service:
    stack.callback(service.stop)
    return service


def postgres_server(
    stack: ExitStack, scratch: Scratch, max_connections: int = services.MAX_CONNECTIONS
) -> str:
    """DATABASE_URL's server, else the machine's on 5432, else an embedded one."""
    configured = os.environ.get("DATABASE_URL")
    if configured and not force_embedded():
        return configured
    if not force_embedded() and services.postgres_answers(LOCAL_POSTGRES):
        return LOCAL_POSTGRES
    say(f"starting an embedded Postgres (max_connections {max_connections})")
    return keep(stack, services.start_postgres(scratch("postgres"), max_connections)).url


def redis_server(stack: ExitStack, scratch: Scratch) -> str:
    """REDIS_URL's server, else the machine's on 6379, else an embedded one."""
    configured = os.environ.get("REDIS_URL")
    if configured and not force_embedded():
        return configured
    if not force_embedded() and services.redis_answers(LOCAL_REDIS):
        return LOCAL_REDIS
    say("starting an embedded Redis")
    return keep(stack, services.start_redis(scratch("redis"), persistent=False)).url


def object_store(stack: ExitStack, scratch: Scratch, env: dict[str, str]) -> dict[str, str]:
    """S3_* and AWS_* variables: the configured store's (bucket ensured) or a temporary one's."""
    if env.get("S3_ENDPOINT_URL") and not force_embedded():
        s3 = S3Settings.from_env(env)
        ensure_bucket(s3)
        return s3.env()
    say("starting an embedded SeaweedFS")
    return keep(stack, services.start_seaweedfs(scratch("seaweedfs"), env)).env


def run_in_foreground(command: list[str], env: dict[str, str]) -> int:
    """Run `command` in our process group and return its exit code (128 + signal if killed).

    A terminal Ctrl-C reaches the child directly, so we let it decide how to stop. SIGTERM and
    SIGHUP aimed at us reach it as SIGINT: pytest then tears its fixtures (worker, object
    store) down, where SIGTERM would end it on the spot.
    """
    child: subprocess.Popen[bytes] | None = None

    def forward(signum: int, frame: FrameType | None) -> None:
        if signum != signal.SIGINT and child is not None and child.poll() is None:
            child.send_signal(signal.SIGINT)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    # SIGINT if we are killed outright: the child then stops as after a Ctrl-C.
    child = subprocess.Popen(
        command,
        env=env,
        cwd=ROOT,
        preexec_fn=services.die_with_parent(signal.SIGINT),  # noqa: PLW1509 (only a prctl call)
    )
    code = child.wait()
    return 128 - code if code < 0 else code


def test(pytest_args: list[str]) -> int:
    with ExitStack() as stack:
        scratch = Scratch(stack)
        env = dict(os.environ)
        env["DATABASE_URL"] = services.with_path(postgres_server(stack, scratch), "fieldsync")
        env["REDIS_URL"] = services.with_path(redis_server(stack, scratch), "15")
        local_settings(env, None)
        code = run_in_foreground([sys.executable, "-m", "pytest", *pytest_args], env)
    if code == PYTEST_NO_TESTS_COLLECTED:
        say("pytest collected no tests; a test run that tests nothing counts as a failure")
        return 1
    return code


def exec_(command: list[str]) -> int:
    with ExitStack() as stack:
        scratch = Scratch(stack)
        env = dict(os.environ)
        max_connections = int(
            os.environ.get("BENCH_PG_MAX_CONNECTIONS", str(services.MAX_CONNECTIONS))
        )
        postgres = postgres_server(stack, scratch, max_connections)
        services.ensure_database(postgres, "fieldsync_bench")
        env["DATABASE_URL"] = services.with_path(postgres, "fieldsync_bench")
        env["REDIS_URL"] = services.with_path(redis_server(stack, scratch), "14")
        env.update(object_store(stack, scratch, env))
        local_settings(env, None)
        code = run_in_foreground(command, env)
    return code


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    stopper = supervisor.StopOnSignal()
    commands: dict[str, Callable[[list[str]], int]] = {
        "run": lambda args: run(stopper) if not args else usage(f"run takes no arguments: {args}"),
        "test": test,
        "exec": lambda args: exec_(args) if args else usage("exec needs a command"),
    }
    if not argv or argv[0] not in commands:
        return usage(f"unknown command {argv[0]!r}" if argv else "")
    args = argv[1:]
    if argv[0] == "exec" and args[:1] == ["--"]:
        args = args[1:]
    # Until a command takes signals over, any of them stops us through the cleanup path, so
    # no embedded server is left running.
    stopper.install()
    try:
        return commands[argv[0]](args)
    except (services.ServiceError, BucketError) as error:
        say(str(error))
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


def usage(problem: str) -> int:
    if problem:
        say(problem)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
