"""Tokens seen recently, kept in each web process so that authenticating a request costs no
query, while a revocation still holds at once in every process and on every host.

Every entry remembers the *generation* it was loaded under. The generation is a value in
Redis that changes whenever anything authentication depends on changes: a token revoked, a
device deactivated, a user, token, device or organisation edited (``changed``, called after
the change commits). Every request reads it (one Redis GET, about a tenth of the CPU of the
query it saves) and reloads an entry of another generation, so a revoked token is refused by
the very next request anywhere.

When Redis does not answer, nothing is trusted from the cache: every request reads Postgres,
as if there were none. Entries also expire after ``MAX_AGE_SECONDS``: the bound on staleness
should Redis lose a generation change (a change whose ``changed`` call itself failed, which
is logged as an error).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import redis
from django.db import transaction

from common.logging import log_error, log_warning
from common.shared_redis import shared_redis

GENERATION_KEY = "fieldsync:auth:generation"
MAX_ENTRIES = 20_000
MAX_AGE_SECONDS = 60.0

T = TypeVar("T")


def generation() -> str | None:
    """The current generation, or None when Redis cannot say (then trust no entry)."""
    try:
        client = shared_redis()
        value = client.get(GENERATION_KEY)
        if value is None:  # a new or flushed Redis: start a generation nobody has cached
            client.set(GENERATION_KEY, uuid.uuid4().hex, nx=True)
            value = client.get(GENERATION_KEY)
    except redis.RedisError as exc:
        log_warning("auth.cache_unavailable", error=repr(exc))
        return None
    return value.decode() if isinstance(value, bytes) else None


def changed() -> None:
    """Something authentication depends on changed: every process reloads what it cached.
    Call after the change commits (``changed_after_commit``)."""
    try:
        shared_redis().set(GENERATION_KEY, uuid.uuid4().hex)
    except redis.RedisError as exc:
        # Entries expire on their own after MAX_AGE_SECONDS; until then a process that
        # reaches Redis may still trust what it cached.
        log_error("auth.generation_not_changed", error=repr(exc))


def changed_after_commit() -> None:
    transaction.on_commit(changed)


class GenerationCache(Generic[T]):
    """A bounded, thread-safe map whose entries hold only within one generation."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_age: float = MAX_AGE_SECONDS) -> None:
        self._entries: OrderedDict[str, tuple[str, float, T]] = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._max_age = max_age

    def get(self, key: str, load: Callable[[], T | None]) -> T | None:
        """The value cached for ``key`` in this generation, else ``load()`` (cached when
        it found something and the generation is known)."""
        current = generation()
        now = time.monotonic()
        if current is not None:
            with self._lock:
                entry = self._entries.get(key)
                if entry is not None and entry[0] == current and now - entry[1] < self._max_age:
                    self._entries.move_to_end(key)
                    return entry[2]
        value = load()
        with self._lock:
            if value is None or current is None:
                self._entries.pop(key, None)
            else:
                self._entries[key] = (current, now, value)
                self._entries.move_to_end(key)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
