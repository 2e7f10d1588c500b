"""The object store as uploads use it: multipart parts, tail segments, final objects.

Object names:
- ``attachments/<org>/<attachment_id>``: the file (the target of the multipart upload);
- ``attachments/<org>/<attachment_id>.thumb.jpg``: a photo's thumbnail;
- ``uploads/<attachment_id>/tail/<start>-<size>``: bytes stored but not yet in a part. A
  segment's name says which byte range it holds, so rewriting one that no committed row
  names yet can never change what a committed row points to.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import quote

from botocore.exceptions import ClientError
from django.conf import settings

from common.storage import s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedPartTypeDef,
        ObjectIdentifierTypeDef,
        PutObjectRequestTypeDef,
    )

_DOWNLOAD_CHUNK = 1024 * 1024
# Every body we send carries a checksum the store verifies before it answers (a mismatch is
# a 400 BadDigest, so nothing damaged on the way is ever counted as stored). CRC32: cheaper
# than the payload's sha256 a signature would carry (S3_SIGN_PAYLOAD), and SeaweedFS checks
# it. A multipart upload is begun with it, so its parts' checksums go with the completion.
_CHECKSUM_ALGORITHM: Literal["CRC32"] = "CRC32"


def final_key(organization_id: int, upload_id: uuid.UUID) -> str:
    return f"attachments/{organization_id}/{upload_id}"


def thumbnail_key(organization_id: int, upload_id: uuid.UUID) -> str:
    return f"{final_key(organization_id, upload_id)}.thumb.jpg"


def tail_prefix(upload_id: uuid.UUID) -> str:
    return f"uploads/{upload_id}/tail/"


def segment_key(upload_id: uuid.UUID, start: int, size: int) -> str:
    return f"{tail_prefix(upload_id)}{start:015d}-{size}"


def crc32(data: bytes | bytearray) -> str:
    """The ``x-amz-checksum-crc32`` of ``data``: big-endian, base64."""
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def content_md5(data: bytes | bytearray) -> str:
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


@dataclass(frozen=True)
class StoredPart:
    """A part the store acknowledged: its ETag, and the CRC32 it verified ("" for a part
    of a multipart upload begun without part checksums)."""

    etag: str
    checksum: str


class ObjectStore:
    def __init__(self, client: S3Client, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        filename: str | None = None,
    ) -> None:
        """Store an object whole; with ``filename``, as a file downloads name it."""
        request: PutObjectRequestTypeDef = {
            "Bucket": self.bucket,
            "Key": key,
            "Body": data,
            "ContentType": content_type,
            "ChecksumCRC32": crc32(data),
        }
        if filename is not None:
            request["ContentDisposition"] = content_disposition(filename)
        self.client.put_object(**request)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def stream(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(_DOWNLOAD_CHUNK)
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        try:
            return self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"]
        except ClientError as exc:
            if _code(exc) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_many(self, keys: list[str]) -> None:
        """One request for up to 1,000 keys (S3's limit per DeleteObjects)."""
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})

    def delete_prefix(self, prefix: str) -> None:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        )
        for page in pages:
            self.delete_many([item["Key"] for item in page.get("Contents", [])])

    def create_multipart(self, key: str, content_type: str, filename: str) -> str:
        """Begin a multipart upload whose parts carry CRC32 checksums."""
        return self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=key,
            ContentType=content_type,
            ContentDisposition=content_disposition(filename),
            ChecksumAlgorithm=_CHECKSUM_ALGORITHM,
        )["UploadId"]

    def upload_part(
        self,
        key: str,
        multipart_id: str,
        number: int,
        data: bytes | bytearray,
        checksummed: bool = True,
    ) -> StoredPart:
        """Store one part. ``checksummed``: the multipart upload was begun by
        ``create_multipart`` (S3 refuses a part checksum a multipart upload begun without
        one does not expect: those parts carry a Content-MD5 instead)."""
        # botocore takes a bytearray as it is (no copy); the stubs only list bytes.
        body = cast(bytes, data)
        if checksummed:
            checksum = crc32(data)
            answer = self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart_id,
                PartNumber=number,
                Body=body,
                ChecksumCRC32=checksum,
            )
            return StoredPart(answer["ETag"], checksum)
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=key,
            UploadId=multipart_id,
            PartNumber=number,
            Body=body,
            ContentMD5=content_md5(data),
        )
        return StoredPart(answer["ETag"], "")

    def complete(self, key: str, multipart_id: str, parts: list[tuple[int, str, str]]) -> bool:
        """Complete the multipart upload from its parts' (number, ETag, checksum); False if
        it was already completed (or aborted)."""
        listed: list[CompletedPartTypeDef] = []
        for number, etag, checksum in parts:
            part: CompletedPartTypeDef = {"PartNumber": number, "ETag": etag}
            if checksum:
                part["ChecksumCRC32"] = checksum
            listed.append(part)
        try:
            self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=multipart_id,
                MultipartUpload={"Parts": listed},
            )
        except ClientError as exc:
            if _code(exc) == "NoSuchUpload":
                return False
            raise
        return True

    def abort_multipart_uploads(self, key: str) -> None:
        """Abort every multipart upload of ``key``, including one whose id a crash kept
        from being recorded."""
        listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        for item in listing.get("Uploads", []):
            if item.get("Key") == key:
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=key, UploadId=item["UploadId"]
                    )
                except ClientError as exc:
                    if _code(exc) != "NoSuchUpload":
                        raise


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _PerProcess:
    """One client per process: boto3 clients are thread-safe but must not cross a fork."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pid: dict[tuple[int, str], Any] = {}

    def get(self, endpoint_url: str) -> Any:
        key = (os.getpid(), endpoint_url)
        with self._lock:
            if key not in self._by_pid:
                self._by_pid = {key: s3_client(endpoint_url)} | {
                    k: v for k, v in self._by_pid.items() if k[0] == key[0]
                }
            return self._by_pid[key]


_clients = _PerProcess()


def object_store() -> ObjectStore:
    return ObjectStore(_clients.get(settings.S3_ENDPOINT_URL), settings.S3_BUCKET)


def content_disposition(filename: str) -> str:
    """Stored with the object, so a download keeps the phone's file name. (Presigned URLs
    carry no response-* overrides: SeaweedFS rejects their signatures.)"""
    fallback = filename.encode("ascii", "replace").decode().replace("\\", "_").replace('"', "_")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename)}"


def presigned_get(key: str) -> str:
    """A short-lived GET URL on the public endpoint (signing is local: no network call)."""
    client = _clients.get(settings.S3_PUBLIC_ENDPOINT_URL or settings.S3_ENDPOINT_URL)
    url: str = client.generate_presigned_url(
        "get_object",
        Params={"Bucket": settings.S3_BUCKET, "Key": key},
        ExpiresIn=settings.UPLOADS_DOWNLOAD_URL_SECONDS,
    )
    return url
