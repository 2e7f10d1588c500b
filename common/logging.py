"""Structured logging: every state change is one JSON line with its facts as fields."""

from __future__ import annotations

import logging
from typing import Any

_logger = logging.getLogger("fieldsync")


def log_event(event: str, **fields: Any) -> None:
    """Log one state change; ``event`` is a stable dotted name such as ``op.applied``."""
    _logger.info(event, extra={"event": event, **fields})


def log_warning(event: str, **fields: Any) -> None:
    _logger.warning(event, extra={"event": event, **fields})
