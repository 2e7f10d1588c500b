"""Fixed-window counters in Redis, shared by every process and host, so a limit holds
however many web processes answer. When Redis does not answer, limits are not enforced
(and that is logged): Redis must never stop a phone from syncing or a dispatcher from
signing in."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis

from common.logging import log_warning
from common.shared_redis import shared_redis as _redis


@dataclass(frozen=True)
class Limit:
    """At most ``count`` hits per subject in a window of ``seconds`` from its first hit."""

    name: str
    count: int
    seconds: int

    def _key(self, subject: str) -> str:
        # Hashed: a subject (a username, an address) may hold any character.
        digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:32]
        return f"fieldsync:limit:{self.name}:{digest}"

    def blocked(self, subject: str) -> int | None:
        """Seconds until the subject may go on, when it is over the limit; else None."""
        try:
            pipe = _redis().pipeline()
            pipe.get(self._key(subject))
            pipe.ttl(self._key(subject))
            raw, ttl = pipe.execute()
        except redis.RedisError as exc:
            log_warning("limit.unavailable", limit=self.name, error=repr(exc))
            return None
        return max(int(ttl), 1) if raw is not None and int(raw) >= self.count else None

    def hit(self, subject: str) -> int | None:
        """Count one hit; seconds to wait when this hit went over the limit, else None."""
        key = self._key(subject)
        try:
            pipe = _redis().pipeline()
            pipe.set(key, 0, ex=self.seconds, nx=True)
            pipe.incr(key)
            pipe.ttl(key)
            _, count, ttl = pipe.execute()
        except redis.RedisError as exc:
            log_warning("limit.unavailable", limit=self.name, error=repr(exc))
            return None
        return max(int(ttl), 1) if int(count) > self.count else None

    def clear(self, subject: str) -> None:
        try:
            _redis().delete(self._key(subject))
        except redis.RedisError as exc:
            log_warning("limit.unavailable", limit=self.name, error=repr(exc))
