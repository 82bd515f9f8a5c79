"""A site's storage as an S3 bucket and prefix (AWS or any S3-compatible server).

Each object carries its sha256 in user metadata (`x-amz-meta-sha256`). Writes are spooled
to a temporary file while hashing, then uploaded with the checksum: a single PUT for small
objects, otherwise a multipart upload that S3 makes visible only on
CompleteMultipartUpload (and that is aborted on any error).

`put_new` creates a key only if absent with a conditional PUT (`If-None-Match: *`), which
AWS S3 and SeaweedFS (checked with 4.48) refuse with 412 when the key exists.
`replace_if` (compare-and-swap) is a conditional PUT with `If-Match: <ETag>` (the ETag that
head/read returned, kept in `ObjectInfo.version`), or `If-None-Match: *` to create; the
endpoint must support conditional writes (AWS S3 since 2024; SeaweedFS 4.48 refuses a stale
ETag with 412, checked with racing writers in tests/test_checkpoints.py).

An object under a gravity key without that metadata is foreign (put there by something
else): `head` and the reads raise ForeignObject saying so, rather than reporting it missing.

Credentials: each site's own, when its sites.yaml storage names a boto3 `profile` or the
environment variables holding its keys (`credentials.py` resolves them in this process);
otherwise the normal boto3 chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, profiles,
instance roles). A request the endpoint refuses for its credentials says which were used.
Failure times are bounded: a connect timeout of 5 s and a read
timeout of 10 s per attempt (a wait for the socket, not a limit on a whole transfer, so large
uploads are unaffected), 2 attempts per request, and after one request to an endpoint timed
out, further requests to it fail at once for 30 s (`unresponsive.py`). So a hung or
unreachable endpoint fails a storage operation, and a whole IO-manager load or store, in
about 21 s, with a StorageError naming site, bucket, endpoint and the setting to raise.
A site sets its own values in sites.yaml (`storage: {connect_timeout_seconds: ...,
read_timeout_seconds: ..., max_attempts: ...}`; see `site_options`).
`dagster_aws.s3.S3Resource` is not used here because it cannot set those timeouts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile
import threading
from dataclasses import dataclass

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError

from dagster_gravity.storage import unresponsive
from dagster_gravity.storage.credentials import REFUSED_CODES, describe, session_for
from dagster_gravity.storage.base import (
    AtomicWrite,
    ForeignObject,
    HashingWriter,
    ObjectInfo,
    ObjectNotFound,
    PartSink,
    SiteStorage,
    StorageError,
    StoredVersion,
    parse_version_key,
    verify,
    version_key,
)
from dagster_gravity.storage.oserrors import os_error_reason
from dagster_gravity.topology import S3_SETTINGS, S3Credentials, StorageSpec

SHA_META = "sha256"
MULTIPART_THRESHOLD = 8 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024


@dataclass(frozen=True)
class S3Options:
    """S3 client settings (credentials: the site's, see `credentials.py`). The defaults bound a
    hung endpoint to about read_timeout_s x max_attempts + 1 s of backoff per storage call,
    and the unresponsive mark (see `unresponsive.py`) to one such wait per operation."""

    connect_timeout_s: float = 5.0  # per attempt: waiting for the TCP connection
    read_timeout_s: float = 10.0  # per attempt: waiting on the socket for the answer (or to send)
    max_attempts: int = 2  # per request, including the first
    max_concurrency: int = 8
    unresponsive_for_s: float = 30.0  # after a timeout, requests to the endpoint fail at once


def site_options(spec, base: S3Options | None = None) -> S3Options:
    """The client settings of one S3 site: what its sites.yaml storage sets, else `base`
    (the IO manager's fields, else the defaults). A site's own setting wins."""
    overrides = {name: getattr(spec, name) for name in S3_SETTINGS.values() if getattr(spec, name, None) is not None}
    return dataclasses.replace(base or S3Options(), **overrides)


_client_lock = threading.Lock()  # a boto3 Session may be shared by threads; creating clients from it is not thread-safe


def make_client(endpoint_url: str | None, region: str | None, options: S3Options = S3Options(), session=None):
    """An S3 client with `options`' timeouts, from `session` (a site's credentials; default:
    a fresh Session on the process-wide boto3 chain)."""
    config = Config(
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        # total_max_attempts counts the first attempt (botocore's max_attempts does not)
        retries={"total_max_attempts": options.max_attempts, "mode": "standard"},
        max_pool_connections=max(10, options.max_concurrency * 2),
        # our own sha256 covers integrity end to end; skip the per-request CRC trailers
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path"} if endpoint_url else {},
    )
    session = session or boto3.session.Session()
    with _client_lock:
        return session.client("s3", endpoint_url=endpoint_url, region_name=region or "us-east-1", config=config)


def site_client(
    site: str,
    spec: StorageSpec,
    options: S3Options = S3Options(),
    settings_at: str | None = None,
    settings_file: str | None = None,
):
    """A client for S3 site `site` with its own credentials (SiteCredentialsError when a
    variable it names is unset here) and `options` as given (see `site_options`)."""
    session = session_for(spec.credentials, site, settings_at, settings_file)
    return make_client(spec.endpoint_url, spec.region, options, session=session)


def transfer_config(options: S3Options = S3Options()) -> TransferConfig:
    return TransferConfig(
        multipart_threshold=MULTIPART_THRESHOLD,
        multipart_chunksize=PART_SIZE,
        max_concurrency=options.max_concurrency,
    )


class S3SiteStorage(SiteStorage):
    kind = "s3"

    def __init__(
        self,
        site: str,
        bucket: str,
        prefix: str = "",
        region: str | None = None,
        endpoint_url: str | None = None,
        options: S3Options = S3Options(),
        client=None,
        settings_at: str | None = None,
        settings_file: str | None = None,
        credentials: S3Credentials | None = None,
    ):
        super().__init__(site)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.region = region
        self.endpoint_url = endpoint_url
        self.options = options
        # where a timeout error tells the user to change the setting: "sites[2].storage" of a file
        self.settings_at = settings_at
        self.settings_file = settings_file
        self.credentials = credentials  # None: the process-wide boto3 chain
        if client is None:
            session = session_for(credentials, site, settings_at, settings_file)
            client = make_client(endpoint_url, region, options, session=session)
        self.client = client
        # the endpoint actually called (AWS: the regional one), which the unresponsive mark is keyed by
        self.endpoint = self.client.meta.endpoint_url
        unresponsive.watch(self.client, self.endpoint, options.unresponsive_for_s)

    # -- addressing ----------------------------------------------------------------------

    def object_key(self, key: str) -> str:
        key = key.strip("/")
        return f"{self.prefix}/{key}" if self.prefix and key else (self.prefix or key)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.object_key(key)}"

    def _error(self, exc: Exception, action: str, key: str) -> StorageError:
        uri = self.uri(key)
        endpoint = self.endpoint_url or f"AWS S3 ({self.endpoint})"
        if isinstance(exc, ClientError):
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return ObjectNotFound("no stored object under this key", site=self.site, uri=uri)
            if code == "NoSuchBucket":
                return StorageError(f"bucket {self.bucket!r} does not exist at {endpoint}", site=self.site, uri=uri)
            used = f" (credentials: {describe(self.credentials, self.settings_at)})" if code in REFUSED_CODES else ""
            return StorageError(f"S3 {action} failed at {endpoint}: {code}: {exc}{used}", site=self.site, uri=uri)
        if isinstance(exc, unresponsive.EndpointUnresponsive):
            t = exc.timeout
            return StorageError(
                f"S3 {action} not sent to {endpoint} (site {self.site!r}, bucket {self.bucket!r}): a {t.operation} "
                f"to it timed out {t.ago():.1f} s ago ({_timeout_what(t.kind, t.seconds, t.attempts)}), so requests "
                f"to it fail at once for {self.options.unresponsive_for_s:g} s; {self._raise_hint(t.kind)}",
                site=self.site,
                uri=uri,
            )
        kind = unresponsive.timeout_kind(exc)
        if kind is not None:
            seconds = self.options.connect_timeout_s if kind == "connect" else self.options.read_timeout_s
            # also marks timeouts of body reads, which botocore's hooks do not see
            unresponsive.mark(self.endpoint, kind, action, seconds, self.options.max_attempts, self.options.unresponsive_for_s)
            return StorageError(
                f"S3 {action} timed out after {seconds:g} s at {endpoint} (site {self.site!r}, bucket "
                f"{self.bucket!r}): {_timeout_what(kind, seconds, self.options.max_attempts)}; "
                f"{self._raise_hint(kind)} ({type(exc).__name__}: {exc})",
                site=self.site,
                uri=uri,
            )
        if isinstance(exc, NoCredentialsError):  # e.g. a profile that names no keys
            return StorageError(
                f"S3 {action} not sent to {endpoint}: no credentials found in "
                f"{describe(self.credentials, self.settings_at)}",
                site=self.site,
                uri=uri,
            )
        if isinstance(exc, EndpointConnectionError):
            return StorageError(
                f"S3 {action} failed: endpoint {endpoint} refused the connection or is unreachable "
                f"({type(exc).__name__}: {exc})",
                site=self.site,
                uri=uri,
            )
        return StorageError(f"S3 {action} failed at {endpoint} ({type(exc).__name__}: {exc})", site=self.site, uri=uri)

    def _raise_hint(self, kind: str) -> str:
        field = "connect_timeout_seconds" if kind == "connect" else "read_timeout_seconds"
        now = self.options.connect_timeout_s if kind == "connect" else self.options.read_timeout_s
        if self.settings_at:
            where = f"{self.settings_at}.{field}" + (f" in {self.settings_file}" if self.settings_file else "")
        else:
            where = f"the site's storage.{field} in its sites file"
        first = "check that the endpoint is up and reachable, or" if kind == "connect" else "if it is only slow,"
        return f"{first} raise {where} (now {now:g} s)"

    def _foreign(self, key: str) -> ForeignObject:
        return ForeignObject(
            f"an object exists under this key at {self.endpoint_url or 'AWS S3'} but it is foreign: it has no "
            f"{SHA_META} metadata (x-amz-meta-{SHA_META}), so it was not written by gravity and cannot be "
            "verified; remove it or store the data through gravity",
            site=self.site,
            uri=self.uri(key),
        )

    # -- reads ---------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo | None:
        try:
            response = self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, BotoCoreError) as exc:
            err = self._error(exc, "HEAD", key)
            if isinstance(err, ObjectNotFound):
                return None
            raise err from exc
        sha = response.get("Metadata", {}).get(SHA_META)
        if not sha:
            raise self._foreign(key)  # it exists, so "missing" (None) would mislead
        return ObjectInfo(self.site, key, self.uri(key), int(response["ContentLength"]), sha, version=response.get("ETag"))

    def read_bytes(self, key: str, expected_sha256: str | None = None) -> tuple[bytes, ObjectInfo]:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
            data = response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "GET", key) from exc
        sha = response.get("Metadata", {}).get(SHA_META)
        if not sha:
            raise self._foreign(key)
        info = ObjectInfo(self.site, key, self.uri(key), int(response["ContentLength"]), sha, version=response.get("ETag"))
        verify(data, info, expected_sha256)
        return data, info

    def open_stream(self, key: str):
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "GET", key) from exc
        return _S3Stream(self, key, response["Body"])

    def read_range(self, key: str, offset: int, length: int) -> bytes:
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=self.object_key(key), Range=f"bytes={offset}-{offset + length - 1}"
            )
            return response["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "GET", key) from exc

    # -- writes --------------------------------------------------------------------------

    def open_write(self, key: str) -> AtomicWrite:
        return _S3Write(self, key)

    def open_version(self, base: str, suffix: str = "") -> AtomicWrite:
        if not base or base.endswith("/"):
            raise StorageError(f"invalid version base {base!r}: expected a key that does not end with '/'", site=self.site)
        return _S3Write(self, base + suffix, version_of=(base, suffix))

    def list_versions(self, base: str) -> list[StoredVersion]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        versions = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.object_key(base) + "@"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key = item["Key"][strip:]
                    parsed = parse_version_key(key)
                    if parsed is None or parsed[0] != base.strip("/"):
                        continue
                    modified = item["LastModified"].timestamp()
                    versions.append(StoredVersion(key, parsed[1], int(item["Size"]), modified))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "LIST", base) from exc
        return sorted(versions, key=lambda v: (v.modified, v.key))

    def part_sink(self, key: str, size: int, sha256: str, part_size: int) -> PartSink:
        return _S3PartSink(self, key, size, sha256, part_size)

    def put_new(self, key: str, data: bytes) -> ObjectInfo | None:
        """A conditional PUT (If-None-Match: *): S3 (and SeaweedFS) refuse it with 412 when
        the key exists, so of two concurrent creators exactly one succeeds."""
        sha = hashlib.sha256(data).hexdigest()
        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data, Metadata={SHA_META: sha}, IfNoneMatch="*"
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
                return None
            raise self._error(exc, "conditional PUT", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "conditional PUT", key) from exc
        return ObjectInfo(self.site, key, self.uri(key), len(data), sha)

    def replace_if(self, key: str, data: bytes, expected: ObjectInfo | None) -> ObjectInfo | None:
        """A conditional PUT: `If-Match: <expected ETag>`, or `If-None-Match: *` when
        `expected` is None; None when S3 refuses it (412, a 409 conflict, or the key gone)."""
        if expected is not None and not expected.version:
            raise StorageError(
                f"replace_if needs the ETag that head or read_bytes returned; got {expected!r}",
                site=self.site,
                uri=self.uri(key),
            )
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected.version}
        sha = hashlib.sha256(data).hexdigest()
        try:
            response = self.client.put_object(
                Bucket=self.bucket, Key=self.object_key(key), Body=data, Metadata={SHA_META: sha}, **condition
            )
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409", "NoSuchKey", "404"):
                return None
            raise self._error(exc, "conditional PUT", key) from exc
        except BotoCoreError as exc:
            raise self._error(exc, "conditional PUT", key) from exc
        return ObjectInfo(self.site, key, self.uri(key), len(data), sha, version=response.get("ETag"))

    def list_keys(self, prefix: str = "") -> list[str]:
        strip = len(self.prefix) + 1 if self.prefix else 0
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=(self.prefix + "/" if self.prefix else "") + prefix.lstrip("/")
            ):
                keys.extend(item["Key"][strip:] for item in page.get("Contents", []))
        except (ClientError, BotoCoreError) as exc:
            raise self._error(exc, "LIST", prefix) from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_key(key))
        except (ClientError, BotoCoreError) as exc:
            err = self._error(exc, "DELETE", key)
            if not isinstance(err, ObjectNotFound):
                raise err from exc


class _S3Stream:
    """The body of a GET; a read that fails mid-stream raises a StorageError naming the URI."""

    def __init__(self, storage: S3SiteStorage, key: str, body):
        self.storage = storage
        self.key = key
        self.body = body

    def read(self, size: int = -1) -> bytes:
        try:
            return self.body.read(None if size < 0 else size)
        except (ClientError, BotoCoreError) as exc:
            raise self.storage._error(exc, "GET", self.key) from exc

    def close(self) -> None:
        self.body.close()


class _S3Write(AtomicWrite):
    def __init__(self, storage: S3SiteStorage, key: str, version_of: tuple[str, str] | None = None):
        self.storage = storage
        self.key = key
        self.version_of = version_of  # (base, suffix): the key is known once the bytes are

    def __enter__(self) -> HashingWriter:
        self.spool = tempfile.SpooledTemporaryFile(max_size=MULTIPART_THRESHOLD)
        self.writer = HashingWriter(self.spool)
        return self.writer

    def __exit__(self, exc_type, exc, tb):
        try:
            if isinstance(exc, OSError):  # the spool's local temporary file: e.g. disk full
                s = self.storage
                raise StorageError(
                    os_error_reason(exc, "spooling the upload to a local temporary file"), site=s.site, uri=s.uri(self.key)
                ) from exc
            if exc_type is not None:
                return None
            sha, size = self.writer.hexdigest(), self.writer.size
            if self.version_of is not None:
                self.key = version_key(self.version_of[0], sha, self.version_of[1])
            self.spool.seek(0)
            s = self.storage
            try:
                # upload_fileobj aborts the multipart upload if any part fails
                s.client.upload_fileobj(
                    self.spool,
                    s.bucket,
                    s.object_key(self.key),
                    ExtraArgs={"Metadata": {SHA_META: sha}},
                    Config=transfer_config(s.options),
                )
            except (ClientError, BotoCoreError) as err:
                raise s._error(err, "upload", self.key) from err
            except Exception as err:  # s3transfer wraps some failures in its own types
                raise StorageError(f"S3 upload failed: {err}", site=s.site, uri=s.uri(self.key)) from err
            self.info = ObjectInfo(s.site, self.key, s.uri(self.key), size, sha)
            self.writer.info = self.info
        finally:
            self.spool.close()
        return None


class _S3PartSink(PartSink):
    """Single PUT for one-part objects, else a multipart upload completed only on commit."""

    def __init__(self, storage: S3SiteStorage, key: str, size: int, sha256: str, part_size: int):
        self.storage = storage
        self.key = key
        self.sha256 = sha256
        self.single = size <= part_size
        self.buffer: bytes = b""
        self.etags: dict[int, str] = {}
        self.upload_id: str | None = None
        if not self.single:
            try:
                response = storage.client.create_multipart_upload(
                    Bucket=storage.bucket, Key=storage.object_key(key), Metadata={SHA_META: sha256}
                )
            except (ClientError, BotoCoreError) as exc:
                raise storage._error(exc, "CreateMultipartUpload", key) from exc
            self.upload_id = response["UploadId"]

    def write_part(self, number: int, offset: int, data: bytes) -> None:
        s = self.storage
        if self.single:
            self.buffer = data
            return
        try:
            response = s.client.upload_part(
                Bucket=s.bucket, Key=s.object_key(self.key), UploadId=self.upload_id, PartNumber=number + 1, Body=data
            )
        except (ClientError, BotoCoreError) as exc:
            raise s._error(exc, "UploadPart", self.key) from exc
        self.etags[number + 1] = response["ETag"]

    def commit(self, sha256: str, size: int) -> ObjectInfo:
        s = self.storage
        try:
            if self.single:
                s.client.put_object(
                    Bucket=s.bucket, Key=s.object_key(self.key), Body=self.buffer, Metadata={SHA_META: sha256}
                )
            else:
                parts = [{"PartNumber": n, "ETag": e} for n, e in sorted(self.etags.items())]
                s.client.complete_multipart_upload(
                    Bucket=s.bucket,
                    Key=s.object_key(self.key),
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": parts},
                )
                self.upload_id = None
        except (ClientError, BotoCoreError) as exc:
            self.abort()
            raise s._error(exc, "commit", self.key) from exc
        return ObjectInfo(s.site, self.key, s.uri(self.key), size, sha256)

    def abort(self) -> None:
        if self.upload_id is None:
            return
        s = self.storage
        try:
            s.client.abort_multipart_upload(Bucket=s.bucket, Key=s.object_key(self.key), UploadId=self.upload_id)
        except (ClientError, BotoCoreError):
            pass  # best effort: an unfinished upload is invisible and expires by lifecycle rules
        self.upload_id = None


def _timeout_what(kind: str, seconds: float, attempts: int) -> str:
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if kind == "connect":
        return f"the endpoint did not accept a connection within {seconds:g} s ({tries})"
    if kind == "send":
        return f"the endpoint accepted the connection but stopped taking the request's bytes for {seconds:g} s ({tries})"
    return f"the endpoint accepted the connection but did not answer within {seconds:g} s ({tries})"
