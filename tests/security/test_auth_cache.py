"""Authentication is served from a per-process cache (accounts.authcache), and revocation
still holds at once: in this process, in another process, and when Redis is away."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts.authentication import _tokens
from accounts.models import ApiToken, User
from accounts.services import field_user_create, token_issue
from tests.conftest import _database_url

pytestmark = pytest.mark.django_db(transaction=True)

PULL = "/api/v1/sync/pull"
DEVICE = "8d0a3c0e-54b0-4a46-9d4e-7f1e1c1e0b11"


def _client(user: User) -> tuple[APIClient, ApiToken]:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user)}")
    return client, ApiToken.objects.get(user=user)


def _pull(client: APIClient) -> int:
    return int(client.get(PULL, {"device_id": DEVICE}).status_code)


@pytest.fixture
def technician() -> User:
    return field_user_create("acme", "technician", "cached-tech", "pw-12345678")


def test_a_known_token_costs_no_query(technician: User) -> None:
    # Given: a token that has authenticated once in this process,
    client, _ = _client(technician)
    assert _pull(client) == 200

    # When: it authenticates again,
    with CaptureQueriesContext(connection) as queries:
        assert _pull(client) == 200

    # Then: nothing about tokens or users was read from Postgres.
    read = " ".join(q["sql"] for q in queries.captured_queries)
    assert "accounts_apitoken" not in read and "accounts_user" not in read


def test_a_token_revoked_by_another_process_is_refused_by_the_next_request(
    technician: User,
) -> None:
    # Given: a token this process has cached,
    client, token = _client(technician)
    assert _pull(client) == 200

    # When: another process (as a dispatcher's workspace on another host) revokes it,
    script = (
        "import django; django.setup(); from accounts.services import token_revoke; "
        f"token_revoke({token.pk})"
    )
    env = {**os.environ, "DATABASE_URL": _database_url(connection.settings_dict)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)

    # Then: the very next request here is refused.
    assert _pull(client) == 401


def test_a_user_deactivated_in_the_workspace_is_refused_by_the_next_request(
    technician: User,
) -> None:
    # Given: a cached token,
    client, _ = _client(technician)
    assert _pull(client) == 200

    # When: the user is deactivated with a plain save (as the workspace's form does),
    technician.is_active = False
    technician.save()

    # Then: the next request is refused.
    assert _pull(client) == 401


def test_without_redis_every_request_reads_postgres_and_revocation_still_holds(
    technician: User,
) -> None:
    # Given: Redis does not answer (nothing may then be trusted from the cache),
    client, token = _client(technician)
    assert _pull(client) == 200
    with override_settings(REDIS_URL="redis://127.0.0.1:1/15"):
        # When: requests come in, and the token is revoked meanwhile,
        with CaptureQueriesContext(connection) as queries:
            assert _pull(client) == 200
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=token.created_at)

        # Then: each request read the token from Postgres, and the revocation holds at once.
        assert any("accounts_apitoken" in q["sql"] for q in queries.captured_queries)
        assert _pull(client) == 401


def test_a_role_change_takes_effect_at_once(technician: User) -> None:
    # Given: a technician whose token is cached,
    client, _ = _client(technician)
    assert _pull(client) == 200

    # When: a dispatcher makes them a dispatcher (a plain save, as the workspace does),
    technician.role = "dispatcher"
    technician.save()

    # Then: the next request already runs with the new role (a dispatcher's scope).
    assert _pull(client) == 200
    cached = _tokens.get(ApiToken.objects.get(user=technician).key_hash, lambda: None)
    assert cached is not None and cached.user.role == "dispatcher"
