"""The server processes a benchmark starts (gunicorn, Celery workers), and their cleanup.

Each runs in a session of its own with its output in a log file, so a benchmark's report is
not buried in access logs, and stopping it ends its whole process group (gunicorn's and
Celery's worker processes too), whatever state the benchmark failed in.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parent.parent
STOP_TIMEOUT = 20.0


class ProcessDied(RuntimeError):
    """A server process exited while the benchmark still needed it."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise ProcessDied(f"{self.name} exited with code {code}:\n{tail(self.log)}")


class Children:
    """Processes started for one benchmark; leaving the `with` block stops every one."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = dict(env)
        self.log_dir = log_dir
        self._running: list[Child] = []

    def __enter__(self) -> Children:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.stop_all()

    def start(self, name: str, command: list[str], env: Mapping[str, str] | None = None) -> Child:
        log = self.log_dir / f"{name}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env={**self.env, **(env or {})},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, process, log)
        self._running.append(child)
        return child

    def stop(self, child: Child) -> None:
        """SIGTERM (a graceful stop), then SIGKILL to whatever is left of its group."""
        if child.process.poll() is None:
            child.process.terminate()
            try:
                child.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                print(f"bench: {child.name} did not stop; killing it", file=sys.stderr)
        # Also after a clean exit: a leader that dies first can leave its workers behind.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
        if child in self._running:
            self._running.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self._running)):
            self.stop(child)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def wait_for(ready: Callable[[], bool], what: str, child: Child, timeout: float = 60.0) -> None:
    """Poll `ready` until it holds; fail early if `child` dies, late if it never gets there."""
    deadline = time.monotonic() + timeout
    while not ready():
        child.check()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what} not ready within {timeout:.0f} s:\n{tail(child.log)}")
        time.sleep(0.1)


def tail(log: Path, lines: int = 30) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"
