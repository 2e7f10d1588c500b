"""The process's Redis client for the small shared state the web processes keep in Redis
(rate limits, the authentication generation): never work, only hints and counters."""

from __future__ import annotations

from functools import lru_cache

import redis
from django.conf import settings


@lru_cache(maxsize=4)
def _client(url: str) -> redis.Redis:
    # Thread-safe, and its pool notices a fork: one per process (and URL) is enough.
    return redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)


def shared_redis() -> redis.Redis:
    return _client(settings.REDIS_URL)
