"""HTTP to the fieldsync server: one method per endpoint of the wire contract.

Failures come out as three kinds, because the app must treat them differently:
- `Unreachable` (no connection, reset, timeout) and `ServerBusy` (5xx, 423, 429): nothing is
  wrong with what the phone sent; try the same thing again later.
- `Refused` (another 4xx): the server looked at it and said no, with `{code, detail}`;
  trying again will not help. `SignedOut` (401) is the one a login fixes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from fieldsync_client.model import Json

TUS_VERSION = "1.0.0"
OFFSET_OCTET_STREAM = "application/offset+octet-stream"
DEFAULT_TIMEOUT = (5.0, 60.0)


class TransportError(Exception):
    """Try again later: the request may or may not have reached the server."""

    retry_after: float | None = None


class Unreachable(TransportError):
    pass


class ServerBusy(TransportError):
    def __init__(self, status: int, code: str, detail: str, retry_after: float | None) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.retry_after = retry_after


class Refused(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"HTTP {status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


class SignedOut(Refused):
    pass


class Api:
    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["User-Agent"] = "fieldsync-client/1"
        if token:
            self.session.headers["Authorization"] = f"Token {token}"

    def close(self) -> None:
        self.session.close()

    def url(self, path: str) -> str:
        return urljoin(self.base_url + "/", path.lstrip("/"))

    def call(
        self,
        method: str,
        path: str,
        *,
        ok: Sequence[int] = (200,),
        **kwargs: Any,
    ) -> requests.Response:
        """Send one request; answers outside `ok` become the exceptions above."""
        try:
            # No redirects: a captive portal's answer is not the server's.
            response = self.session.request(
                method, self.url(path), timeout=self.timeout, allow_redirects=False, **kwargs
            )
        except requests.RequestException as exc:
            # A dead keep-alive connection must not poison the next attempt.
            self.session.close()
            raise Unreachable(f"{type(exc).__name__}: {exc}") from exc
        if response.status_code in ok:
            return response
        code, detail = _error_of(response)
        if response.status_code == 401:
            raise SignedOut(401, code, detail)
        if 400 <= response.status_code < 500 and response.status_code not in (423, 429):
            raise Refused(response.status_code, code, detail)
        # 5xx, 423, 429, and anything a server of ours never answers here (a redirect, an
        # unexpected 2xx from something in between): try again later.
        raise ServerBusy(response.status_code, code, detail, _retry_after(response))

    # --- accounts and sync -----------------------------------------------------------------

    def token(self, username: str, password: str) -> str:
        response = self.call(
            "POST", "/api/v1/auth/token", json={"username": username, "password": password}
        )
        return str(_json(response)["token"])

    def push(self, device_id: str, ops: list[dict[str, Json]]) -> list[dict[str, Json]]:
        response = self.call("POST", "/api/v1/sync/push", json={"device_id": device_id, "ops": ops})
        results: list[dict[str, Json]] = _json(response)["results"]
        return results

    def pull(self, device_id: str, cursor: str | None, limit: int) -> dict[str, Json]:
        params: dict[str, Json] = {"device_id": device_id, "limit": limit}
        if cursor:
            params["cursor"] = cursor
        page: dict[str, Json] = _json(self.call("GET", "/api/v1/sync/pull", params=params))
        return page

    def op(self, op_id: str) -> dict[str, Json] | None:
        response = self.call("GET", f"/api/v1/sync/ops/{op_id}", ok=(200, 404))
        return None if response.status_code == 404 else dict(_json(response))

    def conflicts(self, status: str) -> list[dict[str, Json]]:
        response = self.call("GET", "/api/v1/conflicts", params={"status": status})
        results: list[dict[str, Json]] = _json(response)["results"]
        return results

    def resolve(self, conflict_id: str, choice: str, value: Json = None) -> dict[str, Json]:
        body: dict[str, Json] = {"choice": choice}
        if choice == "custom":
            body["value"] = value
        result: dict[str, Json] = _json(
            self.call("POST", f"/api/v1/conflicts/{conflict_id}/resolve", json=body)
        )
        return result

    def attachment(self, attachment_id: str) -> dict[str, Json] | None:
        response = self.call("GET", f"/api/v1/attachments/{attachment_id}", ok=(200, 404))
        return None if response.status_code == 404 else dict(_json(response))

    # --- tus 1.0 ---------------------------------------------------------------------------

    def tus_create(self, length: int, metadata: Mapping[str, str]) -> tuple[str, int]:
        """Create (or find again: same attachment_id, same upload) → (path, offset)."""
        encoded = ",".join(
            f"{key} {base64.b64encode(value.encode()).decode()}" for key, value in metadata.items()
        )
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Length": str(length),
            "Upload-Metadata": encoded,
        }
        response = self.call("POST", "/api/v1/uploads/", ok=(201,), headers=headers)
        # Only the path is kept: the phone may reach the same server under another address
        # tomorrow (a new proxy, wifi instead of cellular), and the upload is the same.
        path = urlsplit(header(response, "Location")).path
        return path, int(response.headers.get("Upload-Offset", "0"))

    def tus_offset(self, path: str) -> int:
        response = self.call("HEAD", path, ok=(200,), headers={"Tus-Resumable": TUS_VERSION})
        return int(header(response, "Upload-Offset"))

    def tus_patch(self, path: str, offset: int, chunk: bytes, checksum: bool) -> requests.Response:
        """Send one chunk. 204 (stored), 409 (offset moved) and 460 (checksum) come back to
        the caller, who knows what each means for the upload."""
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Offset": str(offset),
            "Content-Type": OFFSET_OCTET_STREAM,
        }
        if checksum:
            digest = base64.b64encode(hashlib.sha256(chunk).digest()).decode()
            headers["Upload-Checksum"] = f"sha256 {digest}"
        return self.call("PATCH", path, ok=(204, 409, 460), headers=headers, data=chunk)


def _json(response: requests.Response) -> Any:
    """The body as JSON; a body that is not (a proxy's page) means "not the server": retry."""
    try:
        return response.json()
    except ValueError as exc:
        raise Unreachable(f"HTTP {response.status_code} without a JSON body") from exc


def header(response: requests.Response, name: str) -> str:
    value = response.headers.get(name)
    if value is None:
        raise Unreachable(f"HTTP {response.status_code} without {name}")
    return value


def _error_of(response: requests.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return f"http_{response.status_code}", response.text[:200] or response.reason or ""
    if isinstance(body, dict):
        return str(body.get("code", f"http_{response.status_code}")), str(body.get("detail", ""))
    return f"http_{response.status_code}", str(body)[:200]


def _retry_after(response: requests.Response) -> float | None:
    try:
        return float(response.headers["Retry-After"])
    except (KeyError, ValueError):
        return None
