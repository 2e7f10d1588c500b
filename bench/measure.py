"""Timing helpers: a start line for threads, percentiles, and where the CPU went in a phase."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar, cast

import psutil  # type: ignore[import-untyped]
import psycopg

T = TypeVar("T")
# A task gets `go`: it prepares (connects, warms up), calls go(), then does the timed work.
Task = Callable[[Callable[[], object]], T]


def timed_threads(tasks: Sequence[Task[T]], timeout: float) -> tuple[list[T], float]:
    """Run each task in its own thread, time from the moment all are ready until all are done.

    Returns the tasks' results in order and the elapsed seconds. The first error in a task is
    raised here; a task still running after `timeout` raises TimeoutError.
    """
    start = threading.Barrier(len(tasks) + 1, timeout=timeout)
    results: list[T | None] = [None] * len(tasks)
    errors: list[BaseException] = []

    def runner(index: int, task: Task[T]) -> None:
        try:
            results[index] = task(start.wait)
        except BaseException as error:  # noqa: BLE001 - handed to the main thread
            errors.append(error)
            start.abort()

    threads = [
        threading.Thread(target=runner, args=(i, task), daemon=True) for i, task in enumerate(tasks)
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        start.wait()
    began = time.perf_counter()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    if any(thread.is_alive() for thread in threads):
        raise TimeoutError(f"threads still running after {timeout:.0f} s")
    return [cast(T, result) for result in results], elapsed


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (fraction 0.5 = p50, 0.99 = p99) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


# --- CPU --------------------------------------------------------------------------------------
Finder = Callable[[], Iterable[psutil.Process]]


def cpu_seconds(process: psutil.Process) -> float:
    """CPU used by the process and by its children that have exited (Postgres backends of
    closed connections, for the postmaster)."""
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


@dataclass
class CpuUse:
    wall: float
    by_group: dict[str, float]
    machine: float  # CPU seconds spent by everything on the machine, idle excluded
    # Per process, largest first: how evenly a group's processes shared the work.
    by_process: dict[str, list[float]]

    @property
    def other(self) -> float:
        """CPU seconds of processes outside the groups (other people's work on the machine)."""
        return max(0.0, self.machine - sum(self.by_group.values()))


class CpuMeter:
    """CPU seconds used by named groups of processes between `start()` and `stop()`.

    A process that starts during the phase counts from zero. One that exits during it counts
    in its parent's children times once reaped, less what it had used before the phase, which
    covers Postgres backends (the postmaster is in its group) but not a process whose parent
    is in no group.
    """

    def __init__(self, groups: dict[str, Finder]) -> None:
        self.groups = groups
        self._began: dict[str, dict[int, tuple[float, int]]] = {}
        self._machine = 0.0
        self._wall = 0.0

    def _sample(self) -> dict[str, dict[int, tuple[float, int]]]:
        """Per group, each process's CPU seconds so far and its parent's pid."""
        sample: dict[str, dict[int, tuple[float, int]]] = {}
        for name, find in self.groups.items():
            used: dict[int, tuple[float, int]] = {}
            for process in find():
                try:
                    used[process.pid] = (cpu_seconds(process), int(process.ppid()))
                except psutil.Error:
                    continue
            sample[name] = used
        return sample

    @staticmethod
    def _machine_busy() -> float:
        times = psutil.cpu_times()
        return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))

    def start(self) -> None:
        self._began = self._sample()
        self._machine = self._machine_busy()
        self._wall = time.perf_counter()

    def stop(self) -> CpuUse:
        wall = time.perf_counter() - self._wall
        machine = self._machine_busy() - self._machine
        ended = self._sample()
        by_process = {}
        for name in self.groups:
            began, now = self._began.get(name, {}), ended[name]
            # A process that exited meanwhile sits in its parent's children times with all the
            # CPU it ever used (a Postgres backend whose connection closed): what it had used
            # before the phase began is taken off its parent again.
            before: dict[int, float] = {}
            for pid, (used, parent) in began.items():
                if pid not in now and parent in now:
                    before[parent] = before.get(parent, 0.0) + used
            by_process[name] = sorted(
                (
                    max(0.0, used - began.get(pid, (0.0, 0))[0] - before.get(pid, 0.0))
                    for pid, (used, _) in now.items()
                ),
                reverse=True,
            )
        by_group = {name: sum(used) for name, used in by_process.items()}
        return CpuUse(wall, by_group, machine, by_process)


def process_tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants (gunicorn's or Celery's workers)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


POSTGRES_AUX = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")


def postgres_processes(postmaster: int, database: str) -> list[psutil.Process]:
    """The server's processes that work for `database`: the postmaster (whose children times
    hold the backends that have exited, other databases' included), the live backends of
    `database` (process titles name it) and the shared writers. Backends of other databases
    that stay connected, such as test suites', are left out."""
    try:
        root = psutil.Process(postmaster)
        children = root.children()
    except psutil.Error:
        return []
    found = [root]
    for child in children:
        try:
            title = " ".join(child.cmdline()).strip()
        except psutil.Error:
            continue
        if f" {database} " in f"{title} " or title.endswith(POSTGRES_AUX):
            found.append(child)
    return found


def postgres_server(conninfo: str) -> int | None:
    """The postmaster's pid when the Postgres server runs on this machine, else None."""
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        backend = psutil.Process(row[0] if row else 0)
        return int(backend.ppid())
    except psutil.Error:
        return None


def listening_process(port: int) -> psutil.Process | None:
    """The process listening on TCP `port` of this machine (Redis, say), when we may see it."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
            try:
                return psutil.Process(conn.pid) if conn.pid else None
            except psutil.Error:
                return None
    return None
