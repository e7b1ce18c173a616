"""S3 (and S3-compatible: MinIO, moto, R2, ...) anchor-set store on boto3.

Connection settings come from the arguments, else the standard AWS environment: AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL, AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE, and boto3's usual credential chain (env keys,
profiles, instance/pod roles). Transient errors (throttling, 5xx, dropped connections) are retried by botocore's
"standard" retry mode with exponential backoff; objects above `multipart_threshold` upload in parallel parts.
Error messages name the bucket, key and endpoint and what to check; they never include credentials (a
"user:password@" in the endpoint URL is dropped before botocore sees it, so its exceptions cannot carry it either).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

from lerpray.anchors.errors import ObjectNotFound, StoreError
from lerpray.anchors.keys import check_key
from lerpray.configs import BUCKET_NAME

MiB = 1024 * 1024
_DENIED = {"AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
           "ExpiredToken", "InvalidToken", "AccountProblem"}
_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Store:
    """Keys live under s3://bucket/prefix/.

    Args:
        bucket: bucket name.
        prefix: key prefix (the anchor set's root); "" for the bucket root.
        endpoint_url: S3 endpoint; default AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, else AWS itself.
        region: default AWS_REGION or AWS_DEFAULT_REGION, else the profile's region.
        profile: AWS profile name; default AWS_PROFILE (boto3 reads it).
        multipart_threshold, multipart_chunksize: objects above the threshold upload in parts of the chunk size
            (S3 requires parts of at least 5 MiB; s3transfer raises smaller chunk sizes to that).
        max_attempts: total attempts per request, first try included, for botocore's standard retry mode.
        client: a ready boto3 S3 client (tests, custom sessions); the other connection arguments are then unused.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        multipart_threshold: int = 16 * MiB,
        multipart_chunksize: int = 16 * MiB,
        max_attempts: int = 6,
        client=None,
    ):
        from boto3.s3.transfer import TransferConfig

        if not BUCKET_NAME.match(bucket or ""):
            raise StoreError(f"invalid S3 bucket name {bucket!r} in s3://{bucket}/{prefix}: use 3-63 lowercase "
                             "letters, digits, dots and hyphens (s3://bucket/prefix)")
        self.bucket = bucket
        self.prefix = check_key(prefix.strip("/"), allow_root=True)
        self.endpoint_url, self.region = s3_settings(endpoint_url, region)
        self.client = client or self._make_client(profile, max_attempts)
        self.transfer = TransferConfig(multipart_threshold=multipart_threshold, multipart_chunksize=multipart_chunksize)

    def _make_client(self, profile: str | None, max_attempts: int):
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

        config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=10,
            read_timeout=120,
            # Custom endpoints (MinIO, moto, on-prem) rarely resolve virtual-hosted bucket names.
            s3={"addressing_style": "path"} if self.endpoint_url else None,
        )
        try:
            session = boto3.session.Session(profile_name=profile, region_name=self.region)
            return session.client("s3", endpoint_url=self.endpoint_url, config=config)
        except BotoCoreError as err:  # ProfileNotFound, bad endpoint URL, ...
            raise StoreError(f"cannot set up the S3 client for {self.uri}: {type(err).__name__}. Check AWS_PROFILE "
                             f"/ the profile argument and the endpoint URL ({self._endpoint()})") from err

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def _key(self, key: str, *, allow_root: bool = False) -> str:
        check_key(key, allow_root=allow_root)
        return "/".join(p for p in (self.prefix, key) if p)

    def read_bytes(self, key: str) -> bytes:
        """The object's bytes; large objects download as parallel ranged GETs, dropped streams are retried."""
        full = self._key(key)  # validated before any request
        buffer = io.BytesIO()
        try:
            with self._errors("read", key):
                self.client.download_fileobj(self.bucket, full, buffer, Config=self.transfer)
        except ObjectNotFound:
            self._check_bucket()  # a HEAD 404 does not say whether the key or the whole bucket is missing
            raise
        return buffer.getvalue()

    def write_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        with self._errors("write", key):
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, full, Config=self.transfer)

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            with self._errors("check", key):
                self.client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFound:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self._key(prefix, allow_root=True)
        root = f"{self.prefix}/" if self.prefix else ""
        keys = []
        with self._errors("list", prefix):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                keys += [o["Key"] for o in page.get("Contents", [])]
        # Whole-segment semantics: prefix "a" covers "a" and "a/...", not "ab".
        under = [k for k in keys if not full or k == full or k.startswith(f"{full}/")]
        return sorted(k[len(root):] for k in under)

    def delete_prefix(self, prefix: str) -> None:
        keys = [self._key(k) for k in self.list(prefix)]
        for start in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            with self._errors("delete", prefix):
                failed = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch}).get("Errors", [])
            if failed:
                first = failed[0]
                raise StoreError(f"could not delete {len(failed)} objects under {self.uri}, e.g. "
                                 f"{first.get('Key')!r}: {first.get('Code')}; check s3:DeleteObject permission")

    def _check_bucket(self) -> None:
        try:
            with self._errors("open", ""):
                self.client.head_bucket(Bucket=self.bucket)
        except ObjectNotFound as err:  # HEAD errors carry no body: a 404 here means the bucket is missing
            raise self._no_bucket() from err

    def _no_bucket(self) -> StoreError:
        return StoreError(f"S3 bucket {self.bucket!r} does not exist (at {self._endpoint()}): check the bucket name "
                          f"in {self.uri}, the region ({self.region or 'default'}) and the endpoint "
                          "(AWS_ENDPOINT_URL), or create the bucket")

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """Turn botocore errors into StoreErrors that say what to check (and never carry credentials)."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

        where = f"{self.uri}/{key}" if key else self.uri
        try:
            yield
        except ClientError as err:
            raise self._client_error(err, action, key, where) from err
        except (NoCredentialsError, PartialCredentialsError) as err:
            raise StoreError(f"no usable AWS credentials to {action} {where}: set AWS_PROFILE, or "
                             "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run with an instance/pod role") from err
        except BotoCoreError as err:  # connection refused, timeouts, ... (already retried)
            raise StoreError(f"S3 {action} of {where} failed after retries: {type(err).__name__}. Check that the "
                             f"endpoint {self._endpoint()} is reachable and the region is right") from err

    def _client_error(self, err, action: str, key: str, where: str) -> StoreError:
        code = str(err.response.get("Error", {}).get("Code", ""))
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "NoSuchBucket":
            return self._no_bucket()
        if code in _MISSING:
            return ObjectNotFound(f"{key!r} not found in {self.uri}")
        if status == 403 or code in _DENIED:
            return StoreError(f"access denied ({code or status}) to {action} {where}: check that the credentials in "
                              "use (AWS_PROFILE or AWS_ACCESS_KEY_ID, or the instance/pod role) allow s3:GetObject, "
                              f"s3:PutObject, s3:DeleteObject and s3:ListBucket on bucket {self.bucket!r}, and that "
                              "the bucket policy does not deny them")
        return StoreError(f"S3 {action} of {where} failed: {code or status} "
                          f"({err.operation_name}, after retries; endpoint {self._endpoint()})")

    def _endpoint(self) -> str:
        return self.endpoint_url or "AWS default"


def s3_settings(endpoint_url: str | None = None, region: str | None = None) -> tuple[str | None, str | None]:
    """(endpoint URL without credentials, region): the arguments, else the standard AWS environment."""
    env = os.environ
    endpoint_url = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None
    return (_without_userinfo(endpoint_url) if endpoint_url else None), region


def arrow_filesystem(endpoint_url: str | None = None, region: str | None = None):
    """A pyarrow S3FileSystem with the same settings as S3Store (Ray Data and Ray Train write through pyarrow)."""
    import pyarrow.fs

    endpoint, region = s3_settings(endpoint_url, region)
    kwargs: dict = {"region": region}
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc, scheme=parsed.scheme or "https")
    return pyarrow.fs.S3FileSystem(**{k: v for k, v in kwargs.items() if v})


def _without_userinfo(url: str) -> str:
    """`url` without any "user:password@": S3 never authenticates that way, and it would end up in tracebacks."""
    parsed = urlparse(url)
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()
