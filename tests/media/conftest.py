"""Fixtures for uploads: a tus client over Django's test client, a work order to attach to,
a real gunicorn serving the test database, and tus-js-client from npm."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil  # type: ignore[import-untyped]
import pytest
import requests
from django.conf import settings
from django.db import connection
from rest_framework.test import APIClient

from accounts.services import token_issue
from devstack.ensure_bucket import S3Settings
from tests.conftest import ROOT, _database_url
from tests.fixtures import Phone, apply_now
from tests.helpers import wait_until

TUS = {"Tus-Resumable": "1.0.0"}
MiB = 1024 * 1024
# Small parts keep test files small while still spanning several parts.
TEST_PART_SIZE = 5 * MiB


def encode_metadata(values: dict[str, str]) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking test bytes."""
    block = hashlib.sha256(f"{seed}".encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class TusClient:
    """A tus client over Django's in-process test client (one phone's token)."""

    client: APIClient

    def options(self) -> Any:
        return self.client.options("/api/v1/uploads/")

    def create(
        self,
        work_order_id: str,
        length: int,
        *,
        attachment_id: str | None = None,
        filename: str = "photo.jpg",
        content_type: str = "image/jpeg",
        kind: str = "photo",
        extra: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        meta = {
            "attachment_id": attachment_id or str(uuid.uuid4()),
            "work_order_id": work_order_id,
            "filename": filename,
            "content_type": content_type,
            "kind": kind,
            **(extra or {}),
        }
        sent = {**TUS, "Upload-Length": str(length), "Upload-Metadata": encode_metadata(meta)}
        if body is None:
            return self.client.post("/api/v1/uploads/", headers={**sent, **(headers or {})})
        return raw_request(self.client)(
            "POST",
            "/api/v1/uploads/",
            body,
            content_type="application/offset+octet-stream",
            headers={**sent, **(headers or {})},
        )

    def head(self, url: str) -> Any:
        return self.client.head(url, headers=TUS)

    def patch(
        self, url: str, offset: int, data: bytes, headers: dict[str, str] | None = None
    ) -> Any:
        return raw_request(self.client)(
            "PATCH",
            url,
            data,
            content_type="application/offset+octet-stream",
            headers={**TUS, "Upload-Offset": str(offset), **(headers or {})},
        )

    def delete(self, url: str) -> Any:
        return self.client.delete(url, headers=TUS)

    def status(self, attachment_id: str) -> dict[str, Any]:
        response = self.client.get(f"/api/v1/attachments/{attachment_id}")
        assert response.status_code == 200, response.content
        return dict(response.json())

    def upload(self, work_order_id: str, data: bytes, chunk: int = MiB, **create: Any) -> str:
        """Create and send the whole file in chunks; returns the upload's path."""
        created = self.create(work_order_id, len(data), **create)
        assert created.status_code == 201, created.content
        url = path_of(created["Location"])
        offset = int(created["Upload-Offset"])
        while offset < len(data):
            response = self.patch(url, offset, data[offset : offset + chunk])
            assert response.status_code == 204, response.content
            offset = int(response["Upload-Offset"])
        return url


def raw_request(client: APIClient) -> Callable[..., Any]:
    # Django's generic() takes bytes bodies; the stubs only admit str.
    return cast(Callable[..., Any], client.generic)


def path_of(location: str) -> str:
    return "/" + location.split("/", 3)[3]


def attachment_id_of(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[1]


@pytest.fixture(autouse=True)
def _small_parts(settings: Any) -> None:
    settings.UPLOADS_PART_SIZE = TEST_PART_SIZE


@pytest.fixture
def tus_for() -> Callable[[Phone], TusClient]:
    return lambda phone: TusClient(phone.client)


@pytest.fixture
def work_order(dispatcher: Phone, tech: Phone) -> str:
    """A work order of the dispatcher's organisation, assigned to ``tech``."""
    wo = str(uuid.uuid4())
    dispatcher.push(
        dispatcher.op(
            "work_order", wo, "create", 0, title="Storm damage", assigned_to=tech.user.username
        )
    )
    apply_now()
    return wo


# ============================================================================================
# A real gunicorn on the test database
# ============================================================================================
@dataclass
class WebServer:
    """``gunicorn -c gunicorn.conf.py`` as `make run` starts it, on a free port."""

    env: dict[str, str]
    log: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.port = _free_port()
        env = {**self.env, **self.extra_env, "PORT": str(self.port)}
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"]
        command += ["syncserver.wsgi:application"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._answers, timeout=60, interval=0.1, message="gunicorn never answered")

    def kill(self) -> None:
        """SIGKILL the master and its workers at once, as a crash of the machine would."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def worker_pids(self) -> list[int]:
        assert self.process is not None
        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def rss(self) -> int:
        return sum(psutil.Process(pid).memory_info().rss for pid in self.worker_pids())

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"gunicorn exited; its log ends:\n{self.logs()[-3000:]}")
        try:
            return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def web_server(django_db_setup: None, s3_server: S3Settings) -> Iterator[WebServer]:
    log_fd, log_name = tempfile.mkstemp(prefix="fieldsync-web-", suffix=".log")
    os.close(log_fd)
    env = {
        **os.environ,
        "DATABASE_URL": _database_url(connection.settings_dict),
        "REDIS_URL": settings.REDIS_URL,
        "UPLOADS_PART_SIZE": str(TEST_PART_SIZE),
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server = WebServer(env, Path(log_name))
    try:
        server.start()
        yield server
    finally:
        server.kill()
        Path(log_name).unlink(missing_ok=True)


@pytest.fixture
def web(web_server: WebServer) -> Iterator[WebServer]:
    """The session's web server, running (a test may have killed it)."""
    if web_server.process is None:
        web_server.start()
    yield web_server


@pytest.fixture
def token_for() -> Callable[[Phone], str]:
    return lambda phone: token_issue(phone.user)


# ============================================================================================
# tus-js-client (node)
# ============================================================================================
# tus-js-client and everything it pulls in, pinned with integrity hashes by package-lock.json.
TUS_JS_PACKAGE = Path(__file__).with_name("js")


@pytest.fixture(scope="session")
def tus_js() -> Iterator[Path]:
    """A directory where ``node upload.mjs`` can import tus-js-client (installed by npm ci)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed")
    workdir = Path(tempfile.mkdtemp(prefix="fieldsync-tusjs-"))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copy(TUS_JS_PACKAGE / name, workdir / name)
        installed = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--silent"],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if installed.returncode != 0:
            pytest.skip(f"npm ci could not install tus-js-client: {installed.stderr[-500:]}")
        shutil.copy(Path(__file__).with_name("tus_upload.mjs"), workdir / "upload.mjs")
        yield workdir
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def upload_row_updates(
    columns: list[tuple[str, str]], when: str = "TRUE"
) -> Iterator[Callable[[], list[tuple[Any, ...]]]]:
    """Every update of an upload row (``when`` holds), as the new values of these columns
    (name, SQL type), recorded by a trigger: a reader of them in the order made."""
    names = ", ".join(f'"{name}"' for name, _ in columns)
    with connection.cursor() as cursor:
        cursor.execute(
            f"""
            CREATE TABLE test_upload_updates (id bigserial,
                {", ".join(f'"{name}" {kind}' for name, kind in columns)});
            CREATE FUNCTION test_record_upload_update() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO test_upload_updates ({names})
                VALUES ({", ".join(f'NEW."{name}"' for name, _ in columns)});
                RETURN NEW;
            END $$;
            CREATE TRIGGER test_record_upload_update AFTER UPDATE ON media_upload
                FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION test_record_upload_update();
            """
        )

    def updates() -> list[tuple[Any, ...]]:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT {names} FROM test_upload_updates ORDER BY id")
            return list(cursor.fetchall())

    try:
        yield updates
    finally:
        with connection.cursor() as cursor:
            cursor.execute(
                "DROP TRIGGER test_record_upload_update ON media_upload;"
                "DROP FUNCTION test_record_upload_update();"
                "DROP TABLE test_upload_updates;"
            )
