"""Create the object-store bucket if it is missing, waiting for the store to answer first.

`python -m devstack.ensure_bucket` is the one-shot `bucket` service of docker-compose.yml; it
reads S3_ENDPOINT_URL, S3_BUCKET, S3_REGION, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY with
the defaults of syncserver/settings.py. It needs only boto3, so it runs in the production image.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Mirrors syncserver/settings.py; repeated because this module must not need Django.
DEFAULTS = {
    "S3_ENDPOINT_URL": "http://127.0.0.1:8333",
    "S3_BUCKET": "fieldsync",
    "S3_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "fieldsync",
    "AWS_SECRET_ACCESS_KEY": "fieldsync-secret",
}


class BucketError(RuntimeError):
    """The store did not answer, or refused the bucket, before the deadline."""


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is and how to sign requests to it."""

    endpoint_url: str
    bucket: str
    region: str
    access_key: str
    secret_key: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str], endpoint_url: str | None = None) -> S3Settings:
        def get(name: str) -> str:
            return environ.get(name) or DEFAULTS[name]

        return cls(
            endpoint_url=endpoint_url or get("S3_ENDPOINT_URL"),
            bucket=get("S3_BUCKET"),
            region=get("S3_REGION"),
            access_key=get("AWS_ACCESS_KEY_ID"),
            secret_key=get("AWS_SECRET_ACCESS_KEY"),
        )

    def env(self) -> dict[str, str]:
        """The environment variables that point fieldsync's processes at this store."""
        return {
            "S3_ENDPOINT_URL": self.endpoint_url,
            "S3_BUCKET": self.bucket,
            "S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self) -> S3Client:
        # Path-style addressing: bucket-named hosts don't resolve for a store on 127.0.0.1 or
        # behind a compose service name. One attempt per call: callers do their own waiting.
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=30,
                retries={"max_attempts": 1},
            ),
        )


def ensure_bucket(
    s3: S3Settings,
    *,
    timeout: float = 120.0,
    still_starting: Callable[[], bool] | None = None,
) -> None:
    """Make sure `s3.bucket` exists, retrying while the store starts.

    `still_starting` lets a caller that owns the server give up at once when it has died.
    """
    client = s3.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            _create_if_missing(client, s3.bucket)
        except (BotoCoreError, ClientError) as error:
            # A store that is starting refuses connections, or answers 5xx or 403 until its
            # gateway and identities are loaded, so any error is worth another try.
            gave_up = still_starting is not None and not still_starting()
            if gave_up or time.monotonic() >= deadline:
                raise BucketError(
                    f"bucket {s3.bucket!r} at {s3.endpoint_url} is not available: {error}"
                ) from error
            time.sleep(0.2)
        else:
            return


def _create_if_missing(client: S3Client, bucket: str) -> None:
    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket"}:
            raise
        # Another starter may create it between our two calls.
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=bucket)


def main() -> int:
    s3 = S3Settings.from_env(os.environ)
    try:
        ensure_bucket(s3)
    except BucketError as error:
        print(error, file=sys.stderr)
        return 1
    print(f"bucket {s3.bucket!r} is ready at {s3.endpoint_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
