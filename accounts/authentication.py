"""Token authentication against hashed keys (``Authorization: Token <key>``)."""

from __future__ import annotations

import hashlib
import secrets

from django.utils import timezone
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from accounts.authcache import GenerationCache
from accounts.exceptions import AccountError, Refusal
from accounts.models import ApiToken, User

# Token rows (with user and organisation) by key hash; see ``accounts.authcache``.
_tokens: GenerationCache[ApiToken] = GenerationCache()


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return secrets.token_hex(20)


class ApiTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Token"

    def authenticate(self, request: Request) -> tuple[User, ApiToken] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.")
        try:
            key = header[1].decode()
        except UnicodeError as exc:
            raise exceptions.AuthenticationFailed("Malformed token.") from exc
        key_hash = hash_key(key)
        token = _tokens.get(key_hash, lambda: _load(key_hash))
        if token is None or not token.user.is_active:
            raise exceptions.AuthenticationFailed("Invalid or revoked token.")
        if token.user.organization_id is None:
            # A platform operator's account: it works in the workspace, never as a field user.
            raise AccountError(
                "no_organization", "this account belongs to no organisation", Refusal.FORBIDDEN
            )
        touch_token(token)
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return self.keyword


def _load(key_hash: str) -> ApiToken | None:
    return (
        ApiToken.objects.select_related("user", "user__organization")
        .filter(key_hash=key_hash, revoked_at__isnull=True)
        .first()
    )


def touch_token(token: ApiToken) -> None:
    """Record use at most once a minute (per process), so authentication writes nothing on
    the hot path."""
    now = timezone.now()
    if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
        token.last_used_at = now
