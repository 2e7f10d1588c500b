"""The reference client against the real server: gunicorn on the test database, the real
Celery worker and SeaweedFS (fixtures shared with the upload tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fieldsync_client import Backoff, Client, Settings, UploadPolicy
from tests.fixtures import Phone
from tests.media.conftest import MiB, payload, web, web_server  # noqa: F401 - fixtures

PASSWORD = "pw-12345678"  # what tests.fixtures.make_user gives everyone


def quick_settings(**upload: Any) -> Settings:
    """Phone behaviour with test-sized waits: the same rules, shorter clocks."""
    return Settings(
        sync_interval=1.0,
        outcome_poll=0.2,
        backoff=Backoff(base=0.5, cap=2.0),
        upload=UploadPolicy(chunk_size=upload.pop("chunk_size", MiB), verify_poll=0.2, **upload),
    )


@pytest.fixture
def phone_for(tmp_path: Path, web: Any) -> Iterator[Callable[..., Client]]:  # noqa: F811
    """A reference client signed in as `phone`'s user, on the real gunicorn."""
    made: list[Client] = []

    def make(phone: Phone, name: str = "phone", **upload: Any) -> Client:
        client = Client.setup(
            tmp_path / name,
            web.url,
            phone.user.username,
            PASSWORD,
            settings=quick_settings(**upload),
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def write_file(path: Path, size: int, seed: int = 0) -> Path:
    path.write_bytes(payload(size, seed))
    return path
