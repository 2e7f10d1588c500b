"""Hosts made of Linux network namespaces on one bridge, and the ways to lose one.

Each host is a namespace with its own address on a private /24; its cable is a veth pair
whose outer end is a port of the bridge. The test itself runs in the root namespace, which
also has an address on the bridge: it is the phones' network and the operator's console.
Everything here is named with PREFIX, so what a killed run left behind can be found and
removed by the next (`remove_leftovers`); a lock file keeps two runs on one machine apart.

Needs root and iproute2 (`ip netns`); `unavailable()` says why not, for a skip.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PREFIX = "fsh"
BRIDGE = f"{PREFIX}-br"
SUBNET = "10.213.77"
NETWORK = f"{SUBNET}.0/24"
CONSOLE = f"{SUBNET}.1"  # the root namespace: phones and the test's own checks
LOCK_FILE = Path("/run/lock" if Path("/run/lock").is_dir() else tempfile.gettempdir())
LOCK_FILE /= "fieldsync-hosts.lock"
KILL_TIMEOUT = 10.0


class NetworkError(RuntimeError):
    """A namespace, link or address could not be made as asked."""


def ip(*args: str, check: bool = True) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def unavailable() -> str | None:
    """Why this machine cannot make hosts (not root, no `ip netns`), or None when it can."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    probe = f"{PREFIX}-probe"
    try:
        ip("netns", "add", probe)
    except NetworkError as error:
        return f"cannot make a network namespace: {error}"
    ip("netns", "delete", probe, check=False)
    return None


@contextlib.contextmanager
def exclusive(timeout: float = 600.0) -> Iterator[None]:
    """One run at a time on this machine: the names, the bridge and the subnet are fixed."""
    with LOCK_FILE.open("w") as lock:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise NetworkError(f"another run holds {LOCK_FILE}") from None
                time.sleep(1.0)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Host:
    """A machine of its own on the bridge: a namespace, an address, a cable."""

    name: str
    address: str

    @property
    def namespace(self) -> str:
        return f"{PREFIX}-{self.name}"

    @property
    def cable(self) -> str:
        """The outer end of the host's veth pair (a port of the bridge)."""
        return f"{PREFIX}-{self.name}"

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run on this host (`ip netns exec` execs it: its pid is the command's)."""
        return ["ip", "netns", "exec", self.namespace, *argv]

    def cut(self) -> None:
        """Pull the cable: nothing goes in or out, not even the FIN of a dying process."""
        ip("link", "set", self.cable, "down")

    def reconnect(self) -> None:
        ip("link", "set", self.cable, "up")

    def pids(self) -> list[int]:
        return [int(pid) for pid in ip("netns", "pids", self.namespace, check=False).split()]

    def kill_everything(self) -> None:
        """SIGKILL every process in the namespace, until none is left."""
        kill_namespace(self.namespace)


def kill_namespace(namespace: str) -> None:
    deadline = time.monotonic() + KILL_TIMEOUT
    while pids := [int(p) for p in ip("netns", "pids", namespace, check=False).split()]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() >= deadline:
            raise NetworkError(f"processes {pids} in {namespace} outlived SIGKILL")
        time.sleep(0.05)


def make_bridge() -> None:
    ip("link", "add", BRIDGE, "type", "bridge")
    ip("addr", "add", f"{CONSOLE}/24", "dev", BRIDGE)
    ip("link", "set", BRIDGE, "up")


def make_host(name: str, last_octet: int) -> Host:
    host = Host(name, f"{SUBNET}.{last_octet}")
    inner = f"{PREFIX}-{name}-in"[:15]
    ip("netns", "add", host.namespace)
    ip("link", "add", host.cable, "type", "veth", "peer", "name", inner)
    ip("link", "set", inner, "netns", host.namespace)
    ip("link", "set", host.cable, "master", BRIDGE)
    ip("link", "set", host.cable, "up")
    inside = ["ip", "-n", host.namespace]
    for argv in (
        ["link", "set", "lo", "up"],
        ["link", "set", inner, "name", "eth0"],
        ["addr", "add", f"{host.address}/24", "dev", "eth0"],
        ["link", "set", "eth0", "up"],
    ):
        ip(*inside[1:], *argv)
    return host


def remove_leftovers() -> None:
    """Every namespace and link named with PREFIX, and whatever still runs inside them."""
    for line in ip("netns", "list", check=False).splitlines():
        namespace = line.split()[0] if line.split() else ""
        if namespace.startswith(f"{PREFIX}-"):
            kill_namespace(namespace)
            ip("netns", "delete", namespace, check=False)
    for line in ip("-o", "link", "show", check=False).splitlines():
        name = line.split(":")[1].strip().split("@")[0] if line.count(":") >= 2 else ""
        if name.startswith(f"{PREFIX}-"):
            ip("link", "delete", name, check=False)
