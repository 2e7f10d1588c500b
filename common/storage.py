"""The S3-compatible object store client: one factory for every caller."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from django.conf import settings


def s3_client(
    endpoint_url: str | None = None,
    *,
    connect_timeout: float = 5.0,
    read_timeout: float = 60.0,
    attempts: int = 3,
    pool: int = 64,
) -> Any:
    """A boto3 S3 client for ``endpoint_url`` (default: S3_ENDPOINT_URL), path-style."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or settings.S3_ENDPOINT_URL,
        region_name=settings.S3_REGION,
        aws_access_key_id=settings.AWS_ACCESS_KEY_ID,
        aws_secret_access_key=settings.AWS_SECRET_ACCESS_KEY,
        config=Config(
            # Unsigned: media.storage sends a CRC32 of each body instead (S3_SIGN_PAYLOAD).
            s3={"addressing_style": "path", "payload_signing_enabled": settings.S3_SIGN_PAYLOAD},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Our calls are idempotent (a part or segment rewritten with the same bytes).
            retries={"max_attempts": attempts, "mode": "standard"},
            # One per request thread that may be talking to the store at once.
            max_pool_connections=pool,
            # media.storage computes the checksums it sends itself (a header, never an
            # aws-chunked trailer), and uploads sha256 the whole file themselves.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
