"""Production defaults: the settings refuse to start without what a deployment must choose,
pass Django's deployment checks when configured, and `make run` never seeds demo users with
well-known passwords into a database the environment names."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from devstack.__main__ import should_seed
from devstack.services import Service

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "x7Rk2vQ9pLm4Zt8Wc1Yb6Nd3Hf5Js0Ga-Ue_Ki2Oo9Pp7Ll3Mm1Nn5Bb8Vv4Cc6",
    "ALLOWED_HOSTS": "fieldsync.example.com",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "SECURE_SSL_REDIRECT": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_HSTS_SECONDS": "31536000",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "true",
    "SECURE_HSTS_PRELOAD": "true",
    "CSRF_TRUSTED_ORIGINS": "https://fieldsync.example.com",
}


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "ALLOWED_HOSTS"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_configured_deployment_passes_djangos_deploy_checks() -> None:
    result = _manage(PRODUCTION, "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr


def test_without_a_secret_key_or_hosts_the_server_refuses_to_start() -> None:
    for missing in ("SECRET_KEY", "ALLOWED_HOSTS"):
        env = {k: v for k, v in PRODUCTION.items() if k != missing}
        result = _manage(env, "check")
        assert result.returncode != 0
        assert f"{missing} is not set" in result.stderr


def test_make_run_seeds_demo_users_only_into_its_own_database() -> None:
    embedded = Service("postgres", "postgres://127.0.0.1:1/x", stop=lambda: None)
    redis = Service("redis", "redis://127.0.0.1:1", stop=lambda: None)
    assert should_seed([embedded, redis], {})
    assert not should_seed([redis], {"DATABASE_URL": "postgres://db/fieldsync"})
    assert should_seed([redis], {"DATABASE_URL": "postgres://db/fieldsync", "SEED_DEMO": "1"})
