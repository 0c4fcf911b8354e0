"""object sources: an object (optionally one version of it) in S3-compatible storage.

One ``ObjectFetcher`` per server holds one boto3 S3 client (thread-safe, with its own
connection pool), created on the first fetch with the standard AWS credential chain: the
environment, the shared files, a web identity token (IRSA), the instance / container metadata
service. imagesvc never passes keys itself. ``IMAGESVC_S3_ENDPOINT_URL`` points it at an
S3-compatible store (MinIO, Ceph, ...; path-style addressing then), ``IMAGESVC_S3_REGION`` sets
the region (else the chain's). Each fetch:

- is refused unless IMAGESVC_S3_ENABLED, and, with IMAGESVC_ALLOWED_SOURCES set, unless
  ``s3://BUCKET/KEY`` starts with one of its ``s3://`` prefixes;
- runs the blocking boto3 calls in a thread; the whole fetch gives up after
  IMAGESVC_SOURCE_DOWNLOAD_TIMEOUT_S, or at the RPC deadline when that is sooner;
- refuses a ContentLength over IMAGESVC_MAX_SOURCE_BYTES before reading the body, and stops
  reading as soon as the streamed body passes it;
- returns the object's validators (ETag, Last-Modified), tagged with the object's location and
  version (see ``location_tag``): two objects, or two versions of one, never share an ETag of
  ours; conditional requests (``fetch_source``) become get_object's IfNoneMatch /
  IfModifiedSince, a 304 then meaning "not modified".

Failures become the domain errors of imagesvc.errors (SOURCE_NOT_FOUND, SOURCE_FORBIDDEN,
SOURCE_UNREACHABLE, SOURCE_TOO_LARGE, DEADLINE_EXCEEDED); none is INTERNAL, and no message
carries what the store said (an S3 error message can quote the access key id): only its code.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import hashlib
import ipaddress
import re
import threading
import time
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any, Protocol

from imagesvc.errors import (
    DeadlineExceeded,
    SourceForbidden,
    SourceNotFound,
    SourceTooLarge,
    SourceUnreachable,
)
from imagesvc.settings import Settings
from imagesvc.sources.url import RETRY_AFTER_S, FetchedSource

CHUNK_BYTES = 64 * 1024
MAX_KEY_BYTES = 1024
MAX_VERSION_ID_CHARS = 1024
# Connections in the client's pool: fetches beyond it wait for a free one.
MAX_POOL_CONNECTIONS = 32
RETRY_ATTEMPTS = 2  # botocore "standard" mode: the first try and one retry of a transient error

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NoSuchVersion", "NotFound", "404"})
FORBIDDEN_CODES = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidToken",
        "ExpiredToken",
        "TokenRefreshRequired",
        "AccountProblem",
        "InvalidObjectState",  # archived (Glacier): not readable without a restore
        "401",
        "403",
    }
)
TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
)


class ObjectLocation(Protocol):
    """Which object to read: imagesvc.options.SourceObject, validated at the edge."""

    @property
    def bucket(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def version_id(self) -> str: ...


def bucket_problem(bucket: str) -> str | None:
    """Why ``bucket`` is not an S3 bucket name (None: it is one)."""
    if not bucket:
        return "the bucket name is required"
    if not 3 <= len(bucket) <= 63:
        return "a bucket name has 3 to 63 characters"
    if not _BUCKET.fullmatch(bucket):
        return (
            "a bucket name has lowercase letters, digits, '.' and '-', and starts and ends "
            "with a letter or digit"
        )
    if ".." in bucket:
        return "a bucket name has no two adjacent periods"
    try:
        ipaddress.IPv4Address(bucket)
    except ValueError:
        return None
    return "a bucket name is not an IP address"


def key_problem(key: str) -> str | None:
    if not key:
        return "the object key is required"
    if "\x00" in key:
        return "an object key has no NUL character"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8 at all
        return "an object key is UTF-8"
    if size > MAX_KEY_BYTES:
        return f"an object key has at most {MAX_KEY_BYTES} bytes of UTF-8"
    return None


def version_id_problem(version_id: str) -> str | None:
    if len(version_id) > MAX_VERSION_ID_CHARS:
        return f"a version id has at most {MAX_VERSION_ID_CHARS} characters"
    if any(not 0x21 <= ord(ch) <= 0x7E for ch in version_id):
        return "a version id is printable ASCII without spaces"
    return None


def object_url(location: ObjectLocation) -> str:
    """``s3://bucket/key``: what IMAGESVC_ALLOWED_SOURCES' s3:// prefixes are compared with."""
    return f"s3://{location.bucket}/{location.key}"


