"""``s3://bucket/prefix`` on any S3-compatible object store, through boto3.

boto3 clients are thread-safe; callers run these blocking calls in worker
threads. Errors are sorted into three kinds: missing objects, transient
failures (worth a retry) and permanent ones (no bucket, access denied), each
with a message that says what to check.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import botocore.exceptions as bex  # boto3 itself is imported by the first S3Store: it costs ~0.25 s

from ..errors import ObjectNotFound, RefConflict, StoreError, TransientStoreError

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_DENIED = {"AccessDenied", "403", "SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken", "ExpiredToken"}
_CONFLICT = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}
_TRANSIENT = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "503", "500", "502", "504"}


@dataclass
class S3Options:
    """Connection settings; anything left None falls back to boto3's usual chain."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    profile: str | None = None
    max_connections: int = 16
    connect_timeout: float = 5.0
    read_timeout: float = 60.0


class S3Store:
    def __init__(self, bucket: str, prefix: str, options: S3Options | None = None) -> None:
        o = options or S3Options()
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        import boto3
        import botocore.config
        import botocore.handlers

        try:
            session = boto3.session.Session(profile_name=o.profile) if o.profile else boto3.session.Session()
            self.client = session.client(
                "s3",
                endpoint_url=o.endpoint_url,
                region_name=o.region or "us-east-1",
                aws_access_key_id=o.access_key_id,
                aws_secret_access_key=o.secret_access_key,
                aws_session_token=o.session_token,
                config=botocore.config.Config(
                    s3={"addressing_style": "path"},
                    max_pool_connections=o.max_connections,
                    connect_timeout=o.connect_timeout,
                    read_timeout=o.read_timeout,
                    # One attempt here: RetryingStore owns the backoff policy.
                    retries={"max_attempts": 1, "mode": "standard"},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
        except (bex.BotoCoreError, ValueError) as e:
            raise StoreError(f"store {self.url}: cannot configure the S3 client ({e}) — check datasets.s3") from None
        # No "Expect: 100-continue" round trip before each PUT: our bodies are a
        # few MiB at most, cheaper to send than to ask about.
        self.client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _error(self, e: Exception, key: str) -> Exception:
        where = f"store {self.url}"
        if isinstance(e, bex.ClientError):
            code = str(e.response.get("Error", {}).get("Code", ""))
            status = str(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if code == "NoSuchBucket":
                return StoreError(f"{where}: bucket {self.bucket!r} does not exist — create it or fix datasets.store")
            if code in _NOT_FOUND or status == "404":
                return ObjectNotFound(key, self.url)
            if code in _DENIED or status == "403":
                return StoreError(f"{where}: access denied ({code}) — check datasets.s3 credentials")
            if code in _CONFLICT or status in ("409", "412"):
                return RefConflict(f"{key} changed concurrently")
            if code in _TRANSIENT or status.startswith("5"):
                return TransientStoreError(f"{where}: {key}: {code or status} from the server")
            return StoreError(f"{where}: {key}: {code}: {e.response.get('Error', {}).get('Message', '')}")
        if isinstance(e, bex.NoCredentialsError):
            return StoreError(f"{where}: no S3 credentials — set datasets.s3.access_key_id/secret_access_key or AWS_* variables")
        if isinstance(e, (bex.EndpointConnectionError, bex.ConnectionClosedError, bex.ReadTimeoutError,
                          bex.ConnectTimeoutError, bex.ResponseStreamingError, bex.HTTPClientError)):
            return TransientStoreError(f"{where}: cannot reach the server ({e}) — check datasets.s3.endpoint_url and the network")
        if isinstance(e, bex.BotoCoreError):
            return StoreError(f"{where}: {key}: {e}")
        return e

    def get(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except (bex.ClientError, bex.BotoCoreError) as e:
            raise self._error(e, key) from None

    def put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        except (bex.ClientError, bex.BotoCoreError) as e:
            raise self._error(e, key) from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except (bex.ClientError, bex.BotoCoreError) as e:
            err = self._error(e, key)
            if isinstance(err, ObjectNotFound):
                return False
            raise err from None

    def list(self, prefix: str) -> Iterator[str]:
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self._key(prefix))
            for page in pages:
                for obj in page.get("Contents", []):
                    yield obj["Key"][len(self.prefix):]
        except (bex.ClientError, bex.BotoCoreError) as e:
            raise self._error(e, prefix) from None

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (bex.ClientError, bex.BotoCoreError) as e:
            err = self._error(e, key)
            if not isinstance(err, ObjectNotFound):
                raise err from None

    def get_versioned(self, key: str) -> tuple[bytes, str] | None:
        try:
            r = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return r["Body"].read(), r["ETag"]
        except (bex.ClientError, bex.BotoCoreError) as e:
            err = self._error(e, key)
            if isinstance(err, ObjectNotFound):
                return None
            raise err from None

    def put_if(self, key: str, data: bytes, version: str | None) -> None:
        # S3 conditional writes: If-None-Match for create, If-Match for update.
        cond = {"IfNoneMatch": "*"} if version is None else {"IfMatch": version}
        try:
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **cond)
        except (bex.ClientError, bex.BotoCoreError) as e:
            err = self._error(e, key)
            if isinstance(err, ObjectNotFound):  # If-Match on a ref deleted meanwhile (AWS answers 404)
                raise RefConflict(f"{key} was deleted concurrently") from None
            raise err from None

    def close(self) -> None:
        self.client.close()
