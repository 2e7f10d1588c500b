"""The load balancer in front of the web hosts: HAProxy (Debian's), its configuration, its
view of the servers (the stats page) and its request log, which the checks read as the one
witness of every request a phone made, in the order made, and of the web host that took it.

Health checks ask each web host's /readyz, so a host that cannot serve (no database, no
broker, no object store, no Celery worker, or gone altogether) is taken out of rotation, and
the sessions still open to it are cut when it is (`on-marked-down shutdown-sessions`): a phone
mid-upload then retries at once instead of waiting out a timeout.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import requests

PORT = 8000
STATS_PORT = 8404
BACKEND = "web"
# One line per request that got an end (HAProxy 2.6 logs no line for a request it cut off
# mid-body when its server went down); `req` marks them among its other lines (health
# changes). When the request began is the connection's accept date plus its idle time (%Ti:
# on a kept-alive connection the accept date is when the previous request ended).
LOG_FORMAT = (
    "req %Ts.%ms %Ti %s %HM %HP %ST %ts"
    " %[capture.req.hdr(0)] %[capture.req.hdr(1)] %[capture.res.hdr(0)]"
)


def config(address: str, servers: dict[str, str], web_port: int) -> str:
    """HAProxy's configuration: phones on `address`:PORT, the stats page on STATS_PORT."""
    lines = [
        "global",
        "    log stdout format raw local0 info",
        "    maxconn 2000",
        "defaults",
        "    mode http",
        "    log global",
        "    option log-health-checks",
        "    timeout connect 2s",
        # A tus PATCH streams for as long as the phone takes; the client's own timeout is 60 s.
        "    timeout client 60s",
        "    timeout server 60s",
        "    timeout http-request 15s",
        "    timeout check 3s",
        # A request that could not reach its server is sent to another (connect failures only:
        # nothing of it reached a web host, so nothing happens twice).
        "    retries 2",
        "    option redispatch 1",
        # A new connection to a web host for every request, so each is balanced on its own
        # (kept alive, a phone's requests stay with the host its connection went to).
        "    option http-server-close",
        "frontend phones",
        f"    bind {address}:{PORT}",
        "    option forwardfor",
        "    capture request header Upload-Offset len 24",
        "    capture request header Content-Length len 24",
        "    capture response header Upload-Offset len 24",
        f'    log-format "{LOG_FORMAT}"',
        f"    default_backend {BACKEND}",
        f"backend {BACKEND}",
        "    balance roundrobin",
        "    option httpchk",
        f"    http-check send meth GET uri /readyz ver HTTP/1.1 hdr Host {address}",
        "    http-check expect status 200",
        "    default-server inter 1s fall 2 rise 2 on-marked-down shutdown-sessions",
        *(f"    server {name} {ip}:{web_port} check" for name, ip in servers.items()),
        "listen stats",
        f"    bind {address}:{STATS_PORT}",
        "    no log",
        "    stats enable",
        "    stats uri /stats",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ServerState:
    status: str  # UP, DOWN, "UP 1/2" (going down), "DOWN 1/2" (coming up), MAINT, no check
    check_status: str  # L7OK, L7STS (wrong status), L4TOUT, L4CON, …
    check_code: str  # the HTTP status of the last check, when it got one

    @property
    def up(self) -> bool:
        return self.status == "UP"

    @property
    def down(self) -> bool:
        return self.status == "DOWN"


def servers(address: str) -> dict[str, ServerState]:
    """The balancer's view of each web host (its stats page, as CSV)."""
    response = requests.get(f"http://{address}:{STATS_PORT}/stats;csv", timeout=5)
    response.raise_for_status()
    rows = csv.DictReader(io.StringIO(response.text.lstrip("# ")))
    return {
        row["svname"]: ServerState(row["status"], row["check_status"], row["check_code"])
        for row in rows
        if row["pxname"] == BACKEND and row["svname"] not in ("FRONTEND", "BACKEND")
    }


@dataclass(frozen=True)
class Request:
    """One request as the balancer logged it once it ended."""

    began: float  # wall clock, when its first byte reached the balancer
    server: str  # the web host that took it; <NOSRV> when none could
    method: str
    path: str
    status: int  # -1 when no answer came back
    termination: str  # HAProxy's two letters: "--" a normal end; "SD", "sD", "CD", … cut off
    offset: int | None  # the request's Upload-Offset (tus PATCH)
    length: int | None  # its Content-Length
    confirmed: int | None  # the answer's Upload-Offset (tus HEAD, PATCH)

    @property
    def upload(self) -> str | None:
        """The upload's id, for a request on one tus upload."""
        prefix = "/api/v1/uploads/"
        if self.path.startswith(prefix) and len(self.path) > len(prefix):
            return self.path[len(prefix) :].split("?")[0]
        return None


def requests_logged(log: Path) -> list[Request]:
    """Every request line of the balancer's log, in the order the requests began."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 11 or parts[0] != "req":
            continue
        _, accepted, idle, server, method, path, status, termination, *headers = parts
        offset, length, confirmed = (_number(value) for value in headers)
        found.append(
            Request(
                float(accepted) + max(0, int(idle)) / 1000,
                server,
                method,
                path,
                int(status),
                termination,
                offset,
                length,
                confirmed,
            )
        )
    return sorted(found, key=lambda request: request.began)


def _number(value: str) -> int | None:
    return int(value) if value.isdigit() else None
