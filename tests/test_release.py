"""Releases: one version everywhere, the contract kept inside the repository, and docs that
work offline under a content security policy."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from django.conf import settings
from rest_framework.test import APIClient

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM_CONTRACT = ROOT.parent / "shared" / "CONTRACT.md"


def test_code_schema_and_changelog_agree_on_the_version() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert version == settings.VERSION
    assert settings.SPECTACULAR_SETTINGS["VERSION"] == version
    assert re.search(rf"^## {re.escape(version)} ", (ROOT / "CHANGELOG.md").read_text(), re.M)
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f'org.opencontainers.image.version="{version}"' in dockerfile
    assert (
        f"image: fieldsync:${{FIELDSYNC_TAG:-{version}}}"
        in (ROOT / "docker-compose.yml").read_text()
    )


def test_the_readme_links_the_contract_inside_the_repository() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "(docs/CONTRACT.md)" in readme
    assert "../shared" not in readme


@pytest.mark.skipif(not UPSTREAM_CONTRACT.exists(), reason="no upstream contract beside the repo")
def test_the_contract_copy_is_identical_to_the_upstream_one() -> None:
    assert (ROOT / "docs" / "CONTRACT.md").read_bytes() == UPSTREAM_CONTRACT.read_bytes()


def test_the_api_docs_need_nothing_from_elsewhere() -> None:
    client = APIClient()
    for path in ("/api/docs/", "/api/redoc/"):
        page = client.get(path)
        assert page.status_code == 200
        html = page.content.decode()
        assert "drf_spectacular_sidecar" in html, "served from the package"
        assert "cdn" not in html.lower() and "https://" not in html
        assert "default-src 'self'" in page["Content-Security-Policy"]
    script = client.get("/api/docs/", {"script": ""})
    assert script.status_code == 200
    assert "SwaggerUIBundle" in script.content.decode()
