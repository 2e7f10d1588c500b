"""Benchmark of resumable uploads, each figure beside its floor from the same run.

Against one SeaweedFS, one file of BENCH_UPLOAD_MIB (default 256) random bytes, each variant
run BENCH_UPLOAD_RUNS times (default 3; the median is reported), one at a time:

1. Floor: raw boto3 multipart upload of the file in parts of our part size (8 MiB), through
   the same client settings our server uses, from this process.
2. Ours: tuspy (a stock client) → gunicorn started from gunicorn.conf.py → our tus endpoint,
   in 8 MiB and in 1 MiB chunks. Timed from the POST to the answer to the last PATCH: then
   every byte is durable in the object store and the upload is queued for verification.
   The floor and ours with 8 MiB chunks run in interleaved pairs (floor, ours, floor, ours,
   …): the target is the median of the pairs' ratios, reported with their spread, so a
   minute when the shared machine is busy weighs on both sides of one pair.
3. Peer: the same tuspy against @tus/server with @tus/s3-store (Node, from npm; part size
   8 MiB), timed the same way (it completes the multipart upload within the last PATCH).
4. Peak RSS of each server process while it served those uploads.
5. Verification: a Celery worker then completes, sha256-checks and attaches every upload
   of step 2; timed from its start until all are attached.
6. Resumption: bytes a client must send again after a kill at a random point of the file
   (8 MiB chunks): the client killed (its connection reset), and the web server SIGKILLed.

`make bench` runs it with the other benchmarks; `python -m bench.uploads` (under
`python -m devstack exec --`) runs it alone and writes its section of docs/benchmarks.md.
"""

from __future__ import annotations

import base64
import http.client
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import psutil  # type: ignore[import-untyped]
import requests
from tusclient.client import TusClient

from bench.measure import CpuMeter, CpuUse, process_tree
from bench.processes import ROOT, Child, Children, free_port, wait_for

MiB = 1024 * 1024
PART = 8 * MiB
CHUNKS = (8 * MiB, 1 * MiB)
LOGS = ROOT / ".data" / "bench-uploads"
NODE_DIR = LOGS / "node"
TUS_NODE_PACKAGES = ("@tus/server@2.4.5", "@tus/s3-store@2.0.7")
RAW_TARGET = 0.85  # ours at least 85% of raw boto3 with 8 MiB chunks (median of pairs)
KILL_POINTS = 3


