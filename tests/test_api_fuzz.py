"""The API under a fuzzer built from its own OpenAPI document (schemathesis, in process
over WSGI, with a real token): no 5xx for anything a client can send, and every answer's
status, headers and body are the ones the document promises.

Bounded (a few dozen examples per operation) so it stays well under two minutes. Ops the
schema allows are still refused one by one by the server (scope, merge rules): the contract
answers them 200 with a per-op result, so "schema-valid data is accepted" and "invalid data
is a 4xx" are not checked, only what the contract says of every answer.
"""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from accounts.services import token_issue
from tests.fixtures import Phone

pytestmark = pytest.mark.django_db(transaction=True)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
def authorization(dispatcher: Phone) -> dict[str, str]:
    return {"Authorization": f"Token {token_issue(dispatcher.user)}"}


# Read once, at collection (the schema view touches no database).
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@schema.parametrize()
@settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    # One dispatcher (and token) for all of an operation's examples is what we want.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_every_answer_is_documented_and_none_is_a_server_error(
    case: Any, authorization: dict[str, str]
) -> None:
    case.call_and_validate(headers=authorization, checks=CHECKS)
