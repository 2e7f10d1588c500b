"""Small test helpers with no fixtures behind them."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 20.0,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Poll `predicate` until it returns something truthy, and return that.

    Raises AssertionError with `message` if it hasn't within `timeout` seconds. Tests wait for
    the worker this way instead of sleeping a fixed time.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(message or f"condition not met within {timeout} s")
        time.sleep(interval)
