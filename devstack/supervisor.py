"""Runs the long-lived processes of `python -m devstack run` and stops them together."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from devstack.services import die_with_parent

# Above gunicorn's graceful_timeout (30 s), so a draining web worker is not cut short.
STOP_TIMEOUT = 35.0


def say(message: str) -> None:
    print(f"devstack: {message}", file=sys.stderr, flush=True)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]


def start(name: str, command: list[str], env: Mapping[str, str], cwd: Path) -> Child:
    # A session of its own: a terminal Ctrl-C reaches only devstack, which then stops the
    # children one way, in order, instead of each reacting to the signal on its own.
    process = subprocess.Popen(
        command,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=die_with_parent(),  # noqa: PLW1509 (only a prctl call)
    )
    return Child(name, process)


class StopOnSignal:
    """The first SIGINT/SIGTERM/SIGHUP raises KeyboardInterrupt; later ones only say "wait".

    So one Ctrl-C starts an orderly stop, and a second can't abort it half way and orphan
    servers.
    """

    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.stopping = False

    def install(self) -> None:
        for signum in self.signals:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            say("already stopping, please wait")
            return
        self.stopping = True
        raise KeyboardInterrupt


def supervise(
    children: list[Child], ready: Callable[[], bool], announce: Callable[[], None]
) -> int:
    """Wait for a signal (exit 0) or a child's death (exit 1); stopping is the caller's job.

    `announce` runs once, when `ready` first holds.
    """
    announced = False
    try:
        while True:
            for child in children:
                code = child.process.poll()
                if code is not None:
                    say(f"{child.name} exited unexpectedly (code {code}); stopping everything")
                    return 1
            if not announced and ready():
                announce()
                announced = True
            time.sleep(0.2)
    except KeyboardInterrupt:
        say("stopping")
        return 0


def stop(children: list[Child]) -> None:
    """SIGTERM each leader (graceful), wait, then SIGKILL whatever is left of its group."""
    for child in children:
        if child.process.poll() is None:
            child.process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for child in children:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop within {STOP_TIMEOUT:.0f} s; killing it")
        # Also after a clean exit: a leader that dies first can leave its workers behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.process.pid, signal.SIGKILL)
        child.process.wait()