def allowed(location: ObjectLocation, prefixes: tuple[str, ...]) -> bool:
    """Empty ``prefixes``: any object; else ``s3://bucket/key`` must start with an s3:// one
    (its scheme and bucket compared case-insensitively, the key as it is)."""
    if not prefixes:
        return True
    text = object_url(location)
    for prefix in prefixes:
        scheme, sep, rest = prefix.partition("://")
        if scheme.lower() != "s3" or not sep:
            continue
        bucket, slash, key_prefix = rest.partition("/")
        if text.startswith(f"s3://{bucket.lower()}{slash}{key_prefix}"):
            return True
    return False


def location_tag(location: ObjectLocation) -> str:
    """Appended to the object's validators: they then name this object (and version) only, so
    an ETag of ours never matches another object's or another version's, even for the same
    bytes, and a conditional request is only ever sent for the object it was made from."""
    digest = hashlib.blake2b(digest_size=8)
    for part in (location.bucket, location.key, location.version_id):
        raw = part.encode("utf-8", "surrogatepass")
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return f";s3={digest.hexdigest()}"


class ObjectFetcher:
    """Reads object sources through one pooled boto3 client (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        *,
        on_fetch: Callable[[float], None] | None = None,
    ) -> None:
        self._settings = settings
        self._on_fetch = on_fetch
        self._client: Any = None
        self._lock = threading.Lock()
        # Reads block a thread each: they get threads of their own (as many as the client has
        # connections), so that stalled reads cannot take the event loop's default pool, which
        # the edge hashes large sources on.
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def _executor_now(self) -> concurrent.futures.ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    MAX_POOL_CONNECTIONS, thread_name_prefix="object-source"
                )
            return self._executor

    def _client_now(self) -> Any:
        """The S3 client, created on first use (in a worker thread: it may read files)."""
        with self._lock:
            if self._client is None:
                # Imported here: a server without object sources never loads boto3.
                import boto3
                from botocore.config import Config

                budget = self._settings.source_download_timeout_s
                endpoint = self._settings.s3_endpoint_url or None
                config = Config(
                    connect_timeout=budget,
                    read_timeout=budget,
                    retries={"max_attempts": RETRY_ATTEMPTS, "mode": "standard"},
                    max_pool_connections=MAX_POOL_CONNECTIONS,
                    user_agent_extra="imagesvc",
                    # S3-compatible stores (MinIO, moto, Ceph) mostly want path-style.
                    s3={"addressing_style": "path" if endpoint else "auto"},
                )
                session = boto3.session.Session()
                self._client = session.client(
                    "s3",
                    endpoint_url=endpoint,
                    region_name=self._settings.s3_region or None,
                    config=config,
                )
            return self._client

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
            executor, self._executor = self._executor, None
        if client is not None:
            await asyncio.to_thread(client.close)
        if executor is not None:
            # Reads still running stop at their next chunk (their RPCs have ended).
            executor.shutdown(wait=False, cancel_futures=True)

    async def fetch(self, location: ObjectLocation, deadline: float) -> bytes:
        """The object's bytes, by ``deadline`` (time.monotonic()) at the latest."""
        fetched = await self.fetch_source(location, deadline)
        assert fetched.data is not None  # unconditional: never not_modified
        return fetched.data

    async def fetch_source(
        self,
        location: ObjectLocation,
        deadline: float,
        conditional: Mapping[str, str] | None = None,
    ) -> FetchedSource:
        """Like fetch, with the object's validators; ``conditional`` (If-None-Match or
        If-Modified-Since, with a validator this fetcher returned) makes the store's 304 a
        FetchedSource with ``not_modified`` set and no data."""
        self._check_allowed(location)
        started = time.monotonic()
        budget = self._settings.source_download_timeout_s
        rpc_left = deadline - started
        rpc_bound = rpc_left <= budget
        if rpc_left <= 0:
            raise DeadlineExceeded("the deadline passed before the source was fetched")
        stop = started + min(budget, rpc_left)
        cancelled = threading.Event()
        try:
            async with asyncio.timeout(min(budget, rpc_left)):
                return await asyncio.get_running_loop().run_in_executor(
                    self._executor_now(),
                    self._get,
                    location,
                    _conditional_args(location, conditional),
                    stop,
                    cancelled,
                )
        except TimeoutError:
            cancelled.set()  # the thread stops reading at its next chunk
            if rpc_bound:
                raise DeadlineExceeded("the deadline passed while the source was fetched") from None
            raise SourceUnreachable(
                f"the object took longer than {budget:g} s to download "
                "(IMAGESVC_SOURCE_DOWNLOAD_TIMEOUT_S)",
                metadata={"cause": "timeout"},
                retry_after_s=RETRY_AFTER_S,
            ) from None
        finally:
            if self._on_fetch is not None:
                self._on_fetch(time.monotonic() - started)

    def _check_allowed(self, location: ObjectLocation) -> None:
        if not self._settings.s3_enabled:
            raise SourceForbidden(
                "object sources are not enabled on this server (IMAGESVC_S3_ENABLED)",
                metadata={"cause": "object_sources_disabled"},
            )
        if not allowed(location, self._settings.allowed_sources):
            raise SourceForbidden(
                "the source object is not allowed (IMAGESVC_ALLOWED_SOURCES)",
                metadata={"cause": "not_allowed"},
            )

    def _get(
        self,
        location: ObjectLocation,
        conditional: dict[str, Any],
        stop: float,
        cancelled: threading.Event,
    ) -> FetchedSource:
        """The blocking part, in a worker thread."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client = self._client_now()
            args: dict[str, Any] = {"Bucket": location.bucket, "Key": location.key}
            if location.version_id:
                args["VersionId"] = location.version_id
            try:
                response = client.get_object(**args, **conditional)
            except ClientError as error:
                if conditional and _status(error) == 304:
                    return _not_modified(location, error)
                raise
            tag = location_tag(location)
            etag = response.get("ETag")
            modified = response.get("LastModified")
            last_modified = (
                email.utils.format_datetime(modified.astimezone(UTC), usegmt=True)
                if modified
                else None
            )
            body = response["Body"]
            try:
                data = self._read(body, response.get("ContentLength"), stop, cancelled)
            finally:
                body.close()
            return FetchedSource(
                data,
                etag + tag if etag else None,
                last_modified + tag if last_modified else None,
            )
        except ClientError as error:
            raise _client_error(error) from None
        except BotoCoreError as error:
            raise _botocore_error(error) from None
        except OSError:  # a socket error botocore did not wrap
            raise SourceUnreachable(
                "could not read the object from the object store",
                metadata={"cause": "connect_failed"},
                retry_after_s=RETRY_AFTER_S,
            ) from None

    def _read(self, body, declared: int | None, stop: float, cancelled: threading.Event) -> bytes:
        limit = self._settings.max_source_bytes
        if declared is not None and declared > limit:
            raise SourceTooLarge(
                f"the object has {declared} bytes, more than {limit} (IMAGESVC_MAX_SOURCE_BYTES)",
                metadata={"declared_bytes": str(declared), "max_bytes": str(limit)},
            )
        data = bytearray()
        while True:
            if cancelled.is_set() or time.monotonic() > stop:
                # The caller has already answered (deadline or download timeout): stop here.
                raise SourceUnreachable("the object's download ran out of time")
            chunk = body.read(CHUNK_BYTES)
            if not chunk:
                break
            data += chunk
            if len(data) > limit:
                raise SourceTooLarge(
                    f"the object is larger than {limit} bytes (IMAGESVC_MAX_SOURCE_BYTES)",
                    metadata={"max_bytes": str(limit)},
                )
        if not data:
            raise SourceUnreachable("the object is empty", metadata={"cause": "empty"})
        return bytes(data)


def _conditional_args(
    location: ObjectLocation, conditional: Mapping[str, str] | None
) -> dict[str, Any]:
    """get_object's IfNoneMatch / IfModifiedSince for ``conditional`` headers whose validator
    this fetcher made for this very object (its location tag); {} for anything else, which is
    then fetched unconditionally."""
    if not conditional:
        return {}
    tag = location_tag(location)
    etag = conditional.get("If-None-Match")
    if etag is not None:
        return {"IfNoneMatch": etag[: -len(tag)]} if etag.endswith(tag) and etag != tag else {}
    since = conditional.get("If-Modified-Since")
    if since is not None and since.endswith(tag):
        try:
            when = email.utils.parsedate_to_datetime(since[: -len(tag)])
        except (TypeError, ValueError):
            return {}
        return {"IfModifiedSince": when} if when.tzinfo is not None else {}
    return {}


def _not_modified(location: ObjectLocation, error) -> FetchedSource:
    headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    tag = location_tag(location)
    etag = headers.get("etag")
    last_modified = headers.get("last-modified")
    return FetchedSource(
        None,
        etag + tag if etag else None,
        last_modified + tag if last_modified else None,
        not_modified=True,
    )


def _status(error) -> int:
    return int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _client_error(error) -> Exception:
    """The domain error for what the store answered; its code only, never its message."""
    code = str(error.response.get("Error", {}).get("Code") or "")
    status = _status(error)
    # Only safe characters of the code make it into the answer.
    shown = re.sub(r"[^A-Za-z0-9]", "", code)[:64] or str(status)
    metadata = {"s3_error": shown, "http_status": str(status)}
    if code in NOT_FOUND_CODES or status == 404:
        return SourceNotFound(
            f"the object does not exist ({shown})", metadata={**metadata, "cause": "not_found"}
        )
    if code in FORBIDDEN_CODES or status in (401, 403):
        return SourceForbidden(
            f"the object store refused access ({shown})",
            metadata={**metadata, "cause": "storage_refused"},
        )
    transient = status >= 500 or status in (408, 429) or code in TRANSIENT_CODES
    return SourceUnreachable(
        f"the object store answered {shown} (HTTP {status})",
        metadata={**metadata, "cause": "storage_error"},
        retry_after_s=RETRY_AFTER_S if transient else None,
    )


def _botocore_error(error) -> Exception:
    from botocore import exceptions as bx

    if isinstance(
        error,
        bx.NoCredentialsError | bx.PartialCredentialsError | bx.CredentialRetrievalError,
    ):
        return SourceForbidden(
            "no usable credentials for object storage (the standard AWS credential chain)",
            metadata={"cause": "no_credentials"},
        )
    if isinstance(error, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        cause, message = "timeout", "the object store did not answer in time"
    elif isinstance(error, bx.EndpointConnectionError | bx.ConnectionClosedError):
        cause, message = "connect_failed", "could not connect to the object store"
    elif isinstance(error, bx.ResponseStreamingError | bx.IncompleteReadError):
        cause, message = "truncated", "the object's body ended early or was malformed"
    else:
        cause, message = "storage_error", "the object store's answer could not be used"
    return SourceUnreachable(message, metadata={"cause": cause}, retry_after_s=RETRY_AFTER_S)