def say(message: str) -> None:
    print(f"bench uploads: {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Plan:
    size: int = 256 * MiB
    runs: int = 3
    seed: int = 20261123

    @classmethod
    def from_env(cls) -> Plan:
        return cls(
            size=int(os.environ.get("BENCH_UPLOAD_MIB", "256")) * MiB,
            runs=int(os.environ.get("BENCH_UPLOAD_RUNS", "3")),
        )


@dataclass
class Variant:
    """One way of uploading the file, run several times."""

    name: str
    seconds: list[float] = field(default_factory=list)
    peak_rss: int = 0
    cpu: CpuUse | None = None

    def mib_s(self, size: int) -> float:
        return size / MiB / statistics.median(self.seconds)

    def add_cpu(self, cpu: CpuUse) -> None:
        """Count one more run's CPU (runs of two variants interleave: each is metered
        alone)."""
        if self.cpu is None:
            self.cpu = cpu
            return
        self.cpu = CpuUse(
            wall=self.cpu.wall + cpu.wall,
            by_group={
                name: self.cpu.by_group.get(name, 0.0) + cpu.by_group.get(name, 0.0)
                for name in self.cpu.by_group.keys() | cpu.by_group.keys()
            },
            machine=self.cpu.machine + cpu.machine,
            by_process={},
        )


@dataclass
class Pairs:
    """The floor and ours (8 MiB chunks) run in turn: the ratio of each pair."""

    raw: Variant
    ours: Variant

    @property
    def ratios(self) -> list[float]:
        return [
            floor / ours for floor, ours in zip(self.raw.seconds, self.ours.seconds, strict=True)
        ]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    def spread(self) -> str:
        return f"{min(self.ratios):.0%} to {max(self.ratios):.0%}"


@dataclass
class Resumption:
    client_exited: list[int] = field(default_factory=list)
    client_reset: list[int] = field(default_factory=list)
    server_killed: list[int] = field(default_factory=list)


# ============================================================================================
# Servers
# ============================================================================================
class RssPeak:
    """Samples the RSS of a process tree every 50 ms while running."""

    def __init__(self, pids: Callable[[], Iterable[psutil.Process]]) -> None:
        self.pids = pids
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            for process in self.pids():
                with suppress(psutil.Error):
                    self.peak = max(self.peak, process.memory_info().rss)


class Bench:
    def __init__(self, plan: Plan, children: Children, file: Path) -> None:
        self.plan = plan
        self.children = children
        self.file = file
        self.web: Child | None = None
        self.port = 0
        self.token = ""
        self.work_order = ""
        self.uploads: list[str] = []

    # --- set-up ---------------------------------------------------------------------------
    def setup(self) -> None:
        from django.db import transaction

        from accounts.services import field_user_create, token_issue
        from operations.recording import Author, ChangeSet
        from workorders.registry import WORK_ORDER

        org = f"bench-uploads-{uuid.uuid4().hex[:8]}"
        dispatcher = field_user_create(org, "dispatcher", f"{org}-dispatcher", "pw-bench-1234")
        tech = field_user_create(org, "technician", f"{org}-tech", "pw-bench-1234")
        self.token = token_issue(tech)
        work_order = uuid.uuid4()
        with transaction.atomic():
            changes = ChangeSet(dispatcher.org_id)
            changes.create(
                WORK_ORDER,
                work_order,
                {"title": "Benchmark site", "assigned_to": tech.username},
                Author(actor_id=dispatcher.pk),
            )
            changes.flush()
        self.work_order = str(work_order)

    def start_web(self) -> None:
        self.port = free_port()
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        self.web = self.children.start(
            "gunicorn", [*command, "syncserver.wsgi:application"], {"PORT": str(self.port)}
        )
        wait_for(lambda: _answers(self.port, "/healthz"), "gunicorn", self.web)

    def kill_web(self) -> None:
        assert self.web is not None
        with suppress(ProcessLookupError):
            os.killpg(self.web.process.pid, signal.SIGKILL)
        self.web.process.wait()
        self.children.stop(self.web)
        self.web = None

    def web_tree(self) -> list[psutil.Process]:
        return process_tree(self.web.process.pid) if self.web else []

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/uploads/"

    def metadata(self, attachment_id: str) -> dict[str, str]:
        return {
            "attachment_id": attachment_id,
            "work_order_id": self.work_order,
            "filename": "bench.mp4",
            "content_type": "video/mp4",
            "kind": "video",
        }

    # --- throughput -----------------------------------------------------------------------
    def pairs(self) -> Pairs:
        """The floor and ours with 8 MiB chunks, in interleaved pairs."""
        pairs = Pairs(Variant("raw boto3 multipart, 8 MiB parts"), self.ours_variant(CHUNKS[0]))
        with RssPeak(self.web_tree) as rss:
            for run in range(self.plan.runs):
                self.raw_once(pairs.raw)
                self.ours_once(pairs.ours, CHUNKS[0])
                say(
                    f"pair {run + 1}: raw {self.plan.size / MiB / pairs.raw.seconds[-1]:.0f}"
                    f" MiB/s, ours {self.plan.size / MiB / pairs.ours.seconds[-1]:.0f} MiB/s"
                    f" ({pairs.ratios[-1]:.0%})"
                )
        pairs.ours.peak_rss = rss.peak
        return pairs

    def raw_once(self, variant: Variant) -> None:
        from media.storage import object_store

        store = object_store()
        meter = CpuMeter({"bench client": lambda: [psutil.Process()]})
        meter.start()
        key = f"bench/raw-{uuid.uuid4().hex}"
        began = time.perf_counter()
        multipart = store.create_multipart(key, "video/mp4", "bench.mp4")
        parts = []
        with self.file.open("rb") as source:
            for number, data in enumerate(iter(lambda: source.read(PART), b""), 1):
                stored = store.upload_part(key, multipart, number, data)
                parts.append((number, stored.etag, stored.checksum))
        store.complete(key, multipart, parts)
        variant.seconds.append(time.perf_counter() - began)
        variant.add_cpu(meter.stop())
        store.delete(key)

    def ours_variant(self, chunk: int) -> Variant:
        return Variant(f"ours (tus, gunicorn), {chunk // MiB} MiB chunks")

    def ours_once(self, variant: Variant, chunk: int) -> None:
        meter = CpuMeter({"bench client": lambda: [psutil.Process()], "server": self.web_tree})
        client = TusClient(self.endpoint, headers={"Authorization": f"Token {self.token}"})
        attachment_id = str(uuid.uuid4())
        meter.start()
        variant.seconds.append(
            _tuspy_upload(client, self.file, chunk, self.metadata(attachment_id))
        )
        variant.add_cpu(meter.stop())
        self.uploads.append(attachment_id)

    def ours(self, chunk: int) -> Variant:
        variant = self.ours_variant(chunk)
        with RssPeak(self.web_tree) as rss:
            for _ in range(self.plan.runs):
                self.ours_once(variant, chunk)
        variant.peak_rss = rss.peak
        return variant

    def peer(self, chunk: int, node: Child, port: int) -> Variant:
        variant = Variant(f"@tus/server + @tus/s3-store, {chunk // MiB} MiB chunks")
        tree: Callable[[], list[psutil.Process]] = lambda: process_tree(node.process.pid)  # noqa: E731
        meter = CpuMeter({"bench client": lambda: [psutil.Process()], "server": tree})
        client = TusClient(f"http://127.0.0.1:{port}/files")
        meter.start()
        with RssPeak(tree) as rss:
            for _ in range(self.plan.runs):
                variant.seconds.append(
                    _tuspy_upload(client, self.file, chunk, {"filename": "bench.mp4"})
                )
        variant.cpu = meter.stop()
        variant.peak_rss = rss.peak
        return variant

    # --- verification ---------------------------------------------------------------------
    def verify_all(self) -> float:
        """Complete, sha256-check and attach every upload of ours, in this process: the
        work of the Celery task, timed without a worker's start-up (and without another
        benchmark's worker on the same Redis picking the messages up)."""
        from media.models import Upload, UploadStatus
        from media.services import upload_finish

        began = time.perf_counter()
        deadline = time.monotonic() + 600
        pending = set(self.uploads)
        while pending and time.monotonic() < deadline:
            for upload_id in sorted(pending):
                upload_finish(uuid.UUID(upload_id))
            attached = Upload.objects.filter(pk__in=pending, status=UploadStatus.ATTACHED)
            pending -= {str(pk) for pk in attached.values_list("pk", flat=True)}
        if pending:
            raise TimeoutError(f"uploads never attached: {sorted(pending)}")
        return time.perf_counter() - began

    # --- resumption -----------------------------------------------------------------------
    def resumption(self) -> Resumption:
        result = Resumption()
        rng = random.Random(self.plan.seed)
        for _ in range(KILL_POINTS):
            cut = rng.randrange(PART, self.plan.size)
            result.client_exited.append(cut - self._cut_client_at(cut, on_cut=_exit))
        for _ in range(KILL_POINTS):
            cut = rng.randrange(PART, self.plan.size)
            result.client_reset.append(cut - self._cut_client_at(cut, on_cut=_reset))
        for _ in range(KILL_POINTS):
            cut = rng.randrange(PART, self.plan.size)
            result.server_killed.append(cut - self._kill_server_at(cut))
        return result

    def _cut_client_at(self, cut: int, on_cut: Callable[[socket.socket], None]) -> int:
        """Upload in 8 MiB PATCHes; at byte `cut` the client dies. Returns the offset the
        server then reports."""
        attachment_id = self._create()
        chunk_start = self._send_until(attachment_id, cut, on_cut=on_cut)
        self._wait_answered(attachment_id, patches=chunk_start // PART + 1)
        return self._offset(attachment_id)

    def _kill_server_at(self, cut: int) -> int:
        """Upload in 8 MiB PATCHes; at byte `cut` the whole web server is SIGKILLed, then
        started again. Returns the offset the new server reports."""
        attachment_id = self._create()
        self._send_until(attachment_id, cut, on_cut=lambda sock: self.kill_web())
        self.start_web()
        return self._offset(attachment_id)

    def _create(self) -> str:
        attachment_id = str(uuid.uuid4())
        response = requests.post(
            self.endpoint,
            headers={
                **self._headers(),
                "Upload-Length": str(self.plan.size),
                "Upload-Metadata": _encode(self.metadata(attachment_id)),
            },
            timeout=30,
        )
        response.raise_for_status()
        return attachment_id

    def _send_until(
        self, attachment_id: str, cut: int, on_cut: Callable[[socket.socket], None]
    ) -> int:
        """PATCH the file chunk by chunk; the chunk holding `cut` is cut off there."""
        with self.file.open("rb") as source:
            offset = 0
            while True:
                data = source.read(PART)
                end = offset + len(data)
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=60)
                sock.sendall(_patch_head(attachment_id, offset, len(data), self.token))
                if end <= cut:
                    sock.sendall(data)
                    status = _status(sock)
                    sock.close()
                    if status != 204:
                        raise RuntimeError(f"PATCH answered {status}")
                    offset = end
                    continue
                sock.sendall(data[: cut - offset])
                on_cut(sock)
                sock.close()
                return offset

    def _wait_answered(self, attachment_id: str, patches: int) -> None:
        """Until gunicorn has answered the cut PATCH (it logs a request once answered)."""
        assert self.web is not None
        needle = f"PATCH /api/v1/uploads/{attachment_id} "
        deadline = time.monotonic() + 60
        while self.web.log.read_text(errors="replace").count(needle) < patches:
            if time.monotonic() > deadline:
                raise TimeoutError("the cut PATCH was never answered")
            time.sleep(0.05)

    def _offset(self, attachment_id: str) -> int:
        """The server's offset; the upload is then terminated (it was only a probe)."""
        response = requests.head(
            f"{self.endpoint}{attachment_id}", headers=self._headers(), timeout=30
        )
        response.raise_for_status()
        offset = int(response.headers["Upload-Offset"])
        requests.delete(f"{self.endpoint}{attachment_id}", headers=self._headers(), timeout=30)
        return offset

    def _headers(self) -> dict[str, str]:
        return {"Tus-Resumable": "1.0.0", "Authorization": f"Token {self.token}"}


def _tuspy_upload(client: TusClient, file: Path, chunk: int, metadata: dict[str, str]) -> float:
    began = time.perf_counter()
    client.uploader(file_path=str(file), chunk_size=chunk, metadata=metadata).upload()
    return time.perf_counter() - began


def _answers(port: int, path: str) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
        connection.request("GET", path)
        return connection.getresponse().status < 500
    except OSError:
        return False


def _encode(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def _patch_head(attachment_id: str, offset: int, length: int, token: str) -> bytes:
    return (
        f"PATCH /api/v1/uploads/{attachment_id} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Token {token}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {length}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()


def _status(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        piece = sock.recv(4096)
        if not piece:
            break
        answer += piece
    return int(answer.split(b" ", 2)[1])


def _exit(sock: socket.socket) -> None:
    """A killed client process: the kernel still delivers what it had accepted, then FIN."""


def _reset(sock: socket.socket) -> None:
    """Close as a phone losing its network does at worst: a reset, unsent bytes dropped."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


# ============================================================================================
# @tus/server
# ============================================================================================
TUS_NODE_SERVER = """
import http from "node:http";
import { Server } from "@tus/server";
import { S3Store } from "@tus/s3-store";

const env = process.env;
const datastore = new S3Store({
  partSize: Number(env.PART_SIZE),
  s3ClientConfig: {
    bucket: env.S3_BUCKET,
    region: env.S3_REGION || "us-east-1",
    endpoint: env.S3_ENDPOINT_URL,
    forcePathStyle: true,
    credentials: { accessKeyId: env.AWS_ACCESS_KEY_ID, secretAccessKey: env.AWS_SECRET_ACCESS_KEY },
  },
});
const server = new Server({ path: "/files", datastore });
http.createServer((req, res) => server.handle(req, res)).listen(Number(env.PORT), "127.0.0.1");
"""


def start_tus_node(children: Children) -> tuple[Child, int] | str:
    """@tus/server on a free port, or why it could not run."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        return "node/npm not installed"
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    if not (NODE_DIR / "node_modules" / "@tus" / "s3-store").exists():
        say("installing @tus/server and @tus/s3-store with npm")
        installed = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--silent", *TUS_NODE_PACKAGES],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if installed.returncode != 0:
            return f"npm install failed: {installed.stderr.strip()[-300:]}"
    (NODE_DIR / "server.mjs").write_text(TUS_NODE_SERVER)
    port = free_port()
    node = children.start(
        "tus-node",
        ["node", str(NODE_DIR / "server.mjs")],
        {"PORT": str(port), "PART_SIZE": str(PART)},
    )
    wait_for(lambda: _answers(port, "/files"), "@tus/server", node)
    return node, port


# ============================================================================================
# Entry point
# ============================================================================================
def run(report: dict[str, object]) -> None:
    plan = Plan.from_env()
    _setup_django()
    shutil.rmtree(LOGS / "logs", ignore_errors=True)
    (LOGS / "logs").mkdir(parents=True)
    scratch = Path(tempfile.mkdtemp(prefix="fieldsync-bench-uploads-"))
    try:
        file = scratch / "bench.bin"
        with file.open("wb") as out:
            for _ in range(plan.size // MiB):
                out.write(os.urandom(MiB))
        with Children(dict(os.environ), LOGS / "logs") as children:
            bench = Bench(plan, children, file)
            bench.setup()
            bench.start_web()
            pairs = bench.pairs()
            say(f"ours / raw boto3, 8 MiB: median {pairs.ratio:.0%} ({pairs.spread()})")
            ours = [pairs.ours, *(bench.ours(chunk) for chunk in CHUNKS[1:])]
            for variant in ours:
                say(f"{variant.name}: {variant.mib_s(plan.size):.0f} MiB/s")
            verify_seconds = bench.verify_all()
            say(f"verified {len(bench.uploads)} uploads in {verify_seconds:.1f} s")
            resumption = bench.resumption()
            say(f"re-sent after kills: {resumption}")
            bench.kill_web()
            peers: list[Variant] | str = "not run"
            started = start_tus_node(children)
            if isinstance(started, str):
                peers = started
                say(f"@tus/server skipped: {started}")
            else:
                peers = [bench.peer(chunk, *started) for chunk in CHUNKS]
                for variant in peers:
                    say(f"{variant.name}: {variant.mib_s(plan.size):.0f} MiB/s")
            report["uploads"] = render(
                plan, pairs, ours, peers, verify_seconds, len(bench.uploads), resumption
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        say(f"server logs in {(LOGS / 'logs').relative_to(ROOT)}/")


def _setup_django() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "syncserver.settings")
    say("migrating the bench database")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True
    )
    import logging

    import django

    django.setup()
    logging.getLogger("fieldsync").setLevel(logging.WARNING)


# ============================================================================================
# Report
# ============================================================================================
def render(
    plan: Plan,
    pairs: Pairs,
    ours: list[Variant],
    peers: list[Variant] | str,
    verify_seconds: float,
    verified: int,
    resumption: Resumption,
) -> str:
    size = plan.size
    raw = pairs.raw
    floor = raw.mib_s(size)
    rows = [
        "| upload of the file | MiB/s (median) | vs raw boto3 | vs @tus/server | target | met? "
        "| peak server RSS |",
        "|---|---:|---:|---:|---|---|---:|",
        f"| {raw.name} | {floor:.0f} | 100% | | (floor) | | |",
    ]
    for index, variant in enumerate(ours):
        peer = peers[index] if isinstance(peers, list) else None
        ratio = variant.mib_s(size) / floor
        vs_raw = f"{ratio:.0%}"
        vs_peer = f"{variant.mib_s(size) / peer.mib_s(size):.0%}" if peer else "n/a"
        targets = []
        met = []
        if index == 0:
            ratio = pairs.ratio
            vs_raw = f"{ratio:.0%} ({pairs.spread()})"
            targets.append(f"≥ {RAW_TARGET:.0%} of raw")
            met.append(ratio >= RAW_TARGET)
        if peer:
            targets.append("ahead of @tus/server")
            met.append(variant.mib_s(size) > peer.mib_s(size))
        rows.append(
            f"| {variant.name} | {variant.mib_s(size):.0f} | {vs_raw} | {vs_peer} "
            f"| {', '.join(targets)} | {_met(all(met)) if met else ''} "
            f"| {variant.peak_rss / MiB:.0f} MiB |"
        )
    if isinstance(peers, list):
        for variant in peers:
            rows.append(
                f"| {variant.name} | {variant.mib_s(size):.0f} "
                f"| {variant.mib_s(size) / floor:.0%} | 100% | | "
                f"| {variant.peak_rss / MiB:.0f} MiB |"
            )
    cpu = [
        "| variant | client CPU s/GiB | server CPU s/GiB | machine busy |",
        "|---|---:|---:|---:|",
    ]
    for variant in [raw, *ours, *(peers if isinstance(peers, list) else [])]:
        if variant.cpu is None:
            continue
        gib = size * len(variant.seconds) / (1024 * MiB)
        by = variant.cpu.by_group
        cpu.append(
            f"| {variant.name} | {by.get('bench client', 0) / gib:.1f} "
            f"| {by.get('server', 0) / gib:.1f} "
            f"| {variant.cpu.machine / variant.cpu.wall / (os.cpu_count() or 1):.0%} |"
        )
    worst_exited = max(resumption.client_exited)
    worst_reset = max(resumption.client_reset)
    worst_server = max(resumption.server_killed)
    resume = [
        "| kill at a random point (8 MiB chunks) | bytes re-sent, each kill | worst | target "
        "| met? |",
        "|---|---|---:|---|---|",
        f"| client process killed (its kernel closes the connection) "
        f"| {_numbers(resumption.client_exited)} "
        f"| {worst_exited:,} | ≤ one part ({PART:,}) | {_met(worst_exited <= PART)} |",
        f"| client's connection reset (network lost; unsent socket buffers dropped) "
        f"| {_numbers(resumption.client_reset)} "
        f"| {worst_reset:,} | ≤ one part ({PART:,}) | {_met(worst_reset <= PART)} |",
        f"| web server SIGKILLed, restarted | {_numbers(resumption.server_killed)} "
        f"| {worst_server:,} | ≤ one part ({PART:,}) | {_met(worst_server <= PART)} |",
    ]
    peer_note = (
        "@tus/server 2.4 with @tus/s3-store 2.0 (Node "
        f"{_node_version()}), part size 8 MiB, same tuspy client."
        if isinstance(peers, list)
        else f"@tus/server was not run: {peers}."
    )
    return "\n".join(
        [
            f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {os.cpu_count()} cores: one file of "
            f"{size // MiB} MiB, each variant {plan.runs} times (median), one at a time, against "
            "the same SeaweedFS. Client, servers and SeaweedFS share the machine. The floor and "
            f"ours with 8 MiB chunks ran in {plan.runs} interleaved pairs: their row's ratio is "
            "the median of the pairs' ratios, lowest to highest beside it.",
            "",
            *rows,
            "",
            "- Ours is timed from the POST to the answer of the last PATCH: every byte is then "
            "durable (parts, and the tail as segment objects) and the upload is queued for "
            "verification. The raw floor uses our server's boto3 settings from this process "
            "and includes CompleteMultipartUpload. " + peer_note,
            f"- Verification (the Celery task's work, run in the bench process): completing, "
            f"sha256-checking (streaming the object back) and attaching our {verified} uploads "
            f"took {verify_seconds:.1f} s ({size * verified / MiB / verify_seconds:.0f} MiB/s).",
            "",
            *resume,
            "",
            "CPU seconds per GiB uploaded:",
            "",
            *cpu,
        ]
    )


def _numbers(values: list[int]) -> str:
    return ", ".join(f"{value:,}" for value in values)


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        return "?"


def main() -> int:
    from bench.__main__ import DOC, DOC_HEAD, write_sections

    report: dict[str, object] = {}
    run(report)
    text = str(report["uploads"])
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(write_sections(DOC.read_text() if DOC.exists() else DOC_HEAD, {"uploads": text}))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
